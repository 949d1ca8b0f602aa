"""Engine run time against the native run, measured in one process.

Prints, per model, the ratio engine/native and the overhead per executed step
in microseconds: ``(engine - native) / steps``.  Native is ``module(*inputs)``
of the same archive, warmed up, under ``torch.no_grad()`` like the engine.
Runs alternate; the figures are the minimum of each (the median ratio is
printed too).  Quote the ratios; absolute times vary
with the machine.
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
from engine.session import clone_value  # noqa: E402
from engine.run import moments  # noqa: E402
from engine.run import stepper
from engine.run.values import human_bytes, values_equal  # noqa: E402
import models as B  # noqa: E402


def interleaved_times(native, engine, repeat: int, between=lambda: None) -> tuple[list[float], list[float]]:
    """Alternate the two so that machine noise hits both alike.

    ``between`` runs untimed before each pair: it frees the engine's previous
    run, so that the native run does not pay for collecting its objects.
    """
    tn, te = [], []
    for _ in range(repeat):
        between()
        t0 = time.perf_counter()
        native()
        tn.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        engine()
        te.append(time.perf_counter() - t0)
    return tn, te


def bench(name: str, module, example: tuple, mode: str, repeat: int, budget: int | None = None) -> dict:
    module = module.eval()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.pt")
        ts = torch.jit.trace(module, example, check_trace=False) if mode == "trace" else torch.jit.script(module)
        torch.jit.save(ts, path)
        native_mod = torch.jit.load(path)
        kwargs = {} if budget is None else {"budget": budget}
        session = Session(path, **kwargs)
        session.start(values=example)

        def native():
            with torch.no_grad():
                return native_mod(*clone_value(example))

        def free_previous_run():
            # dropping a run's records is not part of the next run, and the garbage collector
            # would otherwise walk them during the native run that follows
            session.machine = None

        def engine():
            m = session.restart()
            m.run()
            return m

        for _ in range(3):
            expected = native()
            free_previous_run()
            m = engine()
        assert values_equal(m.outputs, expected), f"{name}: engine and native differ"
        steps = len(m.timeline)
        kept, dropped = m.timeline.kept_bytes, m.timeline.dropped
        m = None
        tn, te = interleaved_times(native, engine, repeat, between=free_previous_run)
        t_native, t_engine = min(tn), min(te)
        return {
            "name": name,
            "steps": steps,
            "native_ms": t_native * 1e3,
            "engine_ms": t_engine * 1e3,
            "ratio": t_engine / t_native,
            "median_ratio": statistics.median(te) / statistics.median(tn),
            "overhead_us_per_step": (t_engine - t_native) / steps * 1e6,
            "kept": kept,
            "dropped": dropped,
        }


TARGET_RATIO = 1.2  # conv net, engine / native
TARGET_US = 5.0  # per-step overhead on the op-bound models


def statistics_path() -> str:
    if not moments.BUILT:
        return "torch's reductions (engine.run._moments was not built: no C compiler at install)"
    if not moments.AVAILABLE:
        return "torch's reductions (torch's OpenMP library was not found for the one-pass kernel)"
    return f"one pass in torch's OpenMP team ({os.path.basename(moments.OPENMP_LIBRARY)})"


def main() -> None:
    torch.manual_seed(0)
    quick = "--quick" in sys.argv
    n = (lambda full: max(5, full // 4)) if quick else (lambda full: full)
    image = (torch.randn(1, 3, 224, 224),)
    ids = (torch.randint(0, 100, (1, 32)),)
    rows = [
        bench("resnet18 1x3x224x224 traced (tensors kept)", B.ResNet18(), image, "trace", n(30)),
        bench("resnet18 1x3x224x224 traced (summaries only)", B.ResNet18(), image, "trace", n(30), budget=0),
        bench("small transformer 1x32 traced", B.SmallTransformer(), ids, "trace", n(60)),
        bench("small transformer 1x32 scripted", B.SmallTransformer(), ids, "script", n(60)),
        bench("lstm loop 64 steps scripted", B.LSTMLoop(), (torch.randn(64, 2, 16),), "script", n(40)),
    ]
    loop = "C (engine.run._stepper)" if stepper.ACTIVE else (
        "Python (TSDEBUG_PURE_PYTHON is set)" if stepper.BUILT else
        f"Python (engine.run._stepper refused: {stepper.PROBLEM})" if stepper.PROBLEM else
        "Python (engine.run._stepper was not built)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; statistics: {statistics_path()}; "
          f"run loop: {loop}")
    print(f"{'model':48} {'steps':>6} {'native ms':>10} {'engine ms':>10} {'ratio':>6} {'median':>7} {'µs/step':>8}"
          f" {'recorded':>9}")
    for r in rows:
        print(f"{r['name']:48} {r['steps']:6d} {r['native_ms']:10.2f} {r['engine_ms']:10.2f} "
              f"{r['ratio']:6.2f} {r['median_ratio']:7.2f} {r['overhead_us_per_step']:8.1f} {human_bytes(r['kept']):>9}")
    print(f"targets: conv net at most {TARGET_RATIO}x native; op-bound models at most {TARGET_US} µs per step")


if __name__ == "__main__":
    main()
