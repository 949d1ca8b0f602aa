"""The TorchScript format (``.pt`` from ``torch.jit.save``): loader, converter into the IR, leaf-op runner.

``LoadedArchive`` is what the session holds: the program the machine runs,
the method signatures users give inputs for, the shapes a trace stored or
inputs inferred from the graph, and the native run (``module.forward(*x)``)
every check compares against.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from typing import Any

import torch

from engine import inputs as inputs_mod
from engine.formats.torchscript import archive as archive_mod
from engine.formats.torchscript.program import Program

FORMAT = "torchscript"


class LoadedArchive:
    """One TorchScript archive opened for debugging."""

    format = FORMAT
    native_call = "module(*inputs)"  # what the native run calls, in reports
    kind_text = "TorchScript archive"

    def __init__(self, path: str, *, device: str = "cpu", libraries: tuple[str, ...] = (),
                 imports: tuple[str, ...] = ()):
        self.path = path
        self.device = device
        self.archive = archive_mod.load(path, device=device, libraries=libraries, imports=imports)
        self.program = Program(self.archive.cpp, self.archive.cu, frozenset(self.archive.traced_inputs))
        self.imported_libraries = self.archive.imported_libraries
        self.traced_inputs = self.archive.traced_inputs

    def params(self, method: str) -> list[inputs_mod.Param]:
        return inputs_mod.signature(self.archive.cpp._get_method(method))

    def stored_inputs(self, method: str, seed: int) -> tuple[tuple, str] | None:
        stored = self.archive.traced_inputs.get(method)
        if not stored:
            return None
        args = inputs_mod.from_specs(list(stored), seed)
        return args, "shapes stored by torch.jit.trace (" + ", ".join(str(s) for s in stored) + ")"

    def infer_inputs(self, method: str, params: list, seed: int) -> tuple | None:
        return inputs_mod.infer_inputs(self.program, method, params, seed)

    def check_inputs(self, method: str, args: tuple, params: list) -> None:
        """Nothing beyond the parameter types: an archive's graph keeps no shapes."""

    def symbolic_shapes(self) -> dict | None:
        return None  # shapes in an archive's graph types are erased by save and load

    def run_native(self, method: str, args: tuple, grad: bool, params: list) -> tuple[Any, float]:
        """``module.<method>(*args)`` on an independent copy of the archive (runs change module state)."""
        module = archive_mod.load_native_copy(self.archive)
        fn = getattr(module, method)
        # The model's own warnings: the engine's run keeps them (program.messages);
        # the terminal belongs to tsdebug.
        with torch.set_grad_enabled(grad), warnings.catch_warnings(record=True), \
                contextlib.redirect_stdout(io.StringIO()):  # TorchScript's print writes to sys.stdout
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            out = fn(*args)
            return out, time.perf_counter() - t0

    def state_dict(self) -> dict:
        return dict(self.archive.module.state_dict())

    def method_kinds(self) -> dict[str, str]:
        from engine.errors import TsdebugError

        kinds = {}
        for name in sorted(self.program.method_names()):
            try:
                kinds[name] = self.program.root_graph(name).origin
            except TsdebugError:
                kinds[name] = "unknown"
        return kinds


__all__ = ["LoadedArchive", "FORMAT"]
