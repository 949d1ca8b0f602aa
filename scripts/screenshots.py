"""Make the SVG screenshots in screenshots/ (``make screenshots``).

They are made from the demo model and from a ResNet-18 (torchvision's layout,
bench/models.py), driven with the same keys a person would press.
"""

import os
import subprocess
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
warnings.simplefilter("ignore")

import torch  # noqa: E402

from tsdebug.snapshots import FIXED_DIR, build_demo_in, capture  # noqa: E402

OUT = os.path.join(ROOT, "screenshots")


def save(name: str, svg: str) -> None:
    path = os.path.join(OUT, name + ".svg")
    with open(path, "w") as f:
        f.write(svg)
    print("wrote", os.path.relpath(path, ROOT))


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    demo = build_demo_in()
    # Step into the first block, then over to the log with -inf values.
    save("demo-step-into", capture(demo, ["s", "s"], (120, 36), title="tsdebug demo: step into"))
    # isfinite's input is the log with -inf where relu gave zeros
    save("demo-tensor", capture(demo, ["to:aten::isfinite"], (120, 36), title="tsdebug demo: a tensor with -inf"))
    save("demo-80x24", capture(demo, ["n"], (80, 24), title="tsdebug demo at 80x24"))
    save("demo-loop", capture(demo, ["n"] * 8 + ["s"] * 2 + ["n"] * 4, (120, 36), title="tsdebug demo: inside a scripted loop"))
    save("demo-help", capture(demo, ["question_mark"], (100, 36), title="tsdebug: help"))
    save("demo-graph", capture(demo, ["n"] * 3 + ["v", "wait:graph"], (120, 40), title="tsdebug demo: the graph view (v)"))

    import models as B

    torch.manual_seed(0)
    path = os.path.join(FIXED_DIR, "resnet18.pt")
    model = B.ResNet18().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, (torch.randn(1, 3, 224, 224),), check_trace=False), path)
    save("resnet18-inlined", capture(path, ["to:aten::max_pool2d", "n", "n"], (140, 42), extra=["--inline"],
                                     title="tsdebug: ResNet-18, inlined"))
    # an exported graph of a real architecture, collapsed by module, after a run
    from engine import Session
    from tsdebug.render import engine_note, export, labeler_for, overlay_from_session

    session = Session(path, inline=True)
    session.start()
    session.machine.run()
    graph = session.program.root_graph("forward", inlined=True)
    out = os.path.join(OUT, "resnet18-graph.svg")
    # collapse=1: modules below depth 1 are boxes (layer1.0 · BasicBlock, ...)
    engine, boxes = export(graph, out, "svg", overlay_from_session(session, graph), collapse=1,
                           labeler=labeler_for(session, graph))
    print("wrote", os.path.relpath(out, ROOT), f"({boxes} boxes; {engine_note(engine)})")
    if subprocess.run(["which", "rsvg-convert"], capture_output=True).returncode == 0:
        for name in ("demo-tensor", "resnet18-inlined", "demo-graph", "resnet18-graph"):
            subprocess.run(["rsvg-convert", os.path.join(OUT, name + ".svg"), "-o", f"/tmp/{name}.png"], check=False)


if __name__ == "__main__":
    main()
