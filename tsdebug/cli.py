"""Command line: ``tsdebug MODEL`` opens the debugger; ``tsdebug run|demo`` work without it.

Exit codes: 0 success (outputs identical), 1 a check failed (outputs differ),
2 bad input or an error in the model (one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import warnings
from typing import Sequence

from tsdebug.progress import Status, steps_of

COMMANDS = ("run", "diff", "lint", "render", "export", "cpp", "serve", "demo")


def _json_stdout(args: argparse.Namespace):
    """With ``--json``, stdout carries one JSON object: what the user's Python prints
    while tsdebug works (an eager model, a retrace) goes to stderr instead."""
    return contextlib.redirect_stdout(sys.stderr) if getattr(args, "json", False) else contextlib.nullcontext()

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


def parse_seed(text: str) -> int:
    """``--seed``: an integer torch's generator takes (64 bits)."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not -(1 << 63) <= seed < (1 << 64):
        raise argparse.ArgumentTypeError(f"{text} does not fit in 64 bits (give a seed from -2**63 to 2**64-1)")
    return seed


def parse_tolerance(text: str) -> float:
    """``--rtol``/``--atol``: a finite number, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a tolerance: give a finite number, 0 or more (e.g. 1e-5)")
    return value


def human_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a TorchScript archive (torch.jit.save) or a torch.export program (.pt2)")
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
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="NAME",
                   help="a Python package to import first, that registers the custom operators the program "
                        "uses (only known ones, torchvision, torchaudio..., are imported unasked)")
    p.add_argument("--grad", action="store_true", help="keep autograd on (default: run under torch.no_grad)")
    p.add_argument("--record-budget", type=parse_size, default=1 << 30, metavar="SIZE",
                   help="memory for recorded tensors before only summaries are kept (default: 1GiB)")
    p.add_argument("--seed", type=parse_seed, default=0, help="seed for random inputs (default: 0)")
    p.add_argument("--trust-pickles", action="store_true",
                   help="load the pickled parts of a .pt2 (tensor subclasses, TorchBind objects, example inputs "
                        "the safe loader refuses): only for files you trust, a pickle can run code")


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line, saying where the help is (argparse prints the whole usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def version_line() -> str:
    """What to quote in a bug report: tsdebug's version and torch's, read without importing torch."""
    from tsdebug import __version__

    python = ".".join(str(n) for n in sys.version_info[:3])
    return f"tsdebug {__version__} (torch {_torch_version()}, Python {python}; {_speedups()})"


def _speedups() -> str:
    """Which optional C extensions were built (engine.run._moments, engine.run._stepper), found on disk:
    importing the engine would import torch."""
    import importlib.machinery
    import importlib.util

    spec = importlib.util.find_spec("engine")
    folder = os.path.join(os.path.dirname(spec.origin), "run") if spec is not None and spec.origin else None
    built = [name for name in ("moments", "stepper") if folder and any(
        os.path.exists(os.path.join(folder, f"_{name}{suffix}")) for suffix in importlib.machinery.EXTENSION_SUFFIXES)]
    text = f"C extensions: {', '.join(built)}" if built else "no C extensions (built without a C compiler)"
    if "stepper" in built and os.environ.get("TSDEBUG_PURE_PYTHON", "") not in ("", "0"):
        text += "; TSDEBUG_PURE_PYTHON: the Python loop"
    return text


def _torch_version() -> str:
    """torch's own ``__version__`` (``2.14.1+cu130``: the build matters in a bug report, and the
    package metadata may leave it out), read from ``torch/version.py`` without importing torch."""
    import importlib.util
    from importlib import metadata

    spec = importlib.util.find_spec("torch")
    if spec is None:
        return "not installed"
    if spec.origin:
        try:
            with open(os.path.join(os.path.dirname(spec.origin), "version.py"), encoding="utf-8") as f:
                found = re.search(r"""^__version__\s*=\s*['"]([^'"]+)""", f.read(), re.M)
            if found:
                return found.group(1)
        except OSError:
            pass
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "unknown"


class _Version(argparse.Action):
    """``--version``, worked out only when asked for (reading torch's version takes a moment)."""

    def __init__(self, option_strings, dest, help=None):
        super().__init__(option_strings, dest, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tsdebug",
        description="A terminal debugger for TorchScript programs.",
        epilog="tsdebug MODEL [options] opens the debugger on MODEL. "
               "Commands: run (engine vs native, for CI), diff (engine vs the eager Python model), "
               "lint (what tracing froze), render (export the graph), export (to a verified .pt2), "
               "cpp (run it in libtorch, as a C++ program would), serve (the debugger in a browser), "
               "demo (the debugger on a bundled model). "
               "See 'tsdebug run --help'.",
    )
    parser.add_argument("-V", "--version", action=_Version,
                        help="print tsdebug's, torch's and Python's versions and the C extensions built, and exit")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the model through the engine and natively; compare the outputs",
                         description="Run MODEL through tsdebug's interpreter and through torch on the same "
                                     "inputs. Exit 0 when the outputs are bit-identical, 1 when not, 2 on error.")
    _model_options(run)
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.add_argument("--save-outputs", metavar="FILE", help="write the engine's outputs with torch.save")
    diff = sub.add_parser("diff", help="rerun the Python model eagerly; find the first node where they disagree",
                          description="Run MODEL through tsdebug's interpreter and the original Python model "
                                      "(--eager) on the same inputs, align their ops and name the first node "
                                      "where they disagree. Exit 0 when the outputs agree within tolerance, "
                                      "1 when not, 2 on error.")
    _model_options(diff)
    _eager_options(diff)
    diff.add_argument("--against", metavar="OTHER.pt",
                      help="compare with a second archive instead of the Python model "
                           "(a scripted vs a traced export, or two versions of one)")
    diff.add_argument("--json", action="store_true", help="print one JSON object")
    lint = sub.add_parser("lint", help="name the lines of Python whose control flow tracing froze",
                          description="Find what torch.jit.trace froze in MODEL: branches on tensor data or "
                                      "shapes, unrolled loops, baked shapes, scalars and devices, self.training. "
                                      "With --eager, look for an input on which the archive and the Python "
                                      "disagree. Exit 0 with no findings, 1 with findings, 2 on error.")
    _model_options(lint)
    _eager_options(lint)
    # engine.check.lint.CONFIDENCES, written out: importing the engine loads torch, too slow for --help
    lint.add_argument("--min-confidence", choices=("low", "medium", "high"), default="low",
                      help="report (and exit 1 for) only findings this sure or surer (default: low, all of them)")
    lint.add_argument("--json", action="store_true", help="print one JSON object")
    render = sub.add_parser("render", help="export the node graph (SVG, PNG, PDF, DOT) with what a run found",
                            description="Draw MODEL's graph: clusters for modules and If/Loop blocks, shapes on "
                                        "edges (--run), executed nodes, divergences (--eager), lint findings "
                                        "(--lint). Uses Graphviz's dot, else graphviz-pure, else a built-in "
                                        "layout (SVG only), and says which.")
    _model_options(render)
    _eager_options(render)
    render.add_argument("-o", "--output", required=True, metavar="OUT", help="the file to write")
    render.add_argument("--format", choices=("svg", "png", "pdf", "dot"), help="default: from OUT's extension")
    render.add_argument("--collapse", type=int, metavar="DEPTH",
                        help="fold modules deeper than DEPTH into single boxes with their op counts "
                             "(0: one box per top-level module)")
    render.add_argument("--run", action="store_true", help="run first: shapes on edges, executed nodes, loop counts")
    render.add_argument("--lint", action="store_true", help="mark what tracing froze")
    render.add_argument("--call-tree", action="store_true",
                        help="draw the method's own graph (calls as single nodes) instead of the inlined one")
    export = sub.add_parser("export", help="turn an archive into a torch.export program (.pt2) and verify it",
                            description="Convert MODEL (a TorchScript archive) into a torch.export program with "
                                        "torch's converter, or export the Python model (--eager) on the "
                                        "archive's weights; write it to OUT and verify node by node that the "
                                        "two compute the same. Where it cannot, name the node or line that "
                                        "blocks it. Exit 0 written and verified, 1 written but different, "
                                        "2 could not export.")
    _model_options(export)
    _eager_options(export)
    export.add_argument("-o", "--output", required=True, metavar="OUT.pt2", help="the program to write")
    export.add_argument("--json", action="store_true", help="print one JSON object")
    cpp = sub.add_parser("cpp", help="run the archive in C++ (libtorch) and compare with Python bit for bit",
                         description="Say what a C++ program needs to run MODEL (operator libraries, custom "
                                     "classes, calls into Python), then load it with torch::jit::load in a small "
                                     "C++ runner built once against the installed torch, call the method on the "
                                     "same inputs as Python and compare the outputs bit for bit. Exit 0 "
                                     "identical, 1 different or failing in C++ while Python runs, 2 on error.")
    _model_options(cpp)
    cpp.add_argument("--json", action="store_true", help="print one JSON object")
    cpp.add_argument("--check-only", action="store_true",
                     help="only the static check of what C++ needs (no compiler needed)")
    cpp.add_argument("--rebuild", action="store_true", help="compile the cached C++ runner again")
    cpp.add_argument("--emit", metavar="DIR",
                     help="also write a minimal C++ application for the model (CMakeLists.txt, main.cpp) to DIR")
    serve = sub.add_parser("serve", help="serve the debugger in a browser (localhost only unless --host)",
                           description="Serve the debugger on MODEL at http://localhost:PORT through textual-serve: "
                                       "each browser tab gets its own session. The page runs the model on this "
                                       "machine, so only this machine can connect unless --host names another "
                                       "interface. Other options are those of 'tsdebug MODEL'.")
    serve.add_argument("model", help="a TorchScript archive or a torch.export .pt2")
    serve.add_argument("--port", type=int, default=8000, help="the port to listen on (default 8000)")
    serve.add_argument("--host", default="localhost",
                       help="the interface to listen on (default localhost; 0.0.0.0 lets any machine that can "
                            "reach this one run the model)")
    demo = sub.add_parser("demo", help="open the debugger on a bundled example model",
                          description="Open the debugger on a bundled example model (built on first use).")
    demo.add_argument("--print-path", action="store_true", help="only build the demo archive and print its path")
    return parser


def _eager_options(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--eager", required=required, metavar="SPEC",
                   help="the Python model: package.module:Name or path/to/file.py:Name "
                        "(an nn.Module class or a function returning one)")
    p.add_argument("--eager-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a constructor argument for --eager (Python literal), repeated")
    p.add_argument("--eager-weights", metavar="FILE",
                   help="a state dict for the eager model (default: the archive's own weights)")
    p.add_argument("--rtol", type=parse_tolerance, default=1e-5, help="relative tolerance (default 1e-5)")
    p.add_argument("--atol", type=parse_tolerance, default=1e-5, help="absolute tolerance (default 1e-5)")


def build_open_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tsdebug",
        description="Open the TorchScript debugger on MODEL. Other commands: tsdebug run|demo (tsdebug run --help).",
    )
    _model_options(parser)
    _eager_options(parser)
    parser.add_argument("--against", metavar="OTHER",
                        help="make e compare with a second program (an archive or a .pt2) instead of the Python "
                             "model: the same marks, D, ] and [, the other side's value in the inspector")
    return parser


def _fail(message: str, as_json: bool = False) -> int:
    if as_json:
        print(json.dumps({"error": {"message": message}}))
    print(f"tsdebug: error: {message}", file=sys.stderr)
    return 2


def _session(args: argparse.Namespace):
    from engine import Session, paths

    paths.reset_reads()  # the files this command reads, which no output may overwrite

    return Session(
        args.model,
        device=args.device,
        libraries=tuple(args.library),
        imports=tuple(getattr(args, "imports", ())),
        method=args.method,
        inline=args.inline,
        grad=args.grad,
        budget=args.record_budget,
        seed=args.seed,
        trust_pickles=getattr(args, "trust_pickles", False),
    )


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    from engine.run.values import human_bytes, nan_outputs_note, summarize

    from engine import paths

    if args.save_outputs and os.path.abspath(args.save_outputs) == os.path.abspath(args.model):
        return _fail("--save-outputs would overwrite the model; choose another file", args.json)
    with Status() as status, _json_stdout(args):
        status.show(f"loading {args.model}…")
        session = _session(args)
        session.start(specs=args.input or None, inputs_file=args.inputs)
        report = session.run_and_compare(
            stage=lambda name: status.show(steps_of(session) if name == "engine" else "running natively…"))
        if args.save_outputs:  # refused before the run: a missing folder or a file tsdebug read
            paths.check_output(args.save_outputs, "--save-outputs")
    if args.save_outputs and report.error is None:
        paths.atomic_write(args.save_outputs, lambda tmp: torch.save(report.outputs, tmp), "--save-outputs")
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
                print(f"outputs    {summarize(report.outputs).short()}  {verdict} {report.native_call}"
                      + (f"  (max abs diff {diff:.3g})" if diff is not None else ""))
        print(f"time       engine {human_seconds(report.engine_seconds)}, native {human_seconds(report.native_seconds)}"
              "  (first runs, each compiling as it goes)")
        print(f"recorded   {human_bytes(report.recorded_bytes)} of {human_bytes(session.budget)} budget, "
              f"{report.dropped_values} values kept as summaries only")
        nan_note = nan_outputs_note(report.outputs) if report.error is None else ""
        if nan_note:
            print(f"NaN        {nan_note}")
        if report.messages:
            more = f"  (and {len(report.messages) - 1} more lines)" if len(report.messages) > 1 else ""
            print(f"said       {report.messages[0][:200]}{more}")
        if args.save_outputs and report.error is None:
            print(f"saved      outputs to {args.save_outputs}")
    if report.error is not None:
        hint = ""
        if report.input_source == "inferred from the graph":
            shapes = ", ".join(summarize(x).short() for x in report.inputs)
            hint = f" (the input {shapes} was guessed from the graph: give the model's own with --input)"
        print(f"tsdebug: error: {report.error.message}{hint}", file=sys.stderr)
        return 2
    if report.native_error is not None:
        print(f"tsdebug: native run failed: {report.native_error}", file=sys.stderr)
        return 1
    return 0 if report.identical else 1


def cmd_cpp(args: argparse.Namespace) -> int:
    from engine.check import cpp
    from engine.check.cpp.emit import emit
    from engine.run.values import summarize

    if args.emit and os.path.realpath(args.emit) == os.path.realpath(args.model):
        return _fail("--emit names the model; choose a folder for the C++ application", args.json)
    with Status() as status, _json_stdout(args):
        status.show(f"loading {args.model}…")
        session = _session(args)
        if args.check_only:
            report = cpp.static_report(session)
        else:
            session.start(specs=args.input or None, inputs_file=args.inputs)
            report = cpp.check(session, tuple(args.library), rebuild=args.rebuild, stage=status.show)
        emitted = []
        if args.emit:
            if session.inputs is None:
                session.start(specs=args.input or None, inputs_file=args.inputs)
            emitted = emit(session, args.emit, tuple(args.library))
    if args.json:
        out = report.to_json()
        out["emitted"] = emitted
        print(json.dumps(out, indent=2))
        return report.exit_code()
    print(f"model      {report.model}  ({report.method})")
    if not report.check_only:
        print(f"inputs     {', '.join(summarize(x).short() for x in report.inputs) or '(none)'}  ({report.input_source})")
    if not report.requirements:
        print("needs      nothing beyond libtorch")
    for i, req in enumerate(report.requirements):
        mark = "  (C++ cannot provide it)" if req.blocks_cpp else ""
        where = f"  [{req.nodes[0]}" + (f", {req.sources[0]}" if req.sources else "") + "]" if req.nodes else ""
        print(f"{'needs' if i == 0 else '':<10} {req.what}{mark}{where}")
    if not report.check_only:
        cached = f"built in {report.build_seconds:.1f} s" if report.built else "cached"
        print(f"runner     {cached}: {report.runner}")
        if report.libraries:
            print(f"libraries  {', '.join(report.libraries)}")
        threads = f"  ({report.threads} threads, as Python)" if report.threads else ""
        print(f"load       C++ {human_seconds(report.cpp_load_seconds)}, Python {human_seconds(report.python_load_seconds)}")
        print(f"run        C++ {human_seconds(report.cpp_run_seconds)}, Python {human_seconds(report.python_run_seconds)}"
              f"{threads}")
        if report.cpp_error is not None:
            node = ""
            if report.cpp_error_node:
                node = f"  (node {report.cpp_error_node} {report.cpp_error_kind}" + \
                    (f", {report.cpp_error_source}" if report.cpp_error_source else "") + ")"
            print(f"C++        fails at {report.cpp_error_stage}: {report.cpp_error}{node}")
        elif report.python_error is None:
            if report.identical:
                print(f"outputs    {summarize(report.cpp_outputs).short()}  identical to Python's module(*inputs)")
            else:
                print(f"outputs    {summarize(report.cpp_outputs).short()}  DIFFERENT from Python's module(*inputs)"
                      + (f"  (max abs diff {report.max_abs_diff:.3g})" if report.max_abs_diff is not None else ""))
                for d in report.differences[:5]:
                    print(f"           {d.where}: {d.what}")
    for path in emitted:
        print(f"emitted    {path}")
    if emitted:
        print(f"           build: cmake -S {args.emit} -B {os.path.join(args.emit, 'build')} && "
              f"cmake --build {os.path.join(args.emit, 'build')}")
    if report.python_error is not None:
        print(f"tsdebug: error: the Python run fails too: {report.python_error}", file=sys.stderr)
    return report.exit_code()


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


def cmd_diff(args: argparse.Namespace) -> int:
    from engine.check.eager import parse_eager_args
    from engine.run.values import summarize

    if bool(args.eager) == bool(args.against):
        return _fail("give the reference: --eager package.module:Name (the Python model) or --against OTHER.pt",
                     args.json)
    with Status() as status, _json_stdout(args):
        status.show(f"loading {args.model}…")
        session = _session(args)
        session.start(specs=args.input or None, inputs_file=args.inputs)
        status.show(f"running {args.model} and {args.against or args.eager}, then aligning them…")
        if args.against:
            result = session.diff_against(args.against, args.rtol, args.atol)
        else:
            result = session.diff(args.eager, parse_eager_args(args.eager_arg), args.eager_weights, args.rtol,
                                  args.atol)
    r = result.report
    if args.json:
        out = result.to_json()
        out.update(model=session.path, method=session.method, input_source=session.input_source,
                   inputs=[summarize(x).to_json() for x in session.inputs])
        print(json.dumps(out, indent=2))
        return 0 if r.outputs_close else 1
    kinds = ", ".join(f"{m}: {k}" for m, k in session.method_kinds().items())
    print(f"model      {session.path}  ({kinds})")
    if args.against:
        print(f"against    {args.against}")
    else:
        if result.eager_grad and not args.grad:
            grad = "autograd on, as when torch.jit.trace recorded the graph"
        else:
            grad = f"autograd {'on' if result.eager_grad else 'off'}"
        print(f"eager      {args.eager}  ({grad})")
    print(f"inputs     {', '.join(summarize(x).short() for x in session.inputs)}  ({session.input_source})")
    grouped = f" + {r.grouped} inside fused or composite ops" if r.grouped else ""
    print(f"aligned    {len(r.aligned)}{grouped} of {r.comparable} comparable nodes ({r.coverage:.1%})")
    other = f"{os.path.basename(args.against)}" if args.against else "the Python"
    _print_outputs(r, args, other)
    if r.first is None:
        if r.parting is not None:
            print("where they part")
            _print_parting(r.parting, other)
        elif not r.outputs_close:
            made = any(d.record is not None for d in r.output_differences)
            print("first divergence: none; both runs made the same ops and every tensor compared agrees"
                  + (": the outputs differ where the node named above made them" if made else ""))
        else:
            print("first divergence: none")
    else:
        d = r.first
        node = d.record.node
        src = f" at {node.source}" if node.source and node.source.file else ""
        print("first divergence")
        print(f"  node     {node.kind}  {node.id}  (step {d.record.index}, module '{d.record.module_path}'){src}")
        print(f"  {'other' if args.against else 'eager'}    {d.eager.name} at {d.eager.where}")
        mt = d.metrics
        shape = "" if mt.shape_ok else "  SHAPES DIFFER"
        print(f"  metrics  max abs {_fmt(mt.max_abs)}  max rel {_fmt(mt.max_rel)}  mean abs {_fmt(mt.mean_abs)}  "
              f"cosine {_fmt(mt.cosine)}  NaN mismatches {mt.nan_mismatch}{shape}")
        if r.outputs_close and mt.shape_ok and not mt.nan_mismatch and mt.cosine is not None and mt.cosine > 0.9999:
            # kernels that round differently (grad mode, another conv algorithm) drift apart a little
            print("  note     the outputs agree and this node is off by rounding only (cosine ~1): "
                  "raise --atol or --rtol to look past it")
        if r.parting is not None:
            print("  before it, the runs parted:")
            _print_parting(r.parting, other)
        worst = r.worst()
        if len(worst) > 1:
            print("worst nodes")
            for w in worst:
                print(f"  {w.record.node.kind:24} {w.record.node.id:32} max rel {_fmt(w.metrics.max_rel):>8}  "
                      f"{w.record.module_path}")
    return 0 if r.outputs_close else 1


def _node_place(rec) -> str:
    from engine.check.places import place_of_record

    s = rec.node.source
    return place_of_record(rec) or (str(s) if s and s.file else "?")


def _print_outputs(r, args, other: str) -> None:
    """The ``outputs`` line(s): agree, what differs and where, or which run raised."""
    if r.archive_error is not None:
        rec = r.error_record
        node = rec.node if rec is not None else getattr(r.archive_error, "node", None)
        at = f" at {node.kind} {node.id} ({_node_place(rec) if rec is not None else node.source})" if node else ""
        print(f"outputs    none from the archive: it raised{at}; {other} ran to the end")
        print(f"           {r.archive_error.message}")
        return
    if r.eager_error is not None:
        e = r.eager_error
        print(f"outputs    none from {other}: it raised {e.kind} at {e.where}; the archive ran to the end")
        print(f"           {e.message}")
        return
    if r.outputs_close:
        print(f"outputs    agree within rtol {args.rtol:g}, atol {args.atol:g}"
              + (f"  (max abs diff {_fmt(r.outputs_metrics.max_abs)})" if r.outputs_metrics else ""))
        return
    diffs = r.output_differences

    def made_by(d) -> str:
        if d.record is None:
            return ""
        return f"  (made by {d.record.node.kind} {d.record.node.id} at {_node_place(d.record)})"

    if len(diffs) == 1 and diffs[0].where == "output":
        print(f"outputs    DIFFER: {diffs[0].what}{made_by(diffs[0])}")
        return
    print(f"outputs    DIFFER at {len(diffs)} place{'s' if len(diffs) != 1 else ''} (archive vs {other.split()[-1]})")
    for d in diffs[:8]:
        print(f"           {d.where:12} {d.what}{made_by(d)}")
    if len(diffs) > 8:
        print(f"           … and {len(diffs) - 8} more")


def _print_parting(p, other: str) -> None:
    """The last node both runs agree on, what each ran after it alone, where shapes part."""
    from engine.check.places import enclosing_statement, place_of_eager, place_of_record
    from engine.check.parting import grouped_lines, shape_text

    last = p.last_agreed
    if last is not None:
        n = last.record.node
        print(f"  agreed   {n.kind}  {n.id}  (step {last.record.index}, module '{last.record.module_path}') "
              f"at {_node_place(last.record)}: the last node both agree on")
    else:
        print("  agreed   no node before the runs part")

    def show(items) -> None:
        for lines, times in grouped_lines(items)[:8]:
            for ops, where, inside in lines:
                within = f"  (in '{inside['statement']}' at line {inside['line']})" if inside else ""
                print(f"           {ops:28} at {where}{within}")
            if times > 1:
                print(f"           … {'these lines' if len(lines) > 1 else 'that line'} {times} times in all")

    if p.graph_only:
        print(f"  then the archive ran what {other} did not:")
        show([(r.node.kind, shape_text(_first(r)), _node_place(r), enclosing_statement(place_of_record(r)))
              for r in p.graph_only])
    if p.eager_only:
        print(f"  and {other} ran what the archive did not:")
        show([(o.name, shape_text(o.outputs[0] if o.outputs else None), place_of_eager(o) or o.where,
               enclosing_statement(place_of_eager(o))) for o in p.eager_only])
    if not p.graph_only and not p.eager_only:
        print("  and neither ran an op the other did not")
    if p.shapes_part is not None:
        r, _ = p.shapes_part
        print(f"  shapes part at {r.node.kind} {r.node.id} (step {r.index}) at {_node_place(r)}: {p.shapes_text}")


def _first(rec):
    from engine.check.diff import _first_tensor

    return _first_tensor(rec.peek_outputs())


def cmd_lint(args: argparse.Namespace) -> int:
    from engine.check.eager import parse_eager_args
    from engine.check.lint import CONFIDENCES, lint_session

    with Status() as status, _json_stdout(args):
        status.show(f"loading {args.model}…")
        session = _session(args)
        status.show(f"reading the graphs of {args.model}…")
        report = lint_session(session)
        if args.eager and session.format == "exported":
            report.notes.append("--eager retraces the Python with torch.jit.trace, which says nothing of a "
                                f"torch.export program; tsdebug diff {args.model} --eager {args.eager} compares "
                                "the two node by node")
        elif args.eager:
            from engine.check.lint import conversion_evidence, counterexamples, trace_warnings

            kwargs = parse_eager_args(args.eager_arg)
            session.start(specs=args.input or None, inputs_file=args.inputs)
            status.show(f"tracing {args.eager} again to hear what torch.jit.trace warns…")
            trace_warnings(session, report, args.eager, kwargs, args.eager_weights)
            conversion_evidence(session, report, args.eager, kwargs, args.eager_weights)
            status.show("trying inputs that take the other branches…")
            counterexamples(session, report, args.eager, kwargs, args.eager_weights,
                            args.input or None, args.rtol, args.atol)
    least = CONFIDENCES.index(args.min_confidence)
    below = [f for f in report.findings if CONFIDENCES.index(f.confidence) < least]
    if below:
        report.findings = [f for f in report.findings if CONFIDENCES.index(f.confidence) >= least]
        report.notes.append(f"{len(below)} finding{'s' if len(below) != 1 else ''} under confidence "
                            f"{args.min_confidence} not shown")
    if args.json:
        out = report.to_json()
        out["model"] = session.path
        print(json.dumps(out, indent=2, default=str))
        return 1 if report.findings else 0
    kinds = ", ".join(f"{m}: {k}" for m, k in report.methods.items())
    print(f"model      {session.path}  ({kinds})")
    for note in report.notes:
        print(f"note       {note}")
    if not report.findings:
        print("findings   none")
        return 0
    # One entry per line of Python: a block used in 12 places froze the same line 12 times.
    groups: dict[tuple, list] = {}
    for f in report.findings:
        groups.setdefault((f.kind, f.confidence, f.where, f.text, f.frozen, f.evidence, f.counterexample), []).append(f)
    places = (f" at {len(groups)} line{'s' if len(groups) != 1 else ''} of Python"
              if len(groups) < len(report.findings) else "")
    print(f"findings   {len(report.findings)}{places}")
    for same in groups.values():
        f = same[0]
        where = f.where if f.file else "(no source line)"
        paths = [g.module_path for g in same if g.module_path]
        inst = ""
        if paths:
            shown = ", ".join(paths[:2]) + (f", … ({len(paths)} modules)" if len(paths) > 2 else "")
            inst = f"  [{shown}]"
        print(f"\n{f.kind} ({f.confidence})  {where}{inst}")
        if f.text:
            print(f"    {f.text}")
        print(f"    frozen:   {f.frozen}")
        print(f"    evidence: {f.evidence}")
        if f.nodes:
            print(f"    nodes:    {', '.join(f.nodes[:4])}" + (f" (+{len(f.nodes) - 4})" if len(f.nodes) > 4 else ""))
        if f.counterexample:
            print(f"    disagrees on: {f.counterexample}")
    if report.reproduce:
        print(f"\nreproduce  {report.reproduce}")
    return 1


def cmd_render(args: argparse.Namespace) -> int:
    from engine.check.eager import parse_eager_args
    from tsdebug.render import engine_note, export, overlay_from_session
    from tsdebug.render.layout import LayoutError

    from engine import paths

    if os.path.abspath(args.output) == os.path.abspath(args.model):
        return _fail("-o would overwrite the model; choose another file")
    args.inline = not args.call_tree
    session = _session(args)
    paths.check_output(args.output, "-o")
    graph = session.program.root_graph(session.method, inlined=not args.call_tree)
    diff = findings = run_error = None
    if args.run or args.eager:
        session.start(specs=args.input or None, inputs_file=args.inputs)
        if args.eager:
            diff = session.diff(args.eager, parse_eager_args(args.eager_arg), args.eager_weights,
                                args.rtol, args.atol)
        else:
            session.machine.run()
            if session.machine.error is not None:
                # drawn anyway (the graph up to the failing node is what to look at), but the run failed
                run_error = session.machine.error
    if args.lint:
        from engine.check.lint import lint_session

        findings = lint_session(session)
    overlay = overlay_from_session(session, graph, diff, findings)
    from tsdebug.render.scene import labeler_for

    made: dict = {}

    def draw(tmp: str) -> None:
        made["engine"], made["boxes"] = export(graph, tmp, args.format, overlay, args.collapse,
                                               labeler=labeler_for(session, graph))

    try:
        paths.atomic_write(args.output, draw, "-o")
    except (LayoutError, ValueError) as exc:
        return _fail(str(exc))
    print(f"wrote {args.output} ({made['boxes']} boxes)")
    if made["engine"] != "none":
        print(engine_note(made["engine"]))
    if run_error is not None:
        print(f"tsdebug: error: {run_error.message}", file=sys.stderr)
        return 2
    return 0



def cmd_export(args: argparse.Namespace) -> int:
    from engine.check.eager import parse_eager_args
    from engine.check.export import export_program

    with Status() as status, _json_stdout(args):
        status.show(f"loading {args.model}…")
        session = _session(args)
        session.start(specs=args.input or None, inputs_file=args.inputs)
        report = export_program(session, args.output, eager=args.eager,
                                eager_args=parse_eager_args(args.eager_arg) if args.eager else None,
                                eager_weights=args.eager_weights, rtol=args.rtol, atol=args.atol,
                                stage=status.show)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, default=str))
        if report.error:
            print(f"tsdebug: error: {report.error}", file=sys.stderr)
        return report.exit_code
    print(f"model      {report.model}")
    if not report.written:
        for issue in report.issues:
            where = f"{issue['file']}:{issue['line']}" if issue.get("file") else "(no line)"
            text = f"  {issue['text']}" if issue.get("text") else ""
            print(f"blocks     {issue['kind']}: {issue['expr']} at {where}{text}")
        for note in report.notes:
            print(f"note       {note}")
        print(f"tsdebug: error: {report.error}", file=sys.stderr)
        return 2
    print(f"wrote      {report.output}  ({report.route})")
    for note in report.notes:
        print(f"note       {note}")
    for v in report.verifications:
        detail = ""
        if v.verdict == "within tolerance" and v.worst:
            detail = f"  (worst node {v.worst['node']} {v.worst['kind']}, max abs {v.worst['max_abs']:.3g})"
        elif v.verdict == "differs" and v.first_divergence:
            fd = v.first_divergence
            detail = f"  (first divergence at {fd['node']} {fd['kind']} in the archive, {fd['eager_op']} in the program)"
        elif v.verdict == "failed":
            detail = f"  ({v.error})"
        aligned = f", {v.aligned} of {v.comparable} nodes compared" if v.comparable else ""
        print(f"verified   {v.verdict} on {v.inputs}{aligned}{detail}")
        if v.verdict == "differs":
            print(f"next       tsdebug diff {report.model} --against {report.output} shows where the two part")
    return report.exit_code


def cmd_serve(argv: list[str]) -> int:
    """``tsdebug serve MODEL [--port N] [--host H] [options of tsdebug MODEL]``."""
    parser = build_parser()
    serve_parser = next(a for a in parser._subparsers._group_actions[0].choices.values()
                        if a.prog.endswith(" serve"))
    args, rest = serve_parser.parse_known_args(argv)
    build_open_parser().parse_args([args.model, *rest])  # the debugger's own options, checked here
    if not os.path.isfile(args.model):
        return _fail(f"{args.model}: no such file")
    if not 0 < args.port < 65536:
        return _fail(f"--port {args.port}: choose a port from 1 to 65535")
    from tsdebug.serve import serve

    return serve(args.model, rest, host=args.host, port=args.port)


def _no_terminal() -> str | None:
    """Why the debugger cannot start here (stdin or stdout not a terminal), or None.

    Without one, Textual's driver waits on a terminal that never answers, a core spinning forever.
    textual-serve (``tsdebug serve``) runs it under its own driver, named in ``TEXTUAL_DRIVER``.
    """
    if os.environ.get("TEXTUAL_DRIVER"):
        return None
    for name, stream in (("stdin", sys.stdin), ("stdout", sys.stdout)):
        try:
            if stream is None or not os.isatty(stream.fileno()):
                return name
        except (AttributeError, ValueError, OSError):
            return name
    return None


def _needs_terminal() -> int | None:
    which = _no_terminal()
    if which is None:
        return None
    return _fail(f"the debugger needs a terminal and {which} is not one; run it in a terminal, or use "
                 "tsdebug run, diff or lint in scripts")


def cmd_open(args: argparse.Namespace) -> int:
    refused = _needs_terminal()
    if refused is not None:
        return refused
    from tsdebug.app import open_debugger

    return open_debugger(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from tsdebug.demo import demo_archive

    path = demo_archive()
    if args.print_path:
        print(path)
        return 0
    refused = _needs_terminal()
    if refused is not None:
        return refused
    from tsdebug.app import open_debugger

    # The demo's Python is in the package, so `e` (the eager comparison) works too.
    ns = build_open_parser().parse_args([path, "--eager", "tsdebug.demo:DemoNet"])
    return open_debugger(ns)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        if argv and argv[0] == "serve" and not ({"-h", "--help"} & set(argv[1:])):
            return cmd_serve(argv[1:])
        if argv and argv[0] in (*COMMANDS, "-V", "--version"):  # --version prints and exits in the parser
            args = build_parser().parse_args(argv)
            handler = {"run": cmd_run, "diff": cmd_diff, "lint": cmd_lint, "render": cmd_render,
                       "export": cmd_export, "cpp": cmd_cpp, "demo": cmd_demo, "serve": None}[args.command]
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
    except BrokenPipeError:
        # The reader went away (`tsdebug run m.pt --json | head`): stop quietly, as
        # Unix tools do.  Point stdout at devnull so the interpreter's final flush
        # does not complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
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


def run_cli() -> None:
    """The ``tsdebug`` command: ``main``, then an exit that skips the interpreter's teardown.

    torch finishes a ``torch.jit.fork`` task on its inter-op thread pool after
    ``wait`` has returned; if the interpreter is shutting down by then, that
    thread's last decref of a tensor's Python object ends the process with
    'terminate called without an active exception' (a scripted fork model
    run natively aborts at exit about half the time on this machine, with or
    without tsdebug).  Everything the command writes is flushed first; there
    is nothing else to tear down.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed pipe: main already said what it had to
            pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run_cli()
