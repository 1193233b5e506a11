"""The CUDA shim: `libdilu_shim.so`, preloaded into CUDA workers to enforce their share and
memory quota inside the driver API (see README.md beside this file).

It is built from the C sources here with the system C compiler, on install
(`python -m services.node_agent.shim build`) or on first use, into a cache keyed by the
sources, the compiler and the flags, so a changed source is never served stale.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
LIBRARY_NAME = "libdilu_shim.so"
# initial-exec TLS: the shim is preloaded at start-up, so its thread-locals can live in the
# static TLS block instead of costing a __tls_get_addr call on every launch.
CFLAGS = ("-std=gnu11", "-O2", "-fPIC", "-Wall", "-Wextra", "-fvisibility=hidden",
          "-ftls-model=initial-exec", "-pthread")
# Tests and CI build with warnings as errors (their compiler is known); a GPU node's newer
# compiler may warn about something new, which must not cost the node its shim.
STRICT = ("-Werror",)
LDFLAGS = ("-shared", "-pthread", "-Wl,-Bsymbolic-functions", "-ldl")


class ShimBuildError(RuntimeError):
    """The shim could not be compiled (no compiler, or the compiler refused the sources)."""


def sources() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.c"))


def compiler() -> list[str]:
    """The C compiler command: $CC (which may carry arguments, e.g. "ccache gcc"), else cc,
    gcc or clang."""
    configured = shlex.split(os.environ.get("CC", ""))
    if configured and shutil.which(configured[0]):
        return configured
    for candidate in ("cc", "gcc", "clang"):
        if shutil.which(candidate):
            return [candidate]
    raise ShimBuildError("no C compiler found (install gcc or set CC) to build the Dilu "
                         "CUDA shim")


def cache_dir() -> Path:
    configured = os.environ.get("DILU_SHIM_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dilu" / "shim"


def _fingerprint(command: list[str], flags: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for path in sorted(SOURCE_DIR.glob("*.[ch]")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(" ".join((*command, *flags, *LDFLAGS)).encode())
    resolved = shutil.which(command[0])
    if resolved:
        digest.update(str(Path(resolved).resolve()).encode())
    return digest.hexdigest()[:16]


def build_shim(out_dir: Path | None = None, force: bool = False, strict: bool = False) -> Path:
    """Compile the shim (unless an identical build is cached) and return its path.
    `strict` treats compiler warnings as errors. Every failure is a ShimBuildError."""
    command = compiler()
    flags = CFLAGS + STRICT if strict else CFLAGS
    target_dir = out_dir or cache_dir() / _fingerprint(command, flags)
    target = target_dir / LIBRARY_NAME
    if target.exists() and not force:
        return target
    try:
        return _compile(command, flags, target)
    except OSError as error:
        raise ShimBuildError(f"cannot build the CUDA shim in {target_dir} ({error}); set "
                             f"DILU_SHIM_CACHE to a writable directory") from error


def _compile(command: list[str], flags: tuple[str, ...], target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a concurrent loader never sees half a file.
    fd, partial = tempfile.mkstemp(prefix=".libdilu_shim.", suffix=".so", dir=target.parent)
    os.close(fd)
    argv = [*command, *flags, "-I", str(SOURCE_DIR), *map(str, sources()), "-o", partial,
            *LDFLAGS]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ShimBuildError(f"compiling the CUDA shim failed ({' '.join(argv)}):\n"
                                 f"{result.stderr.strip()}")
        # Workers may run as another user than the one who built it.
        os.chmod(partial, 0o755)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def preload_env(shim: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment entries that preload `shim` ahead of whatever was preloaded already."""
    current = (environ if environ is not None else os.environ).get("LD_PRELOAD", "")
    return {"LD_PRELOAD": " ".join(filter(None, (str(shim), current)))}


def shim_enforcing_here() -> bool:
    """Whether libdilu_shim.so is loaded into this process and enforces a control page."""
    try:
        probe = ctypes.CDLL(None).dilu_shim_enforcing
    except (AttributeError, OSError):
        return False
    probe.restype = ctypes.c_int
    return bool(probe())
