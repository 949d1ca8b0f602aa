"""The facade one user session holds: archive, program, inputs, machine.

The CLI, the UI and the tests all drive this object::

    from engine import Session
    s = Session("model.pt")
    s.start()                     # inputs: traced shapes, or inferred
    s.machine.step()              # one node
    s.machine.continue_()         # to a breakpoint or the end
    report = s.run_and_compare()  # the engine against module(*inputs)
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from engine import formats
from engine import inputs as inputs_mod
from engine.aliasing import clone_value, to_device
from engine.errors import InputError, ModelError, TsdebugError, first_error_line
from engine.run.machine import Breakpoints, Machine, ModuleState
from engine.run.timeline import DEFAULT_BUDGET
from engine.run.values import max_abs_diff, summarize, values_equal


class RandomState:
    """torch's global random state (CPU, and CUDA where it is in use), to start runs from."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() \
            else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


@dataclass
class RunReport:
    """What ``tsdebug run`` prints: the engine's run against the native run."""

    model: str
    method: str
    view: str
    methods: dict[str, str]
    inputs: list[Any]
    input_source: str
    nodes_executed: int = 0
    identical: bool | None = None
    max_abs_diff: float | None = None
    engine_seconds: float = 0.0
    native_seconds: float | None = None
    recorded_bytes: int = 0
    dropped_values: int = 0
    outputs: Any = None
    native_outputs: Any = None
    error: TsdebugError | None = None
    native_error: str | None = None
    imported_libraries: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)  # what the model printed or warned during the run
    format: str = "torchscript"
    native_call: str = "module(*inputs)"  # what the native run calls
    symbolic_shapes: dict | None = None  # an exported program's dynamic dimensions and their ranges

    def to_json(self) -> dict:
        err = _error_json(self.error)
        return {
            "command": "run",
            "model": self.model,
            "method": self.method,
            "view": self.view,
            "methods": self.methods,
            "input_source": self.input_source,
            "inputs": [summarize(x).to_json() for x in self.inputs],
            "nodes_executed": self.nodes_executed,
            "identical": self.identical,
            "max_abs_diff": self.max_abs_diff,
            "engine_seconds": round(self.engine_seconds, 6),
            "native_seconds": None if self.native_seconds is None else round(self.native_seconds, 6),
            "recorded_bytes": self.recorded_bytes,
            "dropped_values": self.dropped_values,
            "outputs": summarize(self.outputs).to_json() if self.outputs is not None else None,
            "error": err,
            "native_error": self.native_error,
            "imported_libraries": self.imported_libraries,
            "messages": self.messages,
            "format": self.format,
            "native_call": self.native_call,
            "symbolic_shapes": self.symbolic_shapes,
        }


class Session:
    """One archive opened for debugging."""

    def __init__(
        self,
        path: str,
        *,
        device: str = "cpu",
        libraries: tuple[str, ...] = (),
        method: str = "forward",
        inline: bool = False,
        grad: bool = False,
        budget: int = DEFAULT_BUDGET,
        seed: int = 0,
        trust_pickles: bool = False,
        imports: tuple[str, ...] = (),
    ):
        self.path = path
        self.device = device
        self.libraries = tuple(libraries)
        self.trust_pickles = trust_pickles
        # the format's loaded program: LoadedArchive (.pt) or LoadedExport (.pt2)
        self.imports = tuple(imports)
        self.loaded = formats.load(path, device=device, libraries=libraries, trust_pickles=trust_pickles,
                                   imports=self.imports)
        self.format = self.loaded.format
        # the TorchScript archive, for the analyses that read one (lint's traced shapes); None for a .pt2
        self.archive = self.loaded.archive if self.format == "torchscript" else None
        self.program = self.loaded.program
        if method not in self.program.method_names():
            names = ", ".join(sorted(self.program.method_names()))
            raise TsdebugError(f"{path} has no method {method!r}; it has {names}")
        self.method = method
        self.inline = inline
        self.grad = grad
        self.budget = budget
        self.seed = seed
        self.breakpoints = Breakpoints()
        # torch's random state as the first run found it: every run (engine, native,
        # eager) starts from it, so models that draw random numbers compare bit for bit
        self.random: RandomState | None = None
        # what runs change in the module (buffers, attributes), put back before each run
        self.module_state = ModuleState()
        self.inputs: tuple | None = None
        self.input_source = ""
        self.machine: Machine | None = None

    # ------------------------------------------------------------ the program

    @property
    def params(self) -> list[inputs_mod.Param]:
        return self.loaded.params(self.method)

    def signature_text(self) -> str:
        return inputs_mod.describe_signature(self.method, self.params)

    def method_kinds(self) -> dict[str, str]:
        """``traced``, ``scripted`` or ``unknown`` for each method of the root module."""
        return self.loaded.method_kinds()

    @property
    def graph(self):
        return self.program.root_graph(self.method, inlined=self.inline)

    # ----------------------------------------------------------------- inputs

    def resolve_inputs(
        self,
        specs: list[str] | None = None,
        inputs_file: str | None = None,
        values: tuple | None = None,
    ) -> tuple[tuple, str]:
        """Inputs from values, a file, specs, stored traced shapes or the graph, in that order."""
        params = self.params
        if values is not None:
            args, source = tuple(values), "given values"
        elif inputs_file:
            args, source = inputs_mod.load_inputs_file(inputs_file, params), f"--inputs {inputs_file}"
        elif specs:
            args = tuple(inputs_mod.parse_spec(s, self.seed, i) for i, s in enumerate(specs))
            source = "--input " + " ".join(specs)
        else:
            stored = self.loaded.stored_inputs(self.method, self.seed)
            if stored:
                args, source = stored
            else:
                args = self.loaded.infer_inputs(self.method, params, self.seed)
                if args is None:
                    raise InputError(
                        f"cannot guess the inputs of {self.signature_text()}; give one --input per "
                        f"parameter (e.g. {inputs_mod.example_arguments(params)}, with your shapes)"
                    )
                source = "inferred from the graph"
        args = inputs_mod.fill_defaults(args, params, self.method)
        inputs_mod.check_types(args, params, self.method)
        self.loaded.check_inputs(self.method, args, params)
        if self.device != "cpu":
            args = to_device(args, self.device)
        return args, source

    def start(
        self,
        specs: list[str] | None = None,
        inputs_file: str | None = None,
        values: tuple | None = None,
    ) -> Machine:
        """Set inputs and put a fresh machine on the first node."""
        args, source = self.resolve_inputs(specs, inputs_file, values)
        self.inputs = args
        self.input_source = source
        if self.random is None:
            self.random = RandomState()
        return self._new_machine()

    def restart(self, values: tuple | None = None) -> Machine:
        """Back to the first node, with the same inputs unless new ones are given."""
        if values is not None:
            self.inputs = tuple(values)
        if self.inputs is None:
            return self.start()
        return self._new_machine()

    def _new_machine(self) -> Machine:
        """A machine on the first node, from the state every run starts from (random, module)."""
        self.random.restore()
        self.module_state.restore()
        self.machine = Machine(
            self.program,
            clone_value(self.inputs),
            method=self.method,
            inline=self.inline,
            grad=self.grad,
            budget=self.budget,
            breakpoints=self.breakpoints,
            module_state=self.module_state,
            params=self.params,
        )
        return self.machine

    # ------------------------------------------------------------ native runs

    def run_native(self, args: tuple | None = None) -> tuple[Any, float]:
        """``module.<method>(*inputs)`` (an archive) or ``ep.module()(*args, **kwargs)`` (a .pt2), on an
        independent copy of the program."""
        args = self.inputs if args is None else args
        if self.random is not None:
            self.random.restore()
        return self.loaded.run_native(self.method, clone_value(args), self.grad, self.params)

    def diff(self, eager_spec: str, eager_args: dict | None = None, eager_weights: str | None = None,
             rtol: float = 1e-5, atol: float = 1e-5) -> DiffResult:
        """Run the engine and the eager Python model on the same inputs; align and compare."""
        from engine.check import diff as diff_mod
        from engine.check import eager as eager_mod

        if self.machine is None:
            self.start()
        model = eager_mod.build_eager(eager_spec, eager_args)
        if eager_weights:
            from engine.inputs import _load_file

            state = _load_file(eager_weights)
            if not isinstance(state, dict):
                raise InputError(f"--eager-weights {eager_weights}: not a state dict")
            eager_mod.load_weights(model, state, eager_weights)
        else:
            eager_mod.load_weights(model, self.loaded.state_dict(), self.path)
        if self.device != "cpu":
            model = model.to(self.device)
        machine = self.restart()
        machine.run()
        # A trace records the path its grad mode took: without grad, attention and
        # encoder layers take fused fast paths the traced graph does not have.
        graph = self.program.root_graph(self.method)
        eager_grad = self.grad
        if graph.origin == "traced" and not _has_fast_paths(self.program.root_graph(self.method, inlined=True)):
            eager_grad = True
        self.random.restore()
        # The archive raising where the Python does not (or the reverse) is a difference to
        # explain; both raising says the input is at fault.
        run = eager_mod.run_eager(model, clone_value(self.inputs), eager_grad, keep_error=True)
        if machine.error is not None and run.error is not None:
            raise machine.error
        report = diff_mod.compare_runs(machine.timeline.records, machine.outputs, machine.error, run, rtol, atol)
        return DiffResult(report, eager_spec, machine, eager_grad, rtol, atol)

    def diff_against(self, other_path: str, rtol: float = 1e-5, atol: float = 1e-5) -> DiffResult:
        """Compare with a second archive (a scripted vs a traced export, two versions of one)."""
        from engine.check import diff as diff_mod
        from engine.check import eager as eager_mod

        if self.machine is None:
            self.start()
        other = Session(other_path, device=self.device, method=self.method, inline=self.inline,
                        grad=self.grad, budget=self.budget, seed=self.seed, libraries=self.libraries,
                        trust_pickles=self.trust_pickles, imports=self.imports)
        other.start(values=self.inputs)
        other.random = self.random
        theirs = other.restart()
        theirs.run()
        machine = self.restart()
        machine.run()
        if machine.error is not None and theirs.error is not None:
            raise machine.error
        run = eager_mod.run_from_records(theirs.timeline.records)
        run.outputs = theirs.outputs
        if theirs.error is not None:
            run.error = eager_mod.failure_of_archive(theirs.error)
        report = diff_mod.compare_runs(machine.timeline.records, machine.outputs, machine.error, run, rtol, atol)
        result = DiffResult(report, other_path, machine, self.grad, rtol, atol)
        result.other_outputs = theirs.outputs
        return result

    def run_and_compare(self, stage: Callable[[str], None] = lambda name: None) -> RunReport:
        """Run the engine to the end and torch natively on the same inputs.

        ``stage`` is told ``"engine"`` and ``"native"`` as each run starts
        (the CLI shows progress with it).
        """
        if self.machine is None:
            self.start()
        report = RunReport(
            model=self.path,
            method=self.method,
            view="inlined" if self.inline else "call-tree",
            methods=self.method_kinds(),
            inputs=list(self.inputs),
            input_source=self.input_source,
            imported_libraries=self.loaded.imported_libraries,
            format=self.format,
            native_call=self.loaded.native_call,
            symbolic_shapes=self.loaded.symbolic_shapes(),
        )
        machine = self.restart()
        said = len(self.program.messages.lines)
        stage("engine")
        t0 = time.perf_counter()
        machine.run()
        report.engine_seconds = time.perf_counter() - t0
        report.messages = self.program.messages.lines[said:]
        report.nodes_executed = len(machine.timeline)
        report.recorded_bytes = machine.timeline.nbytes  # records and kept tensors
        report.dropped_values = machine.timeline.dropped
        report.error = machine.error
        report.outputs = machine.outputs
        stage("native")
        try:
            native, report.native_seconds = self.run_native()
            report.native_outputs = native
        except Exception as exc:
            report.native_error = first_error_line(exc)
            native = None
        if machine.error is None and report.native_error is None:
            report.identical = values_equal(machine.outputs, native)
            report.max_abs_diff = max_abs_diff(machine.outputs, native)
        return report


@dataclass
class DiffResult:
    """``tsdebug diff``: the engine's run against the eager Python model."""

    report: Any  # engine.check.diff.DiffReport
    eager_spec: str
    machine: Machine
    eager_grad: bool
    rtol: float
    atol: float
    other_outputs: Any = None  # --against: the other program's outputs

    def to_json(self) -> dict:
        r = self.report
        return {
            "command": "diff",
            "eager": self.eager_spec,
            "eager_grad": self.eager_grad,
            "rtol": self.rtol,
            "atol": self.atol,
            "comparable_nodes": r.comparable,
            "aligned_nodes": len(r.aligned),
            "grouped_nodes": r.grouped,
            "coverage": round(r.coverage, 4),
            "outputs_close": r.outputs_close,
            "outputs": r.outputs_metrics.to_json() if r.outputs_metrics else None,
            "output_differences": [d.to_json() for d in r.output_differences],
            "archive_error": _error_json(r.archive_error),
            "eager_error": r.eager_error.to_json() if r.eager_error is not None else None,
            "first_divergence": r.first.to_json() if r.first else None,
            "parting": r.parting.to_json() if r.parting is not None else None,
            "eager_only_before_first": [{"op": o.name, "source": o.where, "module_path": o.module_path}
                                        for o in r.unaligned_eager_before_first],
            "graph_only_before_first": [{"node": x.node.id, "kind": x.node.kind,
                                         "source": str(x.node.source) if x.node.source else None}
                                        for x in r.unaligned_graph_before_first],
            "worst": [d.to_json() for d in r.worst()],
        }


def _error_json(err: Any) -> dict | None:
    """A ``ModelError`` as ``run --json`` and ``diff --json`` give it: message, node, kind, source."""
    if err is None:
        return None
    out = {"message": err.message}
    node = getattr(err, "node", None)
    if node is not None:
        out.update(node=node.id, kind=node.kind, source=str(node.source) if node.source else None)
    return out


def _has_fast_paths(graph) -> bool:
    fused = ("aten::_transformer_encoder_layer_fwd", "aten::_native_multi_head_attention")
    return any(n.kind in fused for n in graph.walk())


__all__ = ["Session", "RunReport", "DiffResult", "ModelError", "clone_value"]
