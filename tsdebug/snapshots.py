"""Drive the debugger headless and save what it shows as SVG.

Used by ``make screenshots`` (scripts/screenshots.py) and by the snapshot
tests, so the README's pictures and the tests show the same screens.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from typing import Sequence

#: Archives and the Python they came from are built here, so paths shown on
#: screen are the same on every machine.
FIXED_DIR = "/tmp/tsdebug-screens"


def build_demo_in(directory: str = FIXED_DIR) -> str:
    """The demo archive, traced from a copy of tsdebug/demo.py placed in ``directory``.

    Traced in a fresh process: TorchScript mangles type names
    (``___torch_mangle_7.Conv2d``) by what the process compiled before, and
    those names show on screen.
    """
    import subprocess

    os.makedirs(directory, exist_ok=True)
    src = os.path.join(os.path.dirname(__file__), "demo.py")
    dst = os.path.join(directory, "demo_model.py")
    # atomically: test processes running at once build the same demo here
    tmp = f"{dst}.{os.getpid()}.tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    path = os.path.join(directory, "demo.pt")
    code = f"import sys; sys.path.insert(0, {directory!r}); import demo_model; demo_model.build_demo({path!r})"
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True)
    return path


def preserve_space(svg: str) -> str:
    """rsvg-convert drops leading non-breaking spaces unless told to keep them."""
    return svg.replace("<svg ", '<svg xml:space="preserve" ', 1) if "xml:space" not in svg[:300] else svg


async def _capture(model: str, extra: Sequence[str], keys: Sequence[str], size: tuple[int, int], title: str) -> str:
    from tsdebug.app import TsdebugApp
    from tsdebug.cli import build_open_parser
    from tsdebug.widgets import Inspector

    Inspector.show_times = False
    app = TsdebugApp(build_open_parser().parse_args([model, *extra]))
    app.animation_level = "none"
    async with app.run_test(size=size) as pilot:
        await _settle(pilot, app)
        for key in keys:
            if key.startswith("sleep:"):
                await asyncio.sleep(float(key[6:]))
                continue
            if key == "wait:graph":  # the graph view's layout runs in a worker
                from tsdebug.widgets.graphview import GraphView

                view = app.query_one(GraphView)
                for _ in range(500):
                    await pilot.pause()
                    if view.drawing is not None and not app.workers:
                        break
                    await asyncio.sleep(0.02)
                await pilot.pause()
                continue
            if key.startswith("to:"):  # step over until the next node is of this kind: screens that say what they show
                for _ in range(10_000):
                    node = app.machine.current_node if app.machine is not None else None
                    if node is None or node.kind == key[3:]:
                        break
                    await pilot.press("n")
                    await _settle(pilot, app)
                continue
            await pilot.press(key)
            await _settle(pilot, app)
        app.clear_notifications()
        await pilot.pause()
        await pilot.pause()
        return preserve_space(app.export_screenshot(title=title))


async def _settle(pilot, app) -> None:
    for _ in range(400):
        await pilot.pause()
        if app.state not in ("running", "loading"):
            break
        await asyncio.sleep(0.01)
    await pilot.pause()


def capture(model: str, keys: Sequence[str] = (), size: tuple[int, int] = (120, 40), extra: Sequence[str] = (),
            title: str = "tsdebug") -> str:
    """The SVG of the screen after pressing ``keys`` on ``model``."""
    return asyncio.run(_capture(model, extra, keys, size, title))


def normalize(svg: str) -> str:
    """Drop what changes between runs of the same screen (ids derived from timing)."""
    svg = re.sub(r"terminal-\d+", "terminal", svg)
    return svg
