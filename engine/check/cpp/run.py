"""``tsdebug cpp``: run the archive in libtorch (a separate C++ process) and compare with Python.

Inputs go to the runner as ``torch.save`` of the argument tuple (read with ``torch::pickle_load``,
given the element types the method's schema declares); outputs come back through
``torch::pickle_save`` and ``torch.load(weights_only=True)``.  The Python side is the native
``module.<method>(*inputs)`` run, same inputs; the comparison is exact (``rtol = atol = 0``).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.check.cpp.build import Runner, runner
from engine.check.cpp.scan import Requirement, requirements
from engine.check.outputs import OutputDifference, output_differences
from engine.errors import InputError, TsdebugError, first_error_line
from engine.run.values import max_abs_diff, summarize, values_equal

RUN_TIMEOUT = 600


@dataclass
class CppReport:
    """What ``tsdebug cpp`` prints and returns."""

    model: str
    method: str
    inputs: list[Any] = field(default_factory=list)
    input_source: str = ""
    requirements: list[Requirement] = field(default_factory=list)
    check_only: bool = False
    runner: str | None = None
    built: bool = False
    build_seconds: float = 0.0
    libraries: list[str] = field(default_factory=list)
    threads: int | None = None
    identical: bool | None = None
    max_abs_diff: float | None = None
    differences: list[OutputDifference] = field(default_factory=list)
    python_load_seconds: float | None = None
    python_run_seconds: float | None = None
    cpp_load_seconds: float | None = None
    cpp_run_seconds: float | None = None
    outputs: Any = None  # Python's
    cpp_outputs: Any = None
    python_error: str | None = None
    cpp_error: str | None = None  # the C++ error's informative line
    cpp_error_stage: str | None = None  # library, load, inputs, run, outputs, crash
    cpp_error_node: str | None = None  # the IR node it names, where found
    cpp_error_kind: str | None = None
    cpp_error_source: str | None = None

    @property
    def blockers(self) -> list[Requirement]:
        return [r for r in self.requirements if r.blocks_cpp]

    def exit_code(self) -> int:
        """0 identical, 1 differs or fails in C++ while Python runs (or, with --check-only, cannot
        run in C++), 2 when Python fails too (the input or the model is at fault)."""
        if self.check_only:
            return 1 if self.blockers else 0
        if self.python_error is not None:
            return 2
        if self.cpp_error is not None:
            return 1
        return 0 if self.identical else 1

    def summary(self) -> str:
        """The verdict in one line (the debugger's notice)."""
        blockers = "; ".join(r.what for r in self.blockers)
        if self.check_only:
            return f"C++ cannot run it: {blockers}" if blockers else "nothing beyond libtorch is needed"
        if self.cpp_error is not None:
            node = f" at {self.cpp_error_kind} ({self.cpp_error_source or self.cpp_error_node})" \
                if self.cpp_error_node else ""
            both = " (Python fails too)" if self.python_error is not None else " while Python runs"
            return f"fails in C++ at {self.cpp_error_stage}{node}: {self.cpp_error}{both}"
        if self.python_error is not None:
            return f"the Python run fails: {self.python_error}"
        times = (f"run C++ {self.cpp_run_seconds or 0:.3g} s, Python {self.python_run_seconds or 0:.3g} s")
        if self.identical:
            return f"identical in C++ and Python ({times})"
        where = self.differences[0] if self.differences else None
        return ("C++ gives other numbers: " + (f"{where.where}: {where.what}" if where else "outputs differ")
                + f" ({times})")

    def to_json(self) -> dict:
        return {
            "command": "cpp",
            "model": self.model,
            "method": self.method,
            "input_source": self.input_source,
            "inputs": [summarize(x).to_json() for x in self.inputs],
            "requirements": [r.to_json() for r in self.requirements],
            "check_only": self.check_only,
            "runner": self.runner,
            "built": self.built,
            "build_seconds": round(self.build_seconds, 3),
            "libraries": self.libraries,
            "threads": self.threads,
            "identical": self.identical,
            "max_abs_diff": self.max_abs_diff,
            "differences": [d.to_json() for d in self.differences],
            "python_load_seconds": _round(self.python_load_seconds),
            "python_run_seconds": _round(self.python_run_seconds),
            "cpp_load_seconds": _round(self.cpp_load_seconds),
            "cpp_run_seconds": _round(self.cpp_run_seconds),
            "outputs": summarize(self.outputs).to_json() if self.outputs is not None else None,
            "cpp_outputs": summarize(self.cpp_outputs).to_json() if self.cpp_outputs is not None else None,
            "python_error": self.python_error,
            "cpp_error": None if self.cpp_error is None else {
                "message": self.cpp_error, "stage": self.cpp_error_stage, "node": self.cpp_error_node,
                "node_kind": self.cpp_error_kind, "source": self.cpp_error_source},
            "exit_code": self.exit_code(),
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def static_report(session: Any) -> CppReport:
    """``--check-only``: the requirements alone, nothing built or run."""
    return CppReport(model=session.path, method=session.method, check_only=True,
                     requirements=requirements(session.program))


def check(session: Any, libraries: tuple[str, ...] = (), rebuild: bool = False,
          stage: Any = lambda text: None) -> CppReport:
    """Run ``session``'s method in C++ and in Python on the session's inputs; compare exactly.

    ``session`` has been started (its inputs resolved).  ``libraries`` are loaded into the
    C++ process (``dlopen``) before the archive.
    """
    if session.format != "torchscript":
        raise TsdebugError(f"{session.path} is a torch.export program; tsdebug cpp checks TorchScript archives "
                           "(a .pt2 runs in C++ through AOTInductor, not torch::jit::load)")
    if session.device != "cpu":
        raise TsdebugError("tsdebug cpp runs on the CPU; drop --device")
    for lib in libraries:
        if not os.path.isfile(lib):
            raise InputError(f"--library {lib}: no such file")
    report = CppReport(model=session.path, method=session.method, inputs=list(session.inputs),
                       input_source=session.input_source, requirements=requirements(session.program),
                       libraries=[os.path.abspath(lib) for lib in libraries])
    stage("building the C++ runner (once per torch and compiler)…")
    built: Runner = runner(rebuild=rebuild)
    report.runner, report.built, report.build_seconds = built.path, built.built, built.build_seconds

    stage("running in Python…")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(session.path)
    report.python_load_seconds = time.perf_counter() - t0
    try:
        report.outputs, report.python_run_seconds = session.run_native()
    except Exception as exc:
        report.python_error = first_error_line(exc)

    stage("running in C++…")
    with tempfile.TemporaryDirectory(prefix="tsdebug-cpp-") as tmp:
        inputs_path, outputs_path = os.path.join(tmp, "inputs.pt"), os.path.join(tmp, "outputs.pt")
        try:
            torch.save(tuple(session.inputs), inputs_path)
        except Exception as exc:
            raise InputError(f"these inputs cannot be handed to C++ ({first_error_line(exc)}); give tensors, "
                             "numbers, strings, lists, tuples or dicts of them") from None
        cmd = [built.path, os.path.abspath(session.path), session.method, inputs_path, outputs_path,
               str(torch.get_num_threads()), "1" if session.grad else "0", *report.libraries]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                                  errors="replace")
        except subprocess.TimeoutExpired:
            report.cpp_error, report.cpp_error_stage = f"the C++ run took over {RUN_TIMEOUT} s", "run"
            return report
        facts = _facts(done.stdout)
        report.threads = int(facts["threads"]) if "threads" in facts else None
        report.cpp_load_seconds = float(facts["load_seconds"]) if "load_seconds" in facts else None
        report.cpp_run_seconds = float(facts["run_seconds"]) if "run_seconds" in facts else None
        if done.returncode != 0 or "ok" not in facts:
            _explain_failure(report, session, done, facts)
            return report
        report.cpp_outputs = read_outputs(outputs_path)
    if report.python_error is None:
        report.identical = values_equal(report.cpp_outputs, report.outputs)
        report.max_abs_diff = max_abs_diff(report.cpp_outputs, report.outputs)
        if not report.identical:
            report.differences, _ = output_differences(report.cpp_outputs, report.outputs, 0.0, 0.0)
    return report


def read_outputs(path: str) -> Any:
    """What the runner wrote, read without unpickling anything but tensors and plain values
    (libtorch's pickles name ``torch.jit._pickle``'s identity functions to restore types)."""
    from torch.jit import _pickle

    allowed = [_pickle.restore_type_tag, _pickle.build_intlist, _pickle.build_tensorlist,
               _pickle.build_doublelist, _pickle.build_boollist]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, weights_only=True)


def _facts(stdout: str) -> dict[str, str]:
    facts = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("\t")
        if sep:
            facts[key] = value
    return facts


_FRAME = re.compile(r'File "([^"]+)", line (\d+)')
_UNKNOWN = re.compile(r"Unknown (?:builtin op|type name|type): '?([\w.]+::[\w.]+|__torch__[\w.]+)'?")


def cpp_error_line(text: str) -> str:
    """The informative line of a libtorch error (without its C++ backtrace)."""
    text = text.split("\nException raised from ", 1)[0].strip()
    return first_error_line(RuntimeError(text)) if text else "no message"


def _explain_failure(report: CppReport, session: Any, done: subprocess.CompletedProcess, facts: dict) -> None:
    if "error_stage" in facts:
        report.cpp_error_stage = facts["error_stage"]
        report.cpp_error = cpp_error_line(done.stderr) or facts.get("error", "")
    else:
        report.cpp_error_stage = "crash"
        sig = f"signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
        last = next((ln for ln in reversed(done.stderr.splitlines()) if ln.strip()), "no message")
        report.cpp_error = f"the C++ runner died ({sig}): {last.strip()}"
    node = locate(done.stderr, session)
    if node is not None:
        report.cpp_error_node, report.cpp_error_kind = node.id, node.kind
        src = node.source
        if src is not None and src.file:
            report.cpp_error_source = f"{src.file}:{src.line}"


def locate(text: str, session: Any) -> Any:
    """The IR node a libtorch error names: the unknown operator or class, else the innermost
    frame of its TorchScript traceback that matches a node's source line."""
    graphs = []
    for name in sorted(session.program.method_names()):
        try:
            graphs.append(session.program.root_graph(name, inlined=True))
        except Exception:
            continue
    if session.method in session.program.method_names():
        graphs.sort(key=lambda g: g.name.split("[")[0] != session.method)
    m = _UNKNOWN.search(text)
    if m:
        wanted = m.group(1).rstrip(".")
        for g in graphs:
            for n in g.walk():
                if n.kind == wanted or any(wanted in v.type for v in (*n.inputs, *n.outputs)):
                    return n
    text = text.split("\nException raised from ", 1)[0]
    frames = _FRAME.findall(text)
    flat = _squeeze(text)
    for file, line in reversed(frames):
        if file.startswith("code/"):
            continue  # the archive's serialized code: the original source is the frame after it
        on_line = [n for g in graphs for n in g.walk()
                   if n.kind != "prim::Constant" and n.source is not None and n.source.file
                   and n.source.line == int(line)
                   and (n.source.file == file or os.path.basename(n.source.file) == os.path.basename(file))]
        # the traceback underlines the failing expression as torch prints the node's own source range
        exact = [n for n in on_line if _underlined(n) and _underlined(n) in flat]
        if exact:
            return exact[0]
        if on_line:
            return on_line[0]
    return None


def _source_range(node: Any) -> str:
    try:
        return node.handle.sourceRange() if node.handle is not None else ""
    except Exception:
        return ""


def _underlined(node: Any) -> str:
    """The code lines and ``~~~ <--- HERE`` underline of the node's original source range (without
    the ``File`` line, which the traceback writes with ``, in forward``, and the serialized part)."""
    text = _squeeze(_source_range(node).split("\nSerialized", 1)[0])
    return text.split("\n", 1)[1] if "\n" in text and "<--- HERE" in text else ""


def _squeeze(text: str) -> str:
    return "\n".join(ln.rstrip() for ln in text.splitlines() if ln.strip())
