"""The torch.export format (``.pt2``): a safe loader, a converter into the IR, a leaf-op runner.

``LoadedExport`` is what the session holds: the program the machine runs,
the signature users give inputs for, inputs from the graph's ``val``
metadata or the saved example inputs, and the native run
(``ep.module()(*args, **kwargs)``) every check compares against.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
import zipfile
from typing import Any, Callable

import torch
import torch.utils._pytree as pytree

from engine.errors import InputError
from engine.formats.exported import archive as archive_mod
from engine.formats.exported.program import ExportedProgramCode, split_call
from engine.inputs import Param, random_tensor

FORMAT = "exported"


def _concrete(d: Any) -> int:
    """A dimension as an int: a symbol at its hint (the size the program was exported at)."""
    if isinstance(d, int):
        return d
    node = getattr(d, "node", None)
    for read in (lambda: node.hint, lambda: node.shape_env.size_hint(node.expr), lambda: int(d)):
        try:
            value = read()
            if value is not None:
                return int(value)
        except Exception:
            continue
    raise InputError(f"the exported program gives no size for the dynamic dimension {d}; give --input")


def _type_name(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "Tensor"
    if isinstance(value, (bool, torch.SymBool)):
        return "bool"
    if isinstance(value, (int, torch.SymInt)):
        return "int"
    if isinstance(value, (float, torch.SymFloat)):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, dict):
        return "Dict"
    if isinstance(value, list):
        return "List"
    if isinstance(value, tuple):
        return "Tuple"
    return "Any"


class LoadedExport:
    """One ``.pt2`` opened for debugging."""

    format = FORMAT
    native_call = "ep.module()(*inputs)"  # what the native run calls, in reports
    kind_text = "torch.export program"

    def __init__(self, path: str, *, device: str = "cpu", trust_pickles: bool = False,
                 load_namespace: Callable[[str], bool] | None = None, zf: zipfile.ZipFile | None = None):
        self.path = path
        self.device = device
        self.trust_pickles = trust_pickles
        self._load_namespace = load_namespace
        zf = zf or archive_mod.open_zip(path)
        with zf:
            self.archive = archive_mod.load(path, zf, device=device, trust_pickles=trust_pickles,
                                            load_namespace=load_namespace)
        self.ep = self.archive.program
        self.program = ExportedProgramCode(self.ep)
        self.imported_libraries = self.archive.imported_libraries
        self.traced_inputs: dict = {}

    # -- the signature

    def _user_vals(self) -> list:
        by_name = {n.name: n for n in self.ep.graph.nodes if n.op == "placeholder"}
        return [by_name[name].meta.get("val") if name in by_name else None
                for name in self.program.signature.user_inputs]

    def _structure(self) -> tuple[tuple, dict]:
        """(args, kwargs) with each user input leaf's ``val`` (fake tensors, symbols, constants)."""
        return pytree.tree_unflatten(self._user_vals(), self.program.in_spec)

    def params(self, method: str = "forward") -> list[Param]:
        args, kwargs = self._structure()
        names: list[str] = []
        try:
            names = list(self.ep.module_call_graph[0].signature.forward_arg_names or [])
        except Exception:
            names = []
        n = len(args)
        if len(names) < n:
            names = names + [f"arg{i}" for i in range(len(names), n)]
        out = [Param(names[i], _type_name(a), False) for i, a in enumerate(args)]
        out += [Param(k, _type_name(v), False) for k, v in kwargs.items()]
        return out

    # -- inputs

    def _from_vals(self, seed: int) -> tuple | None:
        leaves = []
        for i, val in enumerate(self._user_vals()):
            if isinstance(val, torch.Tensor):
                shape = tuple(_concrete(d) for d in val.shape)
                leaves.append(random_tensor(shape, val.dtype, seed, i))
            elif isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
                leaves.append(_concrete(val) if isinstance(val, torch.SymInt) else val.node.hint)
            elif val is None or isinstance(val, (int, float, bool, str)):
                leaves.append(val)
            else:
                return None
        args, kwargs = pytree.tree_unflatten(leaves, self.program.in_spec)
        return tuple(args) + tuple(kwargs.values())

    def stored_inputs(self, method: str, seed: int) -> tuple[tuple, str] | None:
        """Inputs from the graph's ``val`` shapes (dynamic dims at their hint), else the saved example inputs."""
        got = self._from_vals(seed)
        if got is not None:
            shapes = ", ".join(_describe(v) for v in self._user_vals())
            return got, f"shapes from the exported graph ({shapes})"
        example = self.archive.example_inputs
        if example is not None:
            args, kwargs = example
            return tuple(args) + tuple(kwargs.values()), "the example inputs saved in the archive"
        return None

    def infer_inputs(self, method: str, params: list[Param], seed: int) -> tuple | None:
        return None

    def check_inputs(self, method: str, args: tuple, params: list[Param]) -> None:
        """What ``ep.module()`` checks before it runs: the inputs' structure, and each tensor's shape
        against the exported one (static dims equal, dynamic dims in their range)."""
        from torch.export._unlift import _check_inputs_match

        call_args, kwargs = split_call(args, params, self.program.in_spec)
        try:
            flat = _check_inputs_match(call_args, kwargs, self.program.in_spec)
        except ValueError:
            _leaves, spec = pytree.tree_flatten((call_args, kwargs))
            raise InputError(f"the inputs do not have the structure the program was exported with "
                             f"({', '.join(str(p) for p in params)}); got {_short_spec(spec)}") from None
        try:
            self.ep._check_input_constraints(flat)
        except Exception as exc:
            first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            constants = self.symbolic_shapes()["constants"]
            given = dict(zip(self.program.signature.user_inputs, flat))
            baked = {k: v for k, v in constants.items() if k in given and given[k] != v}
            if baked:
                # torch.export specializes every int, float, bool and str input to the example's value
                said = ", ".join(f"{k}={v!r}" for k, v in baked.items())
                why = (f"the program was exported with {said} as {'constants' if len(baked) > 1 else 'a constant'}: torch.export fixes non-tensor inputs "
                       "to the example's value, so pass those values, or make the input a tensor before exporting")
            else:
                why = "a dimension exported as static must keep its size; export it with dynamic_shapes to vary it"
            raise InputError(f"the inputs do not fit the exported program: {first} ({why})") from None

    def symbolic_shapes(self) -> dict:
        """What the program knows of its dynamic dimensions: each user input's shape with its symbols,
        and the range of each symbol."""
        inputs, constants = {}, {}
        for name, val in zip(self.program.signature.user_inputs, self._user_vals()):
            if isinstance(val, torch.Tensor):
                inputs[name] = [d if isinstance(d, int) else str(d) for d in val.shape]
            elif isinstance(val, (int, float, bool, str)):
                constants[name] = val
        ranges = {sym: list(bounds) for sym, bounds in self.program.symbol_ranges().items()}
        return {"inputs": inputs, "ranges": ranges, "constants": constants}

    # -- runs

    def run_native(self, method: str, args: tuple, grad: bool, params: list[Param]) -> Any:
        """``ep.module()(*args, **kwargs)`` on a fresh copy of the program (runs write its buffers)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            copy = LoadedExport(self.path, device=self.device, trust_pickles=self.trust_pickles,
                                load_namespace=self._load_namespace)
            module = copy.ep.module()
        call_args, kwargs = split_call(args, params, self.program.in_spec)
        with torch.set_grad_enabled(grad), contextlib.redirect_stdout(io.StringIO()):
            t0 = time.perf_counter()
            out = module(*call_args, **kwargs)
            return out, time.perf_counter() - t0

    def state_dict(self) -> dict:
        out = dict(self.ep.state_dict)
        for k, v in (self.ep.constants or {}).items():
            if isinstance(v, torch.Tensor):
                out.setdefault(k, v)
        return out

    def method_kinds(self) -> dict[str, str]:
        return {"forward": "exported"}


def _short_spec(spec: Any) -> str:
    text = " ".join(str(spec).split())
    return text if len(text) < 160 else text[:159] + "…"



def _describe(val: Any) -> str:
    if isinstance(val, torch.Tensor):
        dims = ",".join(str(d) if isinstance(d, int) else f"{d}={_concrete(d)}" for d in val.shape)
        return f"{str(val.dtype).replace('torch.', '')}[{dims}]"
    return repr(val)


def is_exported_zip(names: list[str]) -> bool:
    return archive_mod.is_exported_zip(names)


__all__ = ["LoadedExport", "FORMAT", "is_exported_zip"]
