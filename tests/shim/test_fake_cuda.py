"""The fake CUDA driver works on its own: the C smoke driver, linked straight against it,
checks timing, capture (with CUDA's rule for potentially unsafe calls during a capture, and
cuThreadExchangeStreamCaptureMode), memory, call counters and cuGetProcAddress; this module
also checks that the fake exports every entry point the shim header declares, that each export is
reachable through cuGetProcAddress_v2, and that what cuGetProcAddress hands out stays the
fake's own code when a preloaded library (the shim) exports the same names."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.shim import cbuild


@pytest.fixture(scope="module")
def fake_smoke(fake_cuda_dir: Path, build_driver: Callable[..., Path]) -> Path:
    return build_driver("fake_smoke", fake_cuda_dir, link_fake=True)


def _run(binary: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("FAKE_CUDA_") and key != "LD_PRELOAD"}
    environment.update(env)
    return subprocess.run([str(binary), *args], env=environment, capture_output=True, text=True, timeout=30,
                          check=False)


def _assert_passed(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}{done.stderr}"


def test_fake_is_libcuda_so_1(fake_cuda_dir: Path) -> None:
    assert (fake_cuda_dir / "libcuda.so.1").is_file()
    assert os.readlink(fake_cuda_dir / "libcuda.so") == "libcuda.so.1"


def test_smoke_with_defaults(fake_smoke: Path) -> None:
    _assert_passed(_run(fake_smoke))


def test_smoke_with_two_small_devices(fake_smoke: Path) -> None:
    _assert_passed(_run(fake_smoke, FAKE_CUDA_DEVICES="2", FAKE_CUDA_MEMORY_BYTES=str(1 << 30)))


def _exported_functions(library: Path) -> list[str]:
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) is needed to list the fake's exports")
    listing = subprocess.run([nm, "-D", "--defined-only", str(library)], capture_output=True, text=True,
                             check=True, timeout=30).stdout
    rows = [line.split() for line in listing.splitlines()]
    return [row[2] for row in rows if len(row) == 3 and row[1] == "T"]


def test_exports_are_cu_or_fake_and_all_reachable(fake_cuda_dir: Path, fake_smoke: Path) -> None:
    exported = _exported_functions(fake_cuda_dir / "libcuda.so.1")
    stray = [name for name in exported if not name.startswith(("cu", "fake_"))]
    assert not stray, f"the fake exports helpers: {stray}"
    _assert_passed(_run(fake_smoke, "--exports", *(name for name in exported if name.startswith("cu"))))


def test_fake_implements_every_entry_point_of_the_shim_header(fake_cuda_dir: Path) -> None:
    header = (cbuild.SHIM_INCLUDE / "dilu_cuda.h").read_text()
    declared = set(re.findall(r"\bX\((cu\w+),", header))
    assert declared, "no X(cu..., ...) entries found in dilu_cuda.h"
    missing = declared - set(_exported_functions(fake_cuda_dir / "libcuda.so.1"))
    assert not missing, f"the fake lacks {sorted(missing)}"


_INTERPOSER = """
#include "dilu_cuda.h"
CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                        unsigned int by, unsigned int bz, unsigned int shared, CUstream s, void **params,
                        void **extra) { return CUDA_ERROR_UNKNOWN; }
CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) { return CUDA_ERROR_UNKNOWN; }
CUresult cuEventRecord_ptsz(CUevent e, CUstream s) { return CUDA_ERROR_UNKNOWN; }
"""


def test_get_proc_address_is_not_interposed_by_a_preload(fake_smoke: Path, tmp_path: Path) -> None:
    source = tmp_path / "interposer.c"
    source.write_text(_INTERPOSER)
    interposer = cbuild.build_shared_object(source, tmp_path / "libinterposer.so", ["-Wno-unused-parameter"])
    done = _run(fake_smoke, "--exports", "cuLaunchKernel", "cuMemAlloc_v2", "cuEventRecord_ptsz",
                LD_PRELOAD=str(interposer))
    _assert_passed(done)
