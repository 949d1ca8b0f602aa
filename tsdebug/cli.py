"""Command line: ``tsdebug MODEL`` opens the debugger; ``tsdebug run|demo`` work without it.

Exit codes: 0 success (outputs identical), 1 a check failed (outputs differ),
2 bad input or an error in the model (one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from typing import Any, Sequence

COMMANDS = ("run", "demo")

_SIZE = re.compile(r"^\s*([\d.]+)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 1024, "m": 1e6, "mb": 1e6, "mib": 1024**2,
          "g": 1e9, "gb": 1e9, "gib": 1024**3, "t": 1e12, "tb": 1e12, "tib": 1024**4}


class UsageError(Exception):
    pass


def parse_size(text: str) -> int:
    """``1GiB``, ``512MB``, ``0`` -> bytes."""
    m = _SIZE.match(text)
    if not m or (m.group(2) or "").lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (write e.g. 1GiB, 512MB, 0)")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a TorchScript archive saved with torch.jit.save")
    p.add_argument("--input", action="append", default=[], metavar="SPEC",
                   help="one model input, repeated in order: float32[1,3,224,224], 1x3x224x224, "
                        "int64[2,8]:0..1000, int:3, bool:true, or a .pt/.npy/.npz file")
    p.add_argument("--inputs", metavar="FILE.pt",
                   help="the whole argument tuple (or a dict by parameter name) saved with torch.save")
    p.add_argument("--method", default="forward", help="the method to run (default: forward)")
    p.add_argument("--inline", action="store_true", help="execute the inlined graph instead of the call tree")
    p.add_argument("--device", default="cpu", help="map the archive to this device (default: cpu)")
    p.add_argument("--library", action="append", default=[], metavar="PATH",
                   help="a custom-op library (.so) to load with torch.ops.load_library")
    p.add_argument("--grad", action="store_true", help="keep autograd on (default: run under torch.no_grad)")
    p.add_argument("--record-budget", type=parse_size, default=1 << 30, metavar="SIZE",
                   help="memory for recorded tensors before only summaries are kept (default: 1GiB)")
    p.add_argument("--seed", type=int, default=0, help="seed for random inputs (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tsdebug",
        description="A terminal debugger for TorchScript programs.",
        epilog="tsdebug MODEL [options] opens the debugger on MODEL. "
               "Commands: run (engine vs native, for CI), demo (the debugger on a bundled model). "
               "See 'tsdebug run --help'.",
    )
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the model through the engine and natively; compare the outputs",
                         description="Run MODEL through tsdebug's interpreter and through torch on the same "
                                     "inputs. Exit 0 when the outputs are bit-identical, 1 when not, 2 on error.")
    _model_options(run)
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.add_argument("--save-outputs", metavar="FILE", help="write the engine's outputs with torch.save")
    demo = sub.add_parser("demo", help="open the debugger on a bundled example model",
                          description="Open the debugger on a bundled example model (built on first use).")
    demo.add_argument("--print-path", action="store_true", help="only build the demo archive and print its path")
    return parser


def build_open_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tsdebug",
        description="Open the TorchScript debugger on MODEL. Other commands: tsdebug run|demo (tsdebug run --help).",
    )
    _model_options(parser)
    return parser


def _fail(message: str, as_json: bool = False) -> int:
    if as_json:
        print(json.dumps({"error": {"message": message}}))
    print(f"tsdebug: error: {message}", file=sys.stderr)
    return 2


def _session(args: argparse.Namespace):
    from engine import Session

    return Session(
        args.model,
        device=args.device,
        libraries=tuple(args.library),
        method=args.method,
        inline=args.inline,
        grad=args.grad,
        budget=args.record_budget,
        seed=args.seed,
    )


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    from engine.values import summarize

    if args.save_outputs and os.path.abspath(args.save_outputs) == os.path.abspath(args.model):
        return _fail("--save-outputs would overwrite the model; choose another file", args.json)
    session = _session(args)
    session.start(specs=args.input or None, inputs_file=args.inputs)
    report = session.run_and_compare()
    if args.save_outputs and report.error is None:
        try:
            torch.save(report.outputs, args.save_outputs)
        except OSError as exc:
            return _fail(f"--save-outputs {args.save_outputs}: {exc.strerror}", args.json)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        kinds = ", ".join(f"{m}: {k}" for m, k in report.methods.items())
        print(f"model      {report.model}  ({kinds})")
        print(f"inputs     {', '.join(summarize(x).short() for x in report.inputs) or '(none)'}  ({report.input_source})")
        print(f"view       {report.view} ({report.method})")
        print(f"executed   {report.nodes_executed} nodes")
        if report.error is None:
            verdict = "identical to" if report.identical else "DIFFERENT from"
            if report.native_error:
                verdict = "(native run failed: " + report.native_error + ")"
                print(f"outputs    {summarize(report.outputs).short()}  {verdict}")
            else:
                diff = report.max_abs_diff
                print(f"outputs    {summarize(report.outputs).short()}  {verdict} module(*inputs)"
                      + (f"  (max abs diff {diff:.3g})" if diff is not None else ""))
        print(f"time       engine {human_seconds(report.engine_seconds)}, native {human_seconds(report.native_seconds)}")
        print(f"recorded   {human_bytes(report.recorded_bytes)} of {human_bytes(session.budget)} budget, "
              f"{report.dropped_values} values kept as summaries only")
        if args.save_outputs and report.error is None:
            print(f"saved      outputs to {args.save_outputs}")
    if report.error is not None:
        print(f"tsdebug: error: {report.error.message}", file=sys.stderr)
        return 2
    if report.native_error is not None:
        print(f"tsdebug: native run failed: {report.native_error}", file=sys.stderr)
        return 1
    return 0 if report.identical else 1


def cmd_open(args: argparse.Namespace) -> int:
    from tsdebug.app import open_debugger

    return open_debugger(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from tsdebug.demo import demo_archive

    path = demo_archive()
    if args.print_path:
        print(path)
        return 0
    from tsdebug.app import open_debugger

    ns = build_open_parser().parse_args([path])
    return open_debugger(ns)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        if argv and argv[0] in COMMANDS:
            args = build_parser().parse_args(argv)
            handler = {"run": cmd_run, "demo": cmd_demo}[args.command]
        elif not argv or argv[0] in ("-h", "--help"):
            build_parser().print_help()
            return 0 if argv else 2
        else:
            args = build_open_parser().parse_args(argv)
            handler = cmd_open
        return handler(args)
    except SystemExit as exc:  # argparse: usage errors exit 2 after one line
        return int(exc.code) if isinstance(exc.code, int) else 2
    except KeyboardInterrupt:
        print("tsdebug: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from engine.errors import TsdebugError

        if isinstance(exc, TsdebugError):
            return _fail(exc.message, getattr(locals().get("args"), "json", False))
        if os.environ.get("TSDEBUG_DEBUG"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"tsdebug: internal error: {type(exc).__name__}: {first} "
              "(a bug in tsdebug; rerun with TSDEBUG_DEBUG=1 for the traceback)", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
