"""Building the C++ runner against the libtorch inside the installed torch wheel, once per machine.

The binary is cached under ``$TSDEBUG_CACHE_DIR``, else ``$XDG_CACHE_HOME/tsdebug``, else
``~/.cache/tsdebug``, keyed by torch's version and location, the compiler's version and the
runner's source, so a new torch or compiler builds a new one and the second check compiles nothing.
A lock keeps two concurrent checks from building it twice; the binary is written to a temporary
name and renamed into place, so a half-built runner is never run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib import resources

import torch

from engine.errors import TsdebugError

RUNNER_SOURCE = "runner.cpp"
#: -O1: the runner's own code is trivial (libtorch does the work); it only shortens the build.
CXX_FLAGS = ("-O1", "-std=c++20", "-w")
BUILD_TIMEOUT = 900


class CppUnavailable(TsdebugError):
    """No C++ compiler, or a torch without its C++ headers: the check cannot build its runner."""


@dataclass(frozen=True)
class Toolchain:
    compiler: str  # path of the C++ compiler
    compiler_version: str  # its --version first line
    include_dirs: tuple[str, ...]
    library_dirs: tuple[str, ...]
    cxx11_abi: bool
    torch_dir: str  # the installed torch package (CMAKE_PREFIX_PATH for find_package(Torch))

    @property
    def cmake_prefix(self) -> str:
        return os.path.join(self.torch_dir, "share", "cmake")


def cache_dir() -> str:
    """Where tsdebug keeps what it builds."""
    explicit = os.environ.get("TSDEBUG_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tsdebug")


def find_compiler() -> str | None:
    """``$CXX``, else ``c++``, ``g++``, ``clang++`` on the PATH."""
    named = os.environ.get("CXX")
    if named:
        return shutil.which(named)
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


def toolchain() -> Toolchain:
    """The compiler and torch's C++ side, or ``CppUnavailable`` saying which is missing and how to get it."""
    import logging

    # importing it logs "No CUDA runtime is found" on a CUDA build without a GPU: the terminal is ours
    quiet = logging.getLogger("torch.utils.cpp_extension")
    was, quiet.disabled = quiet.disabled, True
    try:
        from torch.utils import cpp_extension
    finally:
        quiet.disabled = was

    torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
    includes = tuple(cpp_extension.include_paths())
    if not any(os.path.exists(os.path.join(d, "torch", "script.h")) for d in includes):
        raise CppUnavailable(
            f"the installed torch ({torch.__version__}, {torch_dir}) has no C++ headers (torch/script.h): "
            "install a torch wheel that ships them (the pytorch.org and PyPI wheels do) or use "
            "--check-only for the static check")
    compiler = find_compiler()
    if compiler is None:
        raise CppUnavailable(
            "no C++ compiler found (looked for $CXX, c++, g++, clang++): install one "
            "(apt-get install g++, or xcode-select --install) or use --check-only for the static check")
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
        version = (out.stdout.strip().splitlines() or ["unknown"])[0]
    except (OSError, subprocess.SubprocessError) as exc:
        raise CppUnavailable(f"the C++ compiler {compiler} does not run ({exc}); install a working one "
                             "or set CXX") from None
    return Toolchain(compiler, version, includes, tuple(cpp_extension.library_paths()),
                     bool(torch._C._GLIBCXX_USE_CXX11_ABI), torch_dir)


def runner_source() -> bytes:
    return resources.files("engine.check.cpp").joinpath(RUNNER_SOURCE).read_bytes()


def compile_command(tc: Toolchain, source: str, output: str) -> list[str]:
    cmd = [tc.compiler, *CXX_FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={int(tc.cxx11_abi)}"]
    cmd += [f"-I{d}" for d in tc.include_dirs]
    cmd += [source, "-o", output]
    cmd += [f"-L{d}" for d in tc.library_dirs]
    # --no-as-needed: libtorch.so holds no symbol the runner names, yet loading it registers the ops
    cmd += ["-Wl,--no-as-needed", "-ltorch", "-ltorch_cpu", "-lc10", "-Wl,--as-needed"]
    cmd += [f"-Wl,-rpath,{d}" for d in tc.library_dirs]
    cmd += ["-ldl", "-pthread"]
    return cmd


def cache_key(tc: Toolchain) -> str:
    h = hashlib.sha256()
    for part in (torch.__version__, tc.torch_dir, tc.compiler, tc.compiler_version, str(tc.cxx11_abi),
                 " ".join(CXX_FLAGS)):
        h.update(part.encode() + b"\0")
    h.update(runner_source())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Runner:
    path: str
    built: bool  # compiled by this call (False: found in the cache)
    build_seconds: float
    toolchain: Toolchain


def runner(rebuild: bool = False) -> Runner:
    """The cached runner binary, compiled first when there is none (or ``rebuild``)."""
    tc = toolchain()
    folder = os.path.join(cache_dir(), "cpp-runner")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise TsdebugError(f"cannot create the cache folder {folder} ({exc.strerror}); set TSDEBUG_CACHE_DIR "
                           "to a writable folder") from None
    key = cache_key(tc)
    target = os.path.join(folder, f"tsdebug_runner-{key}")
    with _locked(target + ".lock"):
        if os.path.exists(target) and not rebuild:
            return Runner(target, False, 0.0, tc)
        fd, tmp_source = tempfile.mkstemp(suffix=".cpp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(runner_source())
        tmp_binary = tmp_source[:-4] + ".bin"
        t0 = time.perf_counter()
        try:
            done = subprocess.run(compile_command(tc, tmp_source, tmp_binary), capture_output=True, text=True,
                                  timeout=BUILD_TIMEOUT)
            if done.returncode != 0:
                errors = [ln for ln in done.stderr.splitlines() if "error" in ln] or done.stderr.splitlines()
                raise CppUnavailable(f"building the C++ runner with {tc.compiler} failed: "
                                     f"{(errors or ['no message'])[0].strip()}")
            os.replace(tmp_binary, target)
        except subprocess.TimeoutExpired:
            raise CppUnavailable(f"building the C++ runner took over {BUILD_TIMEOUT} s; try again on a "
                                 "less busy machine") from None
        finally:
            for p in (tmp_source, tmp_binary):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
        return Runner(target, True, time.perf_counter() - t0, tc)


@contextlib.contextmanager
def _locked(path: str):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
