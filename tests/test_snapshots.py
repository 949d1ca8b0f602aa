"""SVG snapshots of the main screens (animations off, fixed paths, no timings).

Regenerate after an intended change of the screen with
``TSDEBUG_UPDATE_SNAPSHOTS=1 make test`` and look at the new SVGs.
"""

import os

import pytest

from tsdebug.snapshots import build_demo_in, capture, normalize

HERE = os.path.join(os.path.dirname(__file__), "snapshots")
UPDATE = bool(os.environ.get("TSDEBUG_UPDATE_SNAPSHOTS"))

SCREENS = {
    # n steps past TorchScript's plumbing (attribute reads, constant lists): each n is an op the user wrote
    "demo-start-120x36": (["n"] * 3, (120, 36)),
    "demo-inside-call-80x24": (["s"] * 2, (80, 24)),
    "demo-loop-120x36": (["n"] * 8 + ["s"] * 2 + ["n"] * 4, (120, 36)),
}


@pytest.fixture(scope="module")
def demo():
    return build_demo_in()


@pytest.mark.parametrize("name", list(SCREENS))
def test_snapshot(demo, name):
    keys, size = SCREENS[name]
    svg = normalize(capture(demo, keys, size, title=name))
    path = os.path.join(HERE, name + ".svg")
    if UPDATE or not os.path.exists(path):
        os.makedirs(HERE, exist_ok=True)
        with open(path, "w") as f:
            f.write(svg)
        if not UPDATE:
            pytest.fail(f"no snapshot yet: wrote {path}; check it and run again")
    with open(path) as f:
        expected = f.read()
    assert svg == expected, f"{name} changed; compare with {path} (TSDEBUG_UPDATE_SNAPSHOTS=1 to accept)"
