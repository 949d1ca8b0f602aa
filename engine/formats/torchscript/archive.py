"""Open a file and tell a TorchScript archive from what people mistake for one.

Nothing here unpickles arbitrary objects: archives go through torch's
TorchScript importer, and the pickles we read ourselves (to identify a file,
or to read a traced archive's example-input shapes) go through restricted
unpicklers that build nothing but plain data.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import pickle
import pickletools
import re
import sys
import tempfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.errors import ArchiveError
from engine.formats import read_member, read_member_prefix

#: Bounds on what is read of one member to explain a file (a code file, the traced inputs' specs).
MAX_CODE_BYTES = 8 << 20
MAX_TRACED_INPUTS_BYTES = 64 << 20
MAX_PICKLE_BYTES = 256 << 20

# TorchScript is deprecated since torch 2.11 (a FutureWarning from 2.14: "`torch.jit.fork` is
# deprecated", also raised by a user's Python model that diff and lint run); noise inside tsdebug.
for _category in (DeprecationWarning, FutureWarning):
    warnings.filterwarnings("ignore", category=_category, module=r"torch\.jit.*")
    warnings.filterwarnings("ignore", message=r".*TorchScript.*", category=_category)
    warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=_category)
del _category


@dataclass(frozen=True)
class TensorSpec:
    """Shape, stride and dtype of an example input a traced archive remembers."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    stride: tuple[int, ...] | None = None
    device: str = "cpu"

    def __str__(self) -> str:
        return f"{str(self.dtype).replace('torch.', '')}[{','.join(map(str, self.shape))}]"


@dataclass
class Archive:
    """A loaded TorchScript archive."""

    path: str
    module: torch.jit.ScriptModule  # the Python wrapper, for native runs
    cu: Any  # the compilation unit, kept alive for function callees
    traced_inputs: dict[str, list[Any]] = field(default_factory=dict)
    imported_libraries: list[str] = field(default_factory=list)
    device: str = "cpu"

    @property
    def cpp(self) -> torch._C.ScriptModule:
        return self.module._c


# ----------------------------------------------------------------- identifying


def _zip_prefix(names: list[str]) -> str:
    first = names[0] if names else ""
    return first.split("/", 1)[0] + "/" if "/" in first else ""


def _pickle_globals(data: bytes, limit: int = 2000) -> list[str]:
    """The ``module name`` pairs a pickle would import, read without running it."""
    found: list[str] = []
    strings: list[str] = []
    try:
        for i, (op, arg, _pos) in enumerate(pickletools.genops(data)):
            if i > limit:
                break
            if op.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(arg)
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:
        pass
    return found


def _describe_torch_save(data_pkl: bytes) -> str:
    globs = _pickle_globals(data_pkl)
    scripted = next((g for g in globs if g.startswith("__torch__.")), None)
    if scripted is not None:
        # torch.jit.save writes the module's data before its code: a save that
        # failed (a Python call it cannot export) or was cut short leaves this
        return (
            f"an incomplete TorchScript archive: it holds the data of {scripted} but not its code "
            "(torch.jit.save stopped before writing it, after an error or an interruption); "
            "fix what torch.jit.save reported and save the model again"
        )
    module_classes = [
        g for g in globs
        if g.startswith("torch.nn.modules.") or (not g.startswith(("torch.", "collections.", "builtins.", "_codecs.", "numpy.")))
    ]
    if module_classes:
        return (
            f"a whole nn.Module ({module_classes[0]}) pickled with torch.save, not a TorchScript archive; "
            "export it with torch.jit.save(torch.jit.trace(model, example)) or torch.jit.script(model)"
        )
    if any(g.endswith("OrderedDict") for g in globs) or data_pkl[2:3] == b"}":
        return (
            "a state dict (weights only) saved with torch.save, not a TorchScript archive; "
            "load it into your model and save torch.jit.trace(model, example) or torch.jit.script(model) with torch.jit.save"
        )
    return (
        "a file saved with torch.save, not a TorchScript archive; "
        "save the model with torch.jit.save(torch.jit.script(model), path) or torch.jit.trace"
    )


def identify(path: str) -> None:
    """Raise ``ArchiveError`` with a one-line explanation unless ``path`` looks like TorchScript."""
    if not os.path.exists(path):
        raise ArchiveError(f"{path}: no such file")
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "data.pkl")) and os.path.isdir(os.path.join(path, "code")):
            raise ArchiveError(
                f"{path} is an unpacked TorchScript archive (a directory); zip it back or give the original .pt file"
            )
        raise ArchiveError(f"{path} is a directory; give the TorchScript file (.pt) inside it")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as exc:
        raise ArchiveError(f"{path}: cannot read ({exc.strerror})") from None
    if size == 0:
        raise ArchiveError(f"{path} is empty (0 bytes); the save or copy did not finish")
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        if not zipfile.is_zipfile(path):
            raise ArchiveError(
                f"{path} is a truncated or corrupt zip archive ({size} bytes, no end-of-archive record); "
                "the save or copy was cut short: save or copy it again"
            )
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
                prefix = _zip_prefix(names)
                base = {n[len(prefix):] if n.startswith(prefix) else n for n in names}
                if any(n.endswith("archive_format") for n in names) or any(
                    "serialized_exported_program" in n or n.startswith(prefix + "models/") for n in names
                ):
                    raise ArchiveError(
                        f"{path} is a torch.export program (.pt2), not a TorchScript archive; "
                        "tsdebug reads archives made by torch.jit.save (torch.jit.trace or torch.jit.script)"
                    )
                has_code = any(n.startswith("code/") for n in base)
                if "data.pkl" in base and not has_code:
                    raise ArchiveError(f"{path} is {_describe_torch_save(read_member_prefix(z, prefix + 'data.pkl'))}")
                if not has_code:
                    raise ArchiveError(
                        f"{path} is a zip file but not a TorchScript archive (no code/ inside); "
                        "save the model with torch.jit.save"
                    )
                # torch.jit.load inflates these whole, in memory, at the size the zip claims:
                # a bomb is refused here (a member lying about its size fails testzip below)
                for info in z.infolist():
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise ArchiveError(f"{path} holds a symbolic link ({info.filename}), which torch.jit.save "
                                           "never writes; the file was not made by torch.jit.save")
                    inner = info.filename[len(prefix):]
                    if (inner.endswith(".pkl") or inner.startswith("code/")) and info.file_size > MAX_PICKLE_BYTES:
                        raise ArchiveError(
                            f"{path}: the entry {info.filename} inflates to {info.file_size} bytes, more than "
                            f"a TorchScript archive's code or pickles hold (tsdebug reads up to {MAX_PICKLE_BYTES}); "
                            "the file is damaged or not made by torch.jit.save")
                try:
                    bad = z.testzip()
                except (zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
                    raise ArchiveError(f"{path} is corrupt: a compressed entry cannot be decompressed "
                                       f"({first_line(exc)}); save or copy it again") from None
                if bad is not None:
                    raise ArchiveError(f"{path} is corrupt: the entry {bad} fails its checksum; save or copy it again")
                _check_debug_pickles(path, z, prefix)
        except zipfile.BadZipFile as exc:
            raise ArchiveError(f"{path} is a corrupt zip archive ({exc}); save or copy it again") from None
        return
    if head[:1] == b"\x80" and b"\x8a\x0a" in head[:16] or head.startswith(b"\x80\x02\x8a"):
        raise ArchiveError(
            f"{path} was saved with torch.save in the legacy (non-zip) format, not a TorchScript archive; "
            "save the model with torch.jit.save(torch.jit.script(model), path)"
        )
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise ArchiveError(
            f"{path} is a Python pickle, not a TorchScript archive; save the model with torch.jit.save"
        )
    if head[:1] == b"\x08" and (b"pytorch" in head or b"onnx" in head.lower() or b"ai.onnx" in head):
        raise ArchiveError(
            f"{path} is an ONNX model, not a TorchScript archive; tsdebug reads archives made by torch.jit.save"
        )
    if path.endswith(".onnx"):
        raise ArchiveError(f"{path} looks like an ONNX model, not a TorchScript archive")
    raise ArchiveError(
        f"{path} is not a TorchScript archive (not a zip file; starts with {head[:8]!r}); "
        "give a file saved with torch.jit.save"
    )


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_debug_pickles(path: str, z: zipfile.ZipFile, prefix: str) -> None:
    """Each ``code/*.debug_pkl`` (the source ranges torch reads on load) is a pickle that parses.

    torch's own unpickler fails on a corrupt one with a bare "Unknown opcode";
    read here without building anything, it is named.
    """
    for name in z.namelist():
        if not (name.startswith(prefix + "code/") and name.endswith(".debug_pkl")):
            continue
        try:
            for _ in pickletools.genops(z.read(name)):
                pass
        except Exception as exc:
            raise ArchiveError(f"{path} is corrupt: its debug information {name[len(prefix):]} is not a "
                               f"readable pickle ({first_line(exc)[:60]}); save or copy the archive again") from None


# ------------------------------------------------------------------ loading

def _holds_code(path: str, needle: bytes) -> bool:
    """Whether any code file in the archive contains ``needle`` (to explain a load failure)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(needle in read_member_prefix(z, n, MAX_CODE_BYTES)
                       for n in z.namelist() if "/code/" in n and n.endswith(".py"))
    except Exception:
        return False


_UNKNOWN_OP = re.compile(r"Unknown (?:builtin op|type name|type): '?([A-Za-z_][\w.]*)::([\w.]+)'?")
_UNKNOWN_OP2 = re.compile(r"\b([a-z_][a-z0-9_]*)::([A-Za-z_]\w*)\b")


def _missing_op(message: str) -> tuple[str, str] | None:
    m = _UNKNOWN_OP.search(message)
    if m:
        return m.group(1), m.group(2).rstrip(".")  # torch ends the sentence with a period
    if "Unknown builtin op" in message or "Unknown type" in message:
        m = _UNKNOWN_OP2.search(message)
        if m:
            return m.group(1), m.group(2)
    return None


def _import_ir(path: str, device: str):
    cu = torch._C.CompilationUnit()
    with _cpp_warnings_filtered():
        cpp = torch._C.import_ir_module(cu, path, torch.device(device), {}, False)
    return cu, cpp


@contextlib.contextmanager
def _cpp_warnings_filtered():
    """Keep torch's C++ deprecation warnings (printed straight to fd 2) off the user's terminal.

    Loading an archive with quantized constants prints one such line from
    C++, where ``warnings`` cannot catch it.  Other lines written meanwhile
    are passed on.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = [ln for ln in sink.read().decode(errors="replace").splitlines(keepends=True)
                    if not _CPP_DEPRECATION.search(ln)]
            if kept:
                sys.stderr.write("".join(kept))


_CPP_DEPRECATION = re.compile(r"^\[W.*\] Warning: .*\b(?:is|are) deprecated\b")


def check_device(device: str) -> None:
    """``--device``: one torch knows, and that this machine has."""
    try:
        torch.device(device)
    except Exception:
        raise ArchiveError(f"--device {device!r} is not a device torch knows (try cpu or cuda:0)") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ArchiveError(f"--device {device}: this machine has no CUDA device; use --device cpu")
    kind = torch.device(device).type
    if kind == "meta":
        raise ArchiveError(f"--device {device}: meta tensors hold no values, so there is nothing to step or "
                           "compare; use --device cpu (or cuda)")
    if kind not in ("cpu", "cuda"):
        backend = getattr(torch, kind, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise ArchiveError(f"--device {device}: this machine has no {kind} device; use --device cpu")


def load_libraries(libraries: tuple[str, ...], imports: tuple[str, ...] = ()) -> None:
    """``--library``: operator libraries the program needs, loaded before it is; ``--import``: the Python
    packages that register its operators, imported first."""
    for name in imports:
        try:
            _import_quietly(name)
        except (Exception, SystemExit) as exc:
            raise ArchiveError(f"--import {name}: cannot import it ({type(exc).__name__}: {first_line(exc)})") from None
    from engine import paths

    for lib in libraries:
        if not os.path.exists(lib):
            raise ArchiveError(f"--library {lib}: no such file")
        try:
            paths.read_regular(lib, "--library")
        except Exception as exc:
            raise ArchiveError(str(exc)) from None
        try:
            torch.ops.load_library(lib)
        except Exception as exc:
            raise ArchiveError(f"--library {lib}: cannot load ({str(exc).splitlines()[0]})") from None


#: Operator namespaces and the packages known to register them: imported without being asked.  Any
#: other namespace an archive names is only a name (an archive naming ``this`` must not import ``this``).
KNOWN_OP_PACKAGES = {
    "torchvision": "torchvision", "torchaudio": "torchaudio", "torchtext": "torchtext", "torchrec": "torchrec",
    "fbgemm": "fbgemm_gpu", "detectron2": "detectron2", "mmcv": "mmcv", "torch_scatter": "torch_scatter",
    "torch_sparse": "torch_sparse", "torch_cluster": "torch_cluster", "torchao": "torchao",
    "xformers": "xformers", "torch_tensorrt": "torch_tensorrt", "tensorrt": "torch_tensorrt",
}

#: An installed package declares the namespaces it registers as entry points in this group
#: (``namespace = "package"``), and is then imported like the known ones.
ENTRY_POINT_GROUP = "tsdebug.op_namespaces"


def package_for_namespace(namespace: str) -> str | None:
    """The package known (or declared) to register ``namespace``; None for any other."""
    if namespace in KNOWN_OP_PACKAGES:
        return KNOWN_OP_PACKAGES[namespace]
    try:
        from importlib import metadata

        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == namespace:
                return ep.value
    except Exception:
        return None
    return None


def import_namespace(namespace: str) -> bool:
    """Import the package known to register the operator namespace ``namespace``; True when it did."""
    package = package_for_namespace(namespace)
    if package is None or importlib.util.find_spec(package) is None:
        return False
    try:
        _import_quietly(package)
        return True
    except (Exception, SystemExit):
        return False


def _import_quietly(name: str) -> None:
    """Import a package the user named; what it prints is not written over ``--json`` output."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        importlib.import_module(name)


def load(path: str, device: str = "cpu", libraries: tuple[str, ...] = (), imports: tuple[str, ...] = ()) -> Archive:
    """Load a TorchScript archive for the engine; errors are ``ArchiveError`` one-liners."""
    identify(path)
    check_device(device)
    load_libraries(libraries, imports)
    imported: list[str] = list(imports)
    tried: set[str] = set()
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cu, cpp = _import_ir(path, device)
            break
        except Exception as exc:
            message = str(exc)
            missing = _missing_op(message)
            if missing is not None:
                namespace, op = missing
                if namespace not in tried:
                    tried.add(namespace)
                    if import_namespace(namespace):
                        imported.append(namespace)
                        continue
                raise ArchiveError(
                    f"{path} needs the operator {namespace}::{op}, which is not loaded: "
                    f"pass --import PACKAGE, the Python package that registers {namespace} (tsdebug imports "
                    "only packages known to register operators), or --library PATH/TO/lib.so"
                ) from None
            first = next((ln.strip() for ln in message.splitlines() if ln.strip()), type(exc).__name__)
            if "PytorchStreamReader" in message or "failed finding central directory" in message:
                raise ArchiveError(f"{path} is a corrupt TorchScript archive ({first}); save or copy it again") from None
            if _holds_code(path, b"ConstantMKLDNNTensor"):
                raise ArchiveError(
                    f"{path} was saved after torch.jit.optimize_for_inference, whose MKLDNN weights are not "
                    "written to the file, so torch.jit.load cannot read it either; save the model before "
                    "optimize_for_inference (torch.jit.freeze alone is fine)"
                ) from None
            raise ArchiveError(f"torch.jit.load cannot read {path} either ({first}); re-export it with this "
                               f"torch ({torch.__version__.split('+')[0]})") from None
    with deep_enough(_module_depth(cpp), path):
        module = torch.jit._recursive.wrap_cpp_module(cpp)  # recursive: a frame group per level
    return Archive(
        path=path,
        module=module,
        cu=cu,
        traced_inputs=read_traced_inputs(path),
        imported_libraries=imported,
        device=device,
    )


#: How deep modules may nest: torch's module wrapper recurses (a frame group per level, given room
#: here), and a few of tsdebug's passes over module clusters (render's scene) recurse once per level
#: under Python's default limit of 1000 frames.
MAX_DEPTH = 900


def _module_depth(cpp: Any) -> int:
    """How deep the module tree nests, counted without recursion."""
    depth, frontier = 0, [cpp]
    while frontier:
        depth += 1
        if depth > MAX_DEPTH:
            return depth
        frontier = [child for m in frontier for _, child in torch._C.ModuleDict(m).items()]
    return depth


@contextlib.contextmanager
def deep_enough(depth: int, path: str):
    """Room on Python's stack for ``depth`` nested levels (torch's module wrapper recurses per level);
    past ``MAX_DEPTH``, a one-line error instead of a RecursionError."""
    if depth > MAX_DEPTH:
        raise ArchiveError(f"{path} nests modules or calls more than {MAX_DEPTH} deep; tsdebug steps programs "
                           f"up to {MAX_DEPTH} levels deep")
    need = 1000 + 40 * depth
    was = sys.getrecursionlimit()
    if need > was:
        sys.setrecursionlimit(need)
    try:
        yield
    finally:
        if need > was:
            sys.setrecursionlimit(was)


def load_native_copy(archive: Archive) -> torch.jit.ScriptModule:
    """A second, independent copy of the archive for the native reference run.

    Runs mutate module state (``SetAttr``), so the engine and the native run
    must not share a module.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with deep_enough(_module_depth(archive.cpp), archive.path):
            return torch.jit.load(archive.path, map_location=archive.device)


# ---------------------------------------------------------- traced_inputs.pkl

_DTYPE_OF_STORAGE = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
}


class _StoragePlaceholder:
    def __init__(self, dtype: torch.dtype, location: str):
        self.dtype = dtype
        self.location = location


def _rebuild_tensor_spec(storage, offset, size, stride, *rest):
    return TensorSpec(tuple(size), storage.dtype, tuple(stride), storage.location)


class _SpecUnpickler(pickle.Unpickler):
    """Builds ``TensorSpec``s from tensor records; refuses every other class."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_spec
        if (module, name) == ("torch.jit._pickle", "restore_type_tag"):
            return lambda value, _tag: value
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch" and name in _DTYPE_OF_STORAGE:
            return _DTYPE_OF_STORAGE[name]
        raise pickle.UnpicklingError(f"refusing {module}.{name}")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel)
        _, storage_type, _key, location, _numel = pid
        dtype = storage_type if isinstance(storage_type, torch.dtype) else torch.float32
        return _StoragePlaceholder(dtype, location)


def read_traced_inputs(path: str) -> dict[str, list[Any]]:
    """Example-input specs per method from ``traced_inputs.pkl`` ({} when absent)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("/traced_inputs.pkl") and n.count("/") == 1]
            if not names:
                return {}
            data = read_member(z, names[0], MAX_TRACED_INPUTS_BYTES)
    except Exception:
        return {}
    try:
        result = _SpecUnpickler(io.BytesIO(data)).load()
    except Exception:
        return {}
    return result if isinstance(result, dict) else {}
