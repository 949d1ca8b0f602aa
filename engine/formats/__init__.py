"""Where programs come from: one package per format, each a loader, a converter into the IR and a
leaf-op runner.

``load(path)`` tells the format from the file's contents (not its suffix)
and returns the format's loaded program (``LoadedArchive`` for a
TorchScript archive, ``LoadedExport`` for a torch.export ``.pt2``).  Both
offer the same things to the session: ``program`` (what the machine runs:
``root_graph``, ``leaf``, ``bind``, ``outputs_of``...), ``params(method)``,
``stored_inputs``, ``infer_inputs``, ``run_native``, ``state_dict``,
``method_kinds``, ``symbolic_shapes`` and ``imported_libraries``.
Nothing above this package knows a format's details.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from typing import Any

from engine.errors import ArchiveError, TsdebugError


def _zip_names(path: str) -> list[str] | None:
    """The member names of a zip file, or None when the file is not one (read from its directory only)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):
        return None
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


#: What telling a zip's content apart reads of one member at most (pickle opcodes, a header).
SNIFF_BYTES = 1 << 20


def read_member_prefix(z: zipfile.ZipFile, name: str, n: int = SNIFF_BYTES) -> bytes:
    """At most the first ``n`` bytes of a member, inflated no further than that.

    ``ZipFile.read`` inflates the whole member: a 1 MB zip can hold a member
    of gigabytes of zeros (a zip bomb).
    """
    try:
        with z.open(name) as f:
            return f.read(n)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error):
        return b""  # a damaged member tells nothing; the caller explains the file by what is left


def read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo | str, limit: int, what: str = "") -> bytes:
    """A whole member, refused (``ArchiveError``) past ``limit`` bytes, whatever size it claims.

    The size the zip directory gives is checked first, then the bytes are
    inflated in chunks and counted, for a member that claims less than it holds.
    """
    if not isinstance(info, zipfile.ZipInfo):
        info = z.getinfo(info)
    where = what or f"{z.filename}: {info.filename}"
    if info.file_size > limit:
        raise ArchiveError(f"{where} is {info.file_size} bytes inflated, more than tsdebug reads ({limit}); "
                           "the file is damaged or not what it claims to be")
    chunks, total = [], 0
    try:
        with z.open(info) as f:
            while True:
                chunk = f.read(min(1 << 20, limit + 1 - total))
                if not chunk:
                    break
                total += len(chunk)
                if total > limit:
                    raise ArchiveError(f"{where} inflates past {limit} bytes, more than its zip entry claims; "
                                       "the file is damaged or not what it claims to be")
                chunks.append(chunk)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as exc:
        raise ArchiveError(f"{where} cannot be read ({exc}); the file is damaged: save or copy it again") from None
    return b"".join(chunks)


def sniff(path: str) -> str:
    """``"exported"``, ``"executorch"`` or ``"torchscript"`` (which also covers what is neither:
    the TorchScript loader explains what such a file is)."""
    if not os.path.isfile(path):
        return "torchscript"
    names = _zip_names(path)
    if names is not None:
        from engine.formats.exported.archive import is_exported_zip

        return "exported" if is_exported_zip(names) else "torchscript"
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return "torchscript"
    from engine.formats.exported.archive import is_executorch

    return "executorch" if is_executorch(head) else "torchscript"


def load(path: str, *, device: str = "cpu", libraries: tuple[str, ...] = (), trust_pickles: bool = False,
         imports: tuple[str, ...] = ()) -> Any:
    """The program in ``path``, loaded by its format's loader; errors are ``ArchiveError`` one-liners."""
    from engine import paths

    if not os.path.isdir(path):  # the TorchScript loader explains a directory (an unpacked archive?)
        try:
            paths.read_regular(path, "")  # a FIFO or a device would block the first read forever
        except TsdebugError as exc:
            raise ArchiveError(exc.message) from None
    kind = sniff(path)
    if kind == "executorch":
        raise ArchiveError(f"{path} is an ExecuTorch program (.pte): lowered for a runtime, with no graph "
                           "tsdebug can step; open the .pt2 that torch.export.save wrote before lowering it")
    if kind == "exported":
        from engine.formats.exported import LoadedExport
        from engine.formats.torchscript.archive import check_device, load_libraries

        check_device(device)
        load_libraries(libraries, imports)
        return LoadedExport(path, device=device, trust_pickles=trust_pickles, load_namespace=import_op_namespace)
    from engine.formats.torchscript import LoadedArchive

    return LoadedArchive(path, device=device, libraries=libraries, imports=imports)


def import_op_namespace(namespace: str) -> bool:
    """Make the operators of ``namespace`` available by importing the package known to register them."""
    from engine.formats.torchscript.archive import import_namespace

    return import_namespace(namespace)


__all__ = ["load", "sniff", "import_op_namespace", "read_member", "read_member_prefix"]
