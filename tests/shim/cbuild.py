"""Compiling the shim tests' C code: the fake CUDA driver and the driver programs.

Plain functions, so any test module can import them (`from tests.shim.cbuild import ...`);
conftest.py wraps them in fixtures. Every build uses the compiler named by $CC (default cc).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIM_INCLUDE = REPO_ROOT / "services" / "node_agent" / "shim"
TESTS_SHIM = REPO_ROOT / "tests" / "shim"
DRIVERS = TESTS_SHIM / "drivers"
FAKE_SOURCE = TESTS_SHIM / "fake_cuda.c"
FAKE_SONAME = "libcuda.so.1"

COMMON_FLAGS = ("-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread")
INCLUDES = ("-I", str(SHIM_INCLUDE), "-I", str(TESTS_SHIM))


class BuildError(RuntimeError):
    """The compiler failed; the message carries its command line and output."""


def find_compiler() -> str | None:
    """The C compiler's path ($CC, default cc), or None when there is none."""
    return shutil.which(os.environ.get("CC", "cc"))


def _compile(args: Sequence[str]) -> None:
    compiler = find_compiler()
    if compiler is None:
        raise BuildError(f"no C compiler: {os.environ.get('CC', 'cc')!r} is not on PATH")
    command = [compiler, *args]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise BuildError(f"{' '.join(command)}\nexit {done.returncode}\n{done.stdout}{done.stderr}")


def build_fake_cuda(out_dir: Path) -> Path:
    """Build the fake driver as out_dir/libcuda.so.1 (soname libcuda.so.1) with the
    link-time name out_dir/libcuda.so beside it; return out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    library = out_dir / FAKE_SONAME
    _compile([*COMMON_FLAGS, "-fPIC", "-shared", f"-Wl,-soname,{FAKE_SONAME}", "-I", str(SHIM_INCLUDE),
              "-o", str(library), str(FAKE_SOURCE)])
    link = out_dir / "libcuda.so"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(FAKE_SONAME)
    return out_dir


def build_shared_object(source: Path, output: Path, extra_flags: Sequence[str] = ()) -> Path:
    """Compile one C file into a shared object (e.g. an LD_PRELOAD test library); return output."""
    output.parent.mkdir(parents=True, exist_ok=True)
    _compile([*COMMON_FLAGS, "-fPIC", "-shared", *INCLUDES, "-o", str(output), str(source), *extra_flags])
    return output


def build_driver(source_name: str, out_dir: Path, link_fake: bool, extra_flags: Sequence[str] = (),
                 *, fake_dir: Path | None = None, output_name: str | None = None) -> Path:
    """Compile tests/shim/drivers/<source_name>.c into out_dir/<output_name or source_name>;
    return its path.

    link_fake: link against the fake libcuda (in fake_dir, default out_dir, built there when
    missing) with an rpath to it; otherwise link only -ldl, for drivers that dlopen the
    driver themselves or run under an LD_PRELOADed shim. extra_flags go after the sources
    (so -l options work); give a driver built twice (e.g. with a -D) two output names."""
    name = source_name.removesuffix(".c")
    source = DRIVERS / f"{name}.c"
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / (output_name or name)
    link: list[str] = []
    if link_fake:
        fake = fake_dir or out_dir
        if not (fake / "libcuda.so").exists():
            build_fake_cuda(fake)
        link = ["-L", str(fake), "-lcuda", f"-Wl,-rpath,{fake}"]
    _compile([*COMMON_FLAGS, *INCLUDES, "-o", str(binary), str(source), *extra_flags, *link, "-ldl"])
    return binary
