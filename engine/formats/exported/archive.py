"""Open a ``torch.export.save`` archive (``.pt2``) without running anything it holds.

A ``.pt2`` is a zip: the program's graph and signature are JSON
(``models/<name>.json``), ordinary weights and tensor constants raw bytes
with a JSON config.  Some parts are pickles: tensor subclasses among the
weights, TorchBind and opaque objects among the constants, and the example
inputs.  torch's own loader unpickles them with ``weights_only=False`` when
the restricted unpickler refuses; here the weights and constants that are
pickles are refused unless the user trusts the file (``--trust-pickles``),
and the example inputs are read with ``weights_only=True`` only.

AOTInductor packages and ExecuTorch programs look alike from outside; each
gets its own one-line explanation.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.errors import ArchiveError

#: The largest JSON member read (a graph of 100,000 nodes is about 200 MB).
MAX_JSON_BYTES = 1 << 30


@dataclass
class ExportedArchive:
    """A loaded ``.pt2``: the ExportedProgram and what loading it found."""

    path: str
    program: Any  # torch.export.ExportedProgram
    model_name: str
    example_inputs: tuple | None  # (args, kwargs) as saved, when they load without pickles
    example_inputs_note: str = ""  # why there are none
    trusted_parts: list[str] = field(default_factory=list)  # pickled parts loaded because the user trusts the file
    imported_libraries: list[str] = field(default_factory=list)
    device: str = "cpu"


def is_exported_zip(names: list[str]) -> bool:
    """Whether a zip's member names are those of ``torch.export.save`` (or of another PT2 package)."""
    return any(n.endswith("/archive_format") or n == "archive_format" for n in names)


def _prefix(names: list[str]) -> str:
    for n in names:
        if n.endswith("/archive_format"):
            return n[: -len("archive_format")]
    return ""


def identify(path: str, names: list[str]) -> str:
    """The model name inside a PT2 zip, or ``ArchiveError`` with the one line that says what the file is."""
    prefix = _prefix(names)
    inner = [n[len(prefix):] for n in names if n.startswith(prefix)]
    models = sorted(n[len("models/"):-len(".json")] for n in inner
                    if n.startswith("models/") and n.endswith(".json") and n.count("/") == 1)
    if any(n.startswith("data/aotinductor/") for n in inner) and not models:
        raise ArchiveError(
            f"{path} is an AOTInductor package (compiled native code, no graph to step); tsdebug reads the "
            "ExportedProgram: save it with torch.export.save(ep, 'model.pt2') before "
            "torch._inductor.aoti_compile_and_package, and open that file")
    if any(n.startswith("data/executorch/") for n in inner) and not models:
        raise ArchiveError(f"{path} is an ExecuTorch package, not a torch.export program; open the .pt2 that "
                           "torch.export.save wrote before lowering it")
    if not models:
        raise ArchiveError(f"{path} is a PT2 package without an exported program (no models/*.json inside); "
                           "save the program with torch.export.save(ep, path)")
    return "model" if "model" in models else models[0]


def is_executorch(head: bytes) -> bool:
    """An ExecuTorch program (``.pte``): a flatbuffer whose file identifier is ``ET`` and two digits."""
    return len(head) >= 8 and head[4:6] == b"ET" and head[6:8].isdigit()


class _Reader:
    """Members of the zip by their name inside the archive's folder, each read up to a bound."""

    def __init__(self, path: str, zf: zipfile.ZipFile):
        self.path = path
        self.zf = zf
        self.names = zf.namelist()
        self.prefix = _prefix(self.names)
        self.infos = {i.filename[len(self.prefix):]: i for i in zf.infolist() if i.filename.startswith(self.prefix)}

    def has(self, name: str) -> bool:
        return name in self.infos

    def read(self, name: str, limit: int | None = None) -> bytes:
        info = self.infos.get(name)
        if info is None:
            raise ArchiveError(f"{self.path} is an incomplete torch.export program ({name} is missing); "
                               "save it again with torch.export.save")
        if limit is not None and info.file_size > limit:
            raise ArchiveError(f"{self.path}: {name} is {info.file_size} bytes, more than tsdebug reads "
                               f"({limit}); the file is damaged or not made by torch.export.save")
        try:
            return self.zf.read(info)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise ArchiveError(f"{self.path} is corrupt: {name} cannot be read ({exc}); save or copy it again") \
                from None
        except Exception as exc:  # zlib.error and the like
            raise ArchiveError(f"{self.path} is corrupt: {name} cannot be read ({type(exc).__name__}: {exc}); "
                               "save or copy it again") from None

    def json(self, name: str) -> Any:
        data = self.read(name, MAX_JSON_BYTES)
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArchiveError(f"{self.path} is corrupt: {name} is not valid JSON ({exc}); save it again") from None


def _serde():
    """torch's (de)serializer for ExportedPrograms, or one line saying what this torch lacks."""
    try:
        from torch._export.serde import schema
        from torch._export.serde import serialize
        from torch._export.serde.serialize import (ExportedProgramDeserializer, deserialize_scalar_type,
                                                   deserialize_size, deserialize_storage_offset, deserialize_stride)

        return schema, serialize, ExportedProgramDeserializer, deserialize_scalar_type, deserialize_size, \
            deserialize_stride, deserialize_storage_offset
    except Exception as exc:  # an older or newer torch moved it
        raise ArchiveError(f"this torch ({torch.__version__}) cannot read torch.export programs: its "
                           f"torch._export.serde is missing or changed ({exc}); install torch 2.6 or newer") from None


def _tensor_from_raw(reader: _Reader, folder: str, meta: Any, serde: tuple, raw_cache: dict) -> torch.Tensor:
    """A weight or constant stored as raw bytes, viewed as its config says (views share one payload)."""
    schema, _s, _d, deserialize_scalar_type, deserialize_size, deserialize_stride, deserialize_storage_offset = serde
    tensor_meta = meta.tensor_meta
    if tensor_meta is None:
        raise ArchiveError(f"{reader.path} is corrupt: {meta.path_name} has no tensor description")
    dtype = deserialize_scalar_type(tensor_meta.dtype)
    flat = raw_cache.get(meta.path_name)
    if flat is None:
        data = reader.read(folder + meta.path_name)
        size = torch._utils._element_size(dtype)
        if len(data) % size:
            raise ArchiveError(f"{reader.path} is corrupt: {meta.path_name} holds {len(data)} bytes, not a "
                               f"whole number of {dtype} elements")
        # into memory torch allocated (aligned as its kernels expect: a tensor over the bytes read
        # can sit at any address, and some kernels then sum in another order than for torch's own load)
        flat = torch.empty(len(data) // size, dtype=dtype)
        if data:
            flat.view(torch.uint8).copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        if tensor_meta.requires_grad:
            # as torch's loader does: kernels choose their path by requires_grad even under no_grad
            # (matmul folds a 3-D input into one mm only when no operand requires grad), so the
            # bits of a run depend on it
            flat.requires_grad_(True)
        raw_cache[meta.path_name] = flat
    sizes = deserialize_size(tensor_meta.sizes)
    strides = deserialize_stride(tensor_meta.strides)
    offset = deserialize_storage_offset(tensor_meta.storage_offset)
    if flat.numel() == 0:
        return torch.zeros(sizes, dtype=dtype, requires_grad=bool(tensor_meta.requires_grad))
    needed = offset + sum((s - 1) * st for s, st in zip(sizes, strides) if s > 0) + 1 if all(sizes) else 0
    if needed > flat.numel() or offset < 0 or any(s < 0 for s in sizes):
        raise ArchiveError(f"{reader.path} is corrupt: {meta.path_name} is smaller than the tensor its config "
                           f"describes ({list(sizes)})")
    with torch.enable_grad():  # a view of a tensor that requires grad, as torch's loader makes it
        return torch.as_strided(flat, sizes, strides, offset)


def _trusted_pickle(reader: _Reader, folder: str, what: str, fqn: str, path_name: str, trust: bool,
                    trusted: list[str], weights_only_first: bool = True) -> Any:
    """A pickled part: loaded with torch's restricted unpickler, else only when the user trusts the file."""
    data = reader.read(folder + path_name)
    if weights_only_first:
        try:
            return torch.load(io.BytesIO(data), weights_only=True)
        except Exception:
            pass
    if not trust:
        raise ArchiveError(
            f"{reader.path} holds {what} {fqn!r} as a Python pickle, which could run code when loaded; "
            "open it with --trust-pickles if you trust where the file came from")
    trusted.append(f"{what} {fqn}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(io.BytesIO(data), weights_only=False)


def _load_weights(reader: _Reader, model: str, serde: tuple, trust: bool, trusted: list[str]) -> dict:
    schema, serialize = serde[0], serde[1]
    config_name = f"data/weights/{model}_weights_config.json"
    if reader.has(f"data/weights/{model}.pt"):  # the legacy format: one pickled state dict
        return _trusted_pickle(reader, "data/weights/", "its weights", model, f"{model}.pt", trust, trusted)
    if not reader.has(config_name):
        return {}
    config = serialize._dict_to_dataclass(schema.PayloadConfig, reader.json(config_name))
    raw: dict = {}
    state: dict[str, torch.Tensor] = {}
    for fqn, meta in config.config.items():
        if meta.use_pickle:
            state[fqn] = _trusted_pickle(reader, "data/weights/", "the weight", fqn, meta.path_name, trust, trusted,
                                         weights_only_first=False)
            continue
        t = _tensor_from_raw(reader, "data/weights/", meta, serde, raw)
        if meta.is_param:
            t = torch.nn.Parameter(t, requires_grad=meta.tensor_meta.requires_grad)
        state[fqn] = t
    return state


def _load_constants(reader: _Reader, model: str, serde: tuple, trust: bool, trusted: list[str]) -> dict:
    schema, serialize = serde[0], serde[1]
    config_name = f"data/constants/{model}_constants_config.json"
    if reader.has(f"data/constants/{model}.pt"):
        return _trusted_pickle(reader, "data/constants/", "its constants", model, f"{model}.pt", trust, trusted)
    if not reader.has(config_name):
        return {}
    config = serialize._dict_to_dataclass(schema.PayloadConfig, reader.json(config_name))
    raw: dict = {}
    constants: dict[str, Any] = {}
    for fqn, meta in config.config.items():
        name = meta.path_name
        if name.startswith("tensor_") and not meta.use_pickle:
            constants[fqn] = _tensor_from_raw(reader, "data/constants/", meta, serde, raw)
        elif name.startswith("tensor_"):
            constants[fqn] = _trusted_pickle(reader, "data/constants/", "the tensor constant", fqn, name, trust,
                                             trusted, weights_only_first=False)
        elif name.startswith("custom_obj_"):
            if not trust:
                raise ArchiveError(
                    f"{reader.path} holds the TorchBind object {fqn!r}, pickled, which could run code when "
                    "loaded; open it with --trust-pickles if you trust where the file came from")
            trusted.append(f"the TorchBind object {fqn}")
            constants[fqn] = torch._C._pickle_load_obj(reader.read("data/constants/" + name))
        elif name.startswith("opaque_obj_"):
            if not trust:
                raise ArchiveError(
                    f"{reader.path} holds the opaque object {fqn!r} as a Python pickle, which could run code "
                    "when loaded; open it with --trust-pickles if you trust where the file came from")
            trusted.append(f"the opaque object {fqn}")
            import pickle

            constants[fqn] = pickle.loads(reader.read("data/constants/" + name))
        else:
            raise ArchiveError(f"{reader.path} holds a constant of a kind this torch does not know ({name}); "
                               "open it with the torch that saved it")
    return constants


def _example_inputs(reader: _Reader, model: str, trust: bool, trusted: list[str]) -> tuple[tuple | None, str]:
    name = f"data/sample_inputs/{model}.pt"
    if not reader.has(name):
        return None, "the archive holds no example inputs"
    data = reader.read(name)
    if not data:
        return None, "the archive holds no example inputs"
    try:
        value = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:
        if not trust:
            return None, (f"its example inputs are a pickle the safe loader refuses ({str(exc).splitlines()[0]}); "
                          "--trust-pickles loads them")
        trusted.append("the example inputs")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = torch.load(io.BytesIO(data), weights_only=False)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], tuple) and isinstance(value[1], dict):
        return value, ""
    return None, "its example inputs are not the (args, kwargs) pair torch.export saves"


def _version_error(path: str, exc: Exception, found: Any, serde: tuple) -> ArchiveError:
    from torch._export.serde.schema import SCHEMA_VERSION

    ours = ".".join(map(str, SCHEMA_VERSION))
    return ArchiveError(
        f"{path} was saved by a newer torch (export schema {found}; this torch {torch.__version__.split('+')[0]} "
        f"reads {ours}): open it with that torch, or export the model again with this one")


def load(path: str, zf: zipfile.ZipFile, *, device: str = "cpu", trust_pickles: bool = False,
         load_namespace=None) -> ExportedArchive:
    """Load the ExportedProgram of a PT2 zip already opened as ``zf`` (``identify`` passed).

    ``load_namespace(ns)`` is asked to make an operator namespace the graph
    needs available (True when it did); see ``engine.formats``.
    """
    serde = _serde()
    schema, serialize, Deserializer = serde[0], serde[1], serde[2]
    reader = _Reader(path, zf)
    model = identify(path, reader.names)
    trusted: list[str] = []
    data = reader.json(f"models/{model}.json")
    if not isinstance(data, dict) or "graph_module" not in data:
        raise ArchiveError(f"{path} is corrupt: models/{model}.json is not an exported program")
    version = data.get("schema_version") or {}
    found = f"{version.get('major')}.{version.get('minor')}" if isinstance(version, dict) else str(version)
    from torch._export.serde.schema import SCHEMA_VERSION

    if isinstance(version, dict) and isinstance(version.get("major"), int) and version["major"] > SCHEMA_VERSION[0]:
        raise _version_error(path, ValueError(), found, serde)
    try:
        serialized = serialize._dict_to_dataclass(schema.ExportedProgram, data)
    except Exception as exc:
        if isinstance(version, dict) and version.get("major") != SCHEMA_VERSION[0]:
            raise _version_error(path, exc, found, serde) from None
        raise ArchiveError(f"{path} is corrupt or made by another torch: models/{model}.json does not match "
                           f"this torch's export schema ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") \
            from None
    state = _load_weights(reader, model, serde, trust_pickles, trusted)
    constants = _load_constants(reader, model, serde, trust_pickles, trusted)
    example, note = _example_inputs(reader, model, trust_pickles, trusted)
    imported: list[str] = []
    tried: set[str] = set()
    while True:
        try:
            with warnings.catch_warnings(), _torch_logs_off():
                warnings.simplefilter("ignore")
                # (args, kwargs) or None: a tuple is used as it is, so torch unpickles nothing here
                ep = Deserializer(None).deserialize(serialized, state, constants, example)
            break
        except ArchiveError:
            raise
        except Exception as exc:
            message = str(exc)
            namespace = _missing_namespace(message)
            if namespace is not None and namespace not in tried and load_namespace is not None:
                tried.add(namespace)
                if load_namespace(namespace):
                    imported.append(namespace)
                    continue
            if namespace is not None:
                raise ArchiveError(
                    f"{path} needs operators of the namespace {namespace}::, which are not loaded: import the "
                    f"package that registers them (--import NAME) or load its library with --library PATH/TO/lib.so"
                ) from None
            if "schema version" in message.lower():
                raise _version_error(path, exc, found, serde) from None
            first = next((ln.strip() for ln in message.splitlines() if ln.strip()), type(exc).__name__)
            raise ArchiveError(f"torch.export cannot read {path} either ({type(exc).__name__}: {first[:200]}); "
                               f"export it again with this torch ({torch.__version__.split('+')[0]})") from None
    if device != "cpu":
        try:
            state_device = torch.device(device)
            for k, v in list(ep.state_dict.items()):
                ep.state_dict[k] = v.to(state_device)
        except Exception as exc:
            raise ArchiveError(f"--device {device}: cannot move the program's weights there ({exc})") from None
    return ExportedArchive(path=path, program=ep, model_name=model, example_inputs=example,
                           example_inputs_note=note, trusted_parts=trusted, imported_libraries=imported, device=device)


@contextlib.contextmanager
def _torch_logs_off():
    """torch's deserializer logs warnings ("Symbol u0 did not appear in the graph") to the terminal."""
    logger = logging.getLogger("torch._export.serde.serialize")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _missing_namespace(message: str) -> str | None:
    """The operator namespace a deserialization error says is missing."""
    import re

    for pattern in (r"torch\.ops\.([A-Za-z_]\w*)\.[A-Za-z_]\w*", r"'_OpNamespace' '([A-Za-z_]\w*)' object has no",
                    r"No such operator ([A-Za-z_]\w*)::", r"Could not find schema for ([A-Za-z_]\w*)::",
                    r"operator ([A-Za-z_]\w*)::\w+ does not exist"):
        m = re.search(pattern, message)
        if m and m.group(1) not in ("aten", "prims", "higher_order"):
            return m.group(1)
    return None


def open_zip(path: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"{path} is a truncated or corrupt zip archive ({exc}); save or copy it again") from None


def file_size(path: str) -> int:
    return os.path.getsize(path)
