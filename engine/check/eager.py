"""The eager reference: rebuild the Python model, run it, record every op.

``--eager SPEC`` names ``package.module:name`` or ``path/to/file.py:name``,
where ``name`` is an ``nn.Module`` class or a function returning one.  The
code is imported with TorchScript disabled (what ``PYTORCH_JIT=0`` does), so
``@torch.jit.script`` helpers run as plain Python.  The run records each
top-level torch call (a ``TorchFunctionMode``) with its outputs, the module
it ran in (forward hooks) and the user's file and line.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from engine.sources import is_torch_frame, is_user_file
from engine import paths
from engine.errors import EagerError, TsdebugError, first_error_line
from engine.run.recipes import UNINITIALIZED
from engine.run.values import summarize_tensor

_HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class EagerOp:
    """One torch call of the eager run."""

    index: int
    name: str  # the torch function's name: conv2d, linear, relu, __add__ …
    module_path: str
    file: str | None
    line: int | None
    outputs: list  # tensors, cloned when the call returned
    #: ``file:line`` of each user frame of the call's stack where it is known (another program's records)
    chain: frozenset = frozenset()

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.file else "?"


@dataclass
class RunFailure:
    """The reference run raised: what, where in the user's code (the innermost line of theirs)."""

    kind: str  # the exception's class name
    message: str
    file: str | None = None
    line: int | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.file else "?"

    def to_json(self) -> dict:
        return {"kind": self.kind, "message": self.message, "source": self.where if self.file else None}


@dataclass
class EagerRun:
    ops: list[EagerOp] = field(default_factory=list)
    outputs: Any = None
    #: Set when the run raised part-way (``run_eager(..., keep_error=True)``): ``ops`` are those before it.
    error: RunFailure | None = None
    # module path -> what each of its forward calls returned: the modules whose forward ran
    module_outputs: dict[str, list] = field(default_factory=dict)
    #: Whether the run saw modules through their forward calls (hooks): a Python model's run
    #: does; another archive's records (``--against``) name modules as the graph does.
    by_forward: bool = False


def parse_eager_args(items: list[str]) -> dict[str, Any]:
    """``--eager-arg key=value``: Python literals where they parse, strings otherwise."""
    kwargs: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise EagerError(f"--eager-arg {item!r}: write key=value")
        key, _, text = item.partition("=")
        try:
            kwargs[key.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = text
    return kwargs


class _JitOff:
    """TorchScript off while the user's code is imported and built (like PYTORCH_JIT=0)."""

    def __enter__(self):
        import torch.jit._state as state

        self._was = state._enabled.enabled if hasattr(state._enabled, "enabled") else bool(state._enabled)
        state.disable()
        return self

    def __exit__(self, *exc):
        import torch.jit._state as state

        if self._was:
            state.enable()
        return False


def _import_target(spec: str) -> Any:
    if ":" not in spec:
        raise EagerError(f"--eager {spec!r}: write package.module:Name or path/to/file.py:Name")
    where, _, name = spec.rpartition(":")
    try:
        if where.endswith(".py") or os.path.sep in where:
            path = os.path.abspath(where)
            if not os.path.exists(path):
                raise EagerError(f"--eager {spec!r}: {where}: no such file")
            try:
                paths.read_regular(path, f"--eager {spec!r}:")  # a FIFO would block the import forever
            except TsdebugError as exc:
                raise EagerError(exc.message) from None
            mod_name = f"tsdebug_eager_{abs(hash(path))}"
            spec_obj = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec_obj)
            sys.modules[mod_name] = module
            sys.path.insert(0, os.path.dirname(path))
            try:
                spec_obj.loader.exec_module(module)
            finally:
                sys.path.remove(os.path.dirname(path))
        else:
            module = importlib.import_module(where)
    except EagerError:
        raise
    except SystemExit as exc:
        raise EagerError(f"--eager {spec!r}: importing {where} called sys.exit({exc.code!r})"
                         f"{_exit_place(exc)}; the model's code must not exit (guard it with "
                         "if __name__ == '__main__':)") from None
    except Exception as exc:
        raise EagerError(f"--eager {spec!r}: importing {where} failed: {type(exc).__name__}: {first_error_line(exc)}") from None
    if getattr(module, "__file__", None):
        paths.note_read(module.__file__)  # the eager model's source: no output may land on it
    target = getattr(module, name, None)
    if target is None:
        raise EagerError(f"--eager {spec!r}: {where} has no {name!r}")
    return target


def build_eager(spec: str, kwargs: dict[str, Any] | None = None) -> torch.nn.Module:
    """Import and construct the eager model (class or factory), TorchScript off."""
    kwargs = kwargs or {}
    with _JitOff():
        target = _import_target(spec)
        try:
            model = target(**kwargs)
        except SystemExit as exc:
            raise EagerError(f"--eager {spec!r}: {getattr(target, '__name__', spec)}(…) called "
                             f"sys.exit({exc.code!r}){_exit_place(exc)}; the model's code must not exit") from None
        except Exception as exc:
            raise EagerError(f"--eager {spec!r}: {getattr(target, '__name__', spec)}(…) raised "
                             f"{type(exc).__name__}: {first_error_line(exc)}") from None
    if not isinstance(model, torch.nn.Module):
        raise EagerError(f"--eager {spec!r} gave a {type(model).__name__}, not an nn.Module")
    return model


def _exit_place(exc: BaseException) -> str:
    """`` at FILE:LINE``: the user's innermost line the exit was raised from."""
    tb, place = exc.__traceback__, ""
    while tb is not None:
        path = tb.tb_frame.f_code.co_filename
        if is_user_file(path) and not path.startswith(_HERE):
            place = f" at {path}:{tb.tb_lineno}"
        tb = tb.tb_next
    return place


def load_weights(model: torch.nn.Module, state: dict, source: str) -> None:
    """Load weights strictly; a key mismatch is one clear line.

    An archive keeps every buffer, the non-persistent ones too (Hugging Face's
    ``position_ids``, GPT-2's causal ``bias``), which ``state_dict`` leaves out:
    those are copied into the eager model's buffers of the same name and shape,
    so that both sides run with the archive's values.
    """
    own = model.state_dict()
    buffers = dict(model.named_buffers())
    state = dict(state)
    for k in [k for k in state if k not in own and k in buffers]:
        value = state.pop(k)
        if tuple(value.shape) == tuple(buffers[k].shape) and value.dtype == buffers[k].dtype:
            with torch.no_grad():
                buffers[k].copy_(value)
        else:
            ours, theirs = (summarize_tensor(t, stats=False).short() for t in (value, buffers[k]))
            raise EagerError(f"weights do not fit the eager model: buffer {k} is {ours} in {source}, "
                             f"{theirs} in the eager model")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing in {source}: {', '.join(missing[:4])}" + (f" (+{len(missing) - 4})" if len(missing) > 4 else ""))
        if unexpected:
            parts.append(f"not in the eager model: {', '.join(unexpected[:4])}" + (f" (+{len(unexpected) - 4})" if len(unexpected) > 4 else ""))
        raise EagerError("weights do not fit the eager model: " + "; ".join(parts))
    shapes = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if shapes:
        k = shapes[0]
        raise EagerError(f"weights do not fit the eager model: {k} is {tuple(state[k].shape)} in {source}, "
                         f"{tuple(own[k].shape)} in the eager model")
    model.load_state_dict(state, strict=True)


def _user_frame() -> tuple[str | None, int | None]:
    f = sys._getframe(2)
    while f is not None:
        path = f.f_code.co_filename
        if not is_torch_frame(path) and not path.startswith(_HERE) and "/torch/" not in path:
            return path, f.f_lineno
        f = f.f_back
    return None, None


def _tensors(value: Any) -> list:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


_SKIP = frozenset({"size", "dim", "numel", "__bool__", "item", "tolist", "__len__", "__index__", "__int__",
                   "__float__", "__format__", "__repr__", "__get__", "__set__", "data_ptr", "stride", "is_contiguous",
                   "__hash__", "requires_grad_", "__iter__", "element_size"})


class _Recorder(TorchFunctionMode):
    def __init__(self, run: EagerRun, stack: list[str]):
        super().__init__()
        self.run = run
        self.stack = stack

    paused = False  # set while tsdebug's own hooks copy values

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", str(func))
        if self.paused or name in _SKIP or name in UNINITIALIZED:
            return out
        tensors = _tensors(out)
        if not tensors:
            return out
        file, line = _user_frame()
        self.paused = True
        try:
            copies = [t.detach().clone() for t in tensors]
        finally:
            self.paused = False
        self.run.ops.append(EagerOp(len(self.run.ops), name, self.stack[-1], file, line, copies))
        return out


def run_from_records(records: list) -> EagerRun:
    """Another archive's engine run, seen as a reference run (``--against``)."""
    from engine.check.diff import comparable_records

    run = EagerRun()
    for rec in comparable_records(records):
        file, line = _user_line(records, rec)
        tensors = [v for v in rec.outputs if isinstance(v, torch.Tensor)]
        if not tensors:
            continue
        from engine.check.places import chain_of_record

        run.ops.append(EagerOp(len(run.ops), rec.node.kind, rec.module_path, file, line, tensors[:1],
                               chain_of_record(rec)))
    return run


def failure_of_archive(error: Any) -> RunFailure:
    """Another archive's ``ModelError`` (``--against``), as a reference run's failure."""
    node = getattr(error, "node", None)
    src = node.source if node is not None else None
    return RunFailure("ModelError", error.message, src.file if src else None, src.line if src else None)


def _user_line(records: list, rec: Any) -> tuple[str | None, int | None]:
    """Where the user's Python made ``rec``, as an eager run would say: its own line, or for
    an op inside torch's Python (a scripted ``nn.Linear``) the line that called into it;
    (None, None) where the archive does not say (a call whose line is the archive's own code)."""
    src = rec.node.source
    while src is not None and src.file and is_torch_frame(src.file) and 0 <= rec.frame < len(records):
        rec = records[rec.frame]
        src = rec.node.source
    if src is None or not is_user_file(src.file):
        return None, None
    return src.file, src.line


CONVERSIONS = frozenset({"__bool__", "__index__", "__len__", "__int__", "__float__", "item", "tolist", "size",
                         "dim", "numel", "__get__"})


class _ConversionRecorder(TorchFunctionMode):
    """Every place the Python turns a tensor into a Python value (what tracing freezes)."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, str | None, int | None]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if name in CONVERSIONS:
            if name == "__get__":
                name = getattr(getattr(func, "__self__", None), "__name__", "") or "shape"
                if name not in ("shape", "ndim", "is_cuda", "device"):
                    return out
            file, line = _user_frame()
            self.seen.append((name, file, line))
        return out


def record_conversions(model: torch.nn.Module, args: tuple, grad: bool) -> list[tuple[str, str | None, int | None]]:
    """Run once and list (conversion, file, line) for each tensor-to-Python conversion."""
    rec = _ConversionRecorder()
    model.eval()
    try:
        with torch.set_grad_enabled(grad), rec:
            model(*args)
    except Exception as exc:
        raise EagerError(f"the eager model raised {type(exc).__name__}: {first_error_line(exc)}") from None
    return rec.seen


def _failure(exc: BaseException) -> RunFailure:
    """The exception and the innermost line of the user's code it came through (an ``assert``,
    or the call into torch that raised)."""
    file = line = None
    tb = exc.__traceback__
    while tb is not None:
        path = tb.tb_frame.f_code.co_filename
        if is_user_file(path) and not path.startswith(_HERE):
            file, line = path, tb.tb_lineno
        tb = tb.tb_next
    return RunFailure(type(exc).__name__, first_error_line(exc), file, line)


def run_eager(model: torch.nn.Module, args: tuple, grad: bool, keep_error: bool = False) -> EagerRun:
    """Run the model once, recording every top-level torch call.

    If the model raises: an ``EagerError``, or with ``keep_error`` the run so far with its
    ``error`` set (``tsdebug diff``: the Python raising where the archive does not is a
    difference to explain, not a failure of tsdebug)."""
    run = EagerRun()
    stack = [""]
    names = {m: n for n, m in model.named_modules()}
    # A module shared by several parents (CoaT's conv position encodings) runs under the
    # path it is called through, as in the archive's call tree: its parent's path and its
    # name there; its first registered name only when its caller does not hold it.
    by_path = dict(model.named_modules(remove_duplicate=False))
    children = {m: {c: n for n, c in m.named_children()} for m in names}
    handles = []
    recorder = _Recorder(run, stack)

    def pre(mod, _inp):
        parent = stack[-1]
        child = children.get(by_path.get(parent), {}).get(mod)
        if child is not None:
            stack.append(f"{parent}.{child}" if parent else child)
        else:
            stack.append(names.get(mod, "?"))

    def post(mod, _inp, out):
        path = stack.pop()
        recorder.paused = True
        try:
            run.module_outputs.setdefault(path, []).append([t.detach().clone() for t in _tensors(out)])
        finally:
            recorder.paused = False

    for m in names:
        if m is not model:
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
    model.eval()
    run.by_forward = True
    try:
        with torch.set_grad_enabled(grad), recorder:
            run.outputs = model(*args)
    except SystemExit as exc:  # the user's forward ending the process: its failure, not a pass
        raise EagerError(f"the eager model's forward called sys.exit({exc.code!r}){_exit_place(exc)}; "
                         "the model's code must not exit") from None
    except Exception as exc:
        if not keep_error:
            raise EagerError(f"the eager model raised {type(exc).__name__}: {first_error_line(exc)}") from None
        run.error = _failure(exc)
        del stack[1:]  # the modules the exception left
    finally:
        for h in handles:
            h.remove()
    return run
