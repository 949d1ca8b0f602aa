"""Exported programs (.pt2): the engine against ``ep.module()(*x)`` and ``torch.fx.Interpreter``, in one process.

Prints, per model, the ratio to the native run and the overhead per executed
step in microseconds, for the engine (tensors kept, and summaries only) and
for ``torch.fx.Interpreter(ep.module())``, the peer to beat: it runs the same
graph node by node without recording anything.  Runs alternate; figures
are the minimum of each (median ratio beside it).  Quote the ratios.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.simplefilter("ignore")

from engine import Session  # noqa: E402
from engine.run import stepper  # noqa: E402
from engine.run.values import values_equal  # noqa: E402
from engine.session import clone_value  # noqa: E402
import models as B  # noqa: E402

TARGET_RATIO = 1.2  # conv net, engine with summaries / native
TARGET_US = 5.0  # per-step overhead on the op-bound model


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(name: str, module, example: tuple, repeat: int) -> list[dict]:
    module = module.eval()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.pt2")
        torch.export.save(torch.export.export(module, example), path)
        native_mod = torch.export.load(path).module()
        interp = torch.fx.Interpreter(torch.export.load(path).module())
        kept = Session(path)
        kept.start(values=example)
        summaries = Session(path, budget=0)
        summaries.start(values=example)

        def native():
            with torch.no_grad():
                return native_mod(*clone_value(example))

        def fx():
            with torch.no_grad():
                return interp.run(*clone_value(example))

        def engine(session):
            def run():
                m = session.restart()
                m.run()
                return m
            return run

        def free():
            kept.machine = None
            summaries.machine = None

        runs = {"native": native, "fx.Interpreter": fx, "engine, tensors kept": engine(kept),
                "engine, summaries only": engine(summaries)}
        expected = native()
        for _ in range(3):
            for label, fn in runs.items():
                free()
                got = fn()
                if label.startswith("engine"):
                    assert values_equal(got.outputs, expected), f"{name}: engine and ep.module() differ"
                    steps = len(got.timeline)
                got = None
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(repeat):
            for label, fn in runs.items():
                free()
                times[label].append(timed(fn))
        t_native = min(times["native"])
        rows = []
        for label in ("fx.Interpreter", "engine, tensors kept", "engine, summaries only"):
            t = min(times[label])
            rows.append({"name": f"{name}: {label}", "steps": steps, "native_ms": t_native * 1e3, "ms": t * 1e3,
                         "ratio": t / t_native,
                         "median_ratio": statistics.median(times[label]) / statistics.median(times["native"]),
                         "us_per_step": (t - t_native) / steps * 1e6})
        return rows


def main() -> None:
    torch.manual_seed(0)
    quick = "--quick" in sys.argv
    n = (lambda full: max(5, full // 4)) if quick else (lambda full: full)
    rows = bench("resnet18 1x3x224x224", B.ResNet18(), (torch.randn(1, 3, 224, 224),), n(20))
    rows += bench("small transformer 1x32", B.SmallTransformer(), (torch.randint(0, 100, (1, 32)),), n(60))
    loop = "C (engine.run._stepper)" if stepper.ACTIVE else "Python"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; run loop: {loop}; "
          "native is ep.module()(*x) of the same .pt2")
    print(f"{'run':56} {'steps':>6} {'native ms':>10} {'ms':>9} {'ratio':>6} {'median':>7} {'µs/step':>8}")
    for r in rows:
        print(f"{r['name']:56} {r['steps']:6d} {r['native_ms']:10.2f} {r['ms']:9.2f} {r['ratio']:6.2f} "
              f"{r['median_ratio']:7.2f} {r['us_per_step']:8.1f}")
    print(f"targets: the conv net with summaries at most {TARGET_RATIO}x native; the transformer at most "
          f"{TARGET_US} µs per step; both faster than fx.Interpreter")


if __name__ == "__main__":
    main()
