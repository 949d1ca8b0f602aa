"""SVG snapshots of the graph view (``v``) on real models, at 80x24 and 160x50.

The models (tests/graph_models.py: a U-Net with submodules, a scripted greedy
decoder with a loop and a break) are traced in a fresh process in a fixed
directory, so type names and paths on screen are the same everywhere.
Regenerate with ``TSDEBUG_UPDATE_SNAPSHOTS=1`` and look at the SVGs as PNGs
(``rsvg-convert``) before accepting them.
"""

import os
import subprocess
import sys

import pytest

from tsdebug.snapshots import capture, normalize

HERE = os.path.join(os.path.dirname(__file__), "snapshots")
UPDATE = bool(os.environ.get("TSDEBUG_UPDATE_SNAPSHOTS"))
FIXED = "/tmp/tsdebug-screens/graph"

DECODER_INPUTS = ["--input", "float32[2,32]", "--input", "int:5"]
SCREENS = {
    # the call tree of a traced U-Net: one box a submodule call, skip connections down lanes
    "graph-unet-80x24": ("unet_trace", [], ["n"] * 5 + ["v", "wait:graph"], (80, 24)),
    "graph-unet-160x50": ("unet_trace", [], ["n"] * 5 + ["v", "wait:graph"], (160, 50)),
    # the inlined U-Net: module clusters, shapes on the edges that ran, the current node in view
    "graph-unet-inline-80x24": ("unet_trace", ["--inline"], ["n"] * 5 + ["v", "wait:graph"], (80, 24)),
    "graph-unet-inline-160x50": ("unet_trace", ["--inline"], ["n"] * 5 + ["v", "wait:graph"], (160, 50)),
    "graph-unet-inline-boxes-160x50": ("unet_trace", ["--inline"],
                                       ["n"] * 5 + ["v", "wait:graph", "z", "wait:graph"], (160, 50)),
    # collapsed to the top-level modules, then one box selected with j
    "graph-unet-collapsed-160x50": ("unet_trace", ["--inline"],
                                    ["v", "wait:graph", "minus", "wait:graph", "minus", "wait:graph", "minus",
                                     "wait:graph", "j", "j", "j"], (160, 50)),
    # a scripted loop: the loop body framed, the if inside it
    "graph-decoder-80x24": ("decoder", DECODER_INPUTS, ["n"] * 6 + ["v", "wait:graph"], (80, 24)),
    "graph-decoder-160x50": ("decoder", DECODER_INPUTS, ["n"] * 6 + ["v", "wait:graph"], (160, 50)),
}


@pytest.fixture(scope="module")
def models():
    os.makedirs(FIXED, exist_ok=True)
    src = os.path.join(os.path.dirname(__file__), "graph_models.py")
    dst = os.path.join(FIXED, "graph_models.py")
    with open(src) as f, open(dst, "w") as g:
        g.write(f.read())
    code = f"import sys; sys.path.insert(0, {FIXED!r}); import graph_models; graph_models.build_all({FIXED!r})"
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True)
    return {name: os.path.join(FIXED, name + ".pt") for name in ("unet_trace", "decoder")}


@pytest.mark.parametrize("name", list(SCREENS))
def test_graph_screen(models, name):
    model, extra, keys, size = SCREENS[name]
    svg = normalize(capture(models[model], keys, size, extra=extra, title=name))
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
