"""How CUDA programs find the shim's hooks, and that the lookup machinery holds up.

Three lookup paths lead into the driver: direct linking (the preloaded shim's exports win),
dlopen("libcuda.so.1") + dlsym (the shim hooks dlsym), and cuGetProcAddress(_v2) (the shim
answers with its hook for the variant the driver picked). Every hook must be on all three,
and the per-thread (_ptsz) variants must reach the driver's _ptsz functions.

The dlsym hook is also exercised where it is easiest to get wrong: lookups from a library
constructor before the shim has started, eight threads making the process's first lookups
at once, and RTLD_NEXT lookups from a library loaded after the shim (glibc resolves
RTLD_NEXT relative to its caller, so the hook must tail-call the real dlsym).

All of it runs against the fake driver (tests/shim/fake_cuda.c); the C programs are in
tests/shim/drivers/lookup_paths.c, reentrant.c, reentrant_lib.c and wrap_lib.c.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.shim import cbuild
from tests.shim.cbuild import Pages


@pytest.fixture(scope="module")
def lookup_paths(fake_cuda_dir: Path, build_driver: Callable[..., Path],
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_driver("lookup_paths", tmp_path_factory.mktemp("lookup_paths"), link_fake=True,
                        fake_dir=fake_cuda_dir)


@pytest.fixture(scope="module")
def reentrant(fake_cuda_dir: Path, build_driver: Callable[..., Path],
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The reentrant driver, built three ways, and the constructor library on its own."""
    out = tmp_path_factory.mktemp("reentrant")
    libs = out / "libs"
    ctor = cbuild.build_shared_object(cbuild.DRIVERS / "reentrant_lib.c", libs / "libdilu_test_ctor.so",
                                      ["-Wl,-soname,libdilu_test_ctor.so", "-ldl"])
    cbuild.build_shared_object(cbuild.DRIVERS / "wrap_lib.c", libs / "libdilu_test_wrap.so",
                               ["-Wl,-soname,libdilu_test_wrap.so", "-ldl"])
    link = ["-L", str(libs), f"-Wl,-rpath,{libs}"]
    return {
        "plain": build_driver("reentrant", out, link_fake=False, output_name="reentrant_plain"),
        "ctor": build_driver("reentrant", out, link_fake=False, output_name="reentrant_ctor",
                             extra_flags=["-DWITH_CTOR_LIB", *link, "-ldilu_test_ctor"]),
        "wrap": build_driver("reentrant", out, link_fake=False, output_name="reentrant_wrap",
                             extra_flags=["-DWITH_WRAP_LIB", *link, "-ldilu_test_wrap"]),
        "ctor_lib": ctor,
    }


def _run(binary: Path, *args: str, shim: Path | None, fake_dir: Path, pages: Pages | None,
         **env: str) -> subprocess.CompletedProcess[str]:
    """Run a driver under `shim` (None: none) against `pages`; `env` adds its REENTRANT_ settings."""
    return cbuild.run_program(binary, *args, env={**cbuild.driver_env(fake_dir, shim, pages), **env})


def _result(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The driver's JSON line, after asserting it passed."""
    result = cbuild.single_result(done)
    assert result["failures"] == 0, done.stdout
    return result


# ---- the hook table on every path ----


@pytest.mark.parametrize("enforcing", [True, False], ids=["enforcing", "forwarding"])
def test_every_hook_is_reachable_by_every_lookup_path(lookup_paths: Path, shim: Path,
                                                      fake_cuda_dir: Path, tmp_path: Path,
                                                      enforcing: bool) -> None:
    """For each hook the shim lists: linking, dlsym(RTLD_DEFAULT), dlsym on a libcuda handle,
    cuGetProcAddress_v2 and cuGetProcAddress (at the version and flags that select exactly
    that variant) all give the hook; and the table holds every entry of the header's
    X-macro lists, no more, no less."""
    pages = cbuild.write_pages(tmp_path) if enforcing else None
    result = _result(_run(lookup_paths, "table", shim=shim, fake_dir=fake_cuda_dir, pages=pages))
    assert result["header_entries"] > 0
    assert result["hooks"] == result["header_entries"] == result["proc_checked"]


def test_lookup_driver_fails_without_the_shim(lookup_paths: Path, fake_cuda_dir: Path) -> None:
    """The table check is not vacuous: without the shim there is nothing to find."""
    done = _run(lookup_paths, "table", shim=None, fake_dir=fake_cuda_dir, pages=None)
    assert done.returncode == 1
    assert "is libdilu_shim.so preloaded?" in done.stdout


def test_unhooked_symbols_pass_through_dlsym_unchanged(lookup_paths: Path, shim: Path,
                                                       fake_cuda_dir: Path, tmp_path: Path) -> None:
    """cuCtxGetCurrent, cuEventRecord_ptsz, fake_busy_ns...: dlsym (on the libcuda handle and
    RTLD_DEFAULT) and cuGetProcAddress give the driver's own functions; names the driver
    lacks stay missing."""
    _result(_run(lookup_paths, "passthrough", shim=shim, fake_dir=fake_cuda_dir,
                 pages=cbuild.write_pages(tmp_path)))


def test_ptsz_hooks_forward_to_the_drivers_ptsz_variants(lookup_paths: Path, shim: Path,
                                                         fake_cuda_dir: Path, tmp_path: Path) -> None:
    """cuLaunchKernel, cuLaunchKernelEx, cuLaunchCooperativeKernel and cuGraphLaunch, each
    fetched per-thread and legacy through five paths (linked, dlsym RTLD_DEFAULT, dlsym
    libcuda, cuGetProcAddress_v2, cuGetProcAddress): every launch is admitted by the shim
    and runs exactly the driver's matching variant, never the other one."""
    pages = cbuild.write_pages(tmp_path)
    result = _result(_run(lookup_paths, "ptsz", shim=shim, fake_dir=fake_cuda_dir, pages=pages))
    assert result["launched"] == 4 * 5 * 2
    assert pages.read_stats().launches == result["launched"]


# ---- the dlsym hook under re-entrant and concurrent use ----


def test_constructor_lookup_before_the_shim_starts(reentrant: dict[str, Path], shim: Path,
                                                   fake_cuda_dir: Path, tmp_path: Path) -> None:
    """A library linked into the program looks up cuLaunchKernel with dlopen + dlsym from its
    constructor (before main, loader lock held, shim not yet started) and cuLaunchKernelEx
    with cuGetProcAddress_v2 (which starts the shim inside the constructor); main launches
    through both pointers under enforcement, and the shim admits every launch."""
    pages = cbuild.write_pages(tmp_path)
    result = _result(_run(reentrant["ctor"], "constructor", shim=shim, fake_dir=fake_cuda_dir,
                          pages=pages))
    assert result["launched"] == result["admitted"] == 21
    assert pages.read_stats().launches == 21


def test_concurrent_first_lookups_neither_deadlock_nor_miss_the_hook(
        reentrant: dict[str, Path], shim: Path, fake_cuda_dir: Path, tmp_path: Path) -> None:
    """Eight threads released together make the process's first dlsym, dlopen,
    cuGetProcAddress_v2, launch and allocation calls (racing the shim's lazy start);
    repeated, since each run races differently. Every thread gets every hook, and every
    launch is admitted."""
    for attempt in range(6):
        pages = cbuild.write_pages(tmp_path / str(attempt), share=0.5)
        result = _result(_run(reentrant["plain"], "threads", shim=shim, fake_dir=fake_cuda_dir,
                              pages=pages, REENTRANT_DEADLINE_S="10"))
        assert result["threads"] == 8
        assert result["launched"] == result["admitted"] == 8 * 25
        stats = pages.read_stats()
        assert stats.launches == result["launched"]
        assert stats.memory_used_bytes == 0
        assert stats.memory_peak_bytes >= 1 << 20


def test_rtld_next_stays_relative_to_the_caller(reentrant: dict[str, Path], shim: Path,
                                                fake_cuda_dir: Path, tmp_path: Path) -> None:
    """A library loaded after the shim wraps getpid() and finds the real one with
    dlsym(RTLD_NEXT, "getpid"). That call enters the shim's dlsym hook, which must keep the
    caller's return address (a tail call) for glibc to search after the wrapping library:
    otherwise the wrapper finds itself and recurses. Also: dlsym(RTLD_NEXT, "dlsym") from
    the program is non-NULL and usable, and dlsym(RTLD_NEXT, "cuLaunchKernel") from the
    program is the shim's hook (the shim is next after the program)."""
    result = _result(_run(reentrant["wrap"], "rtld_next", shim=shim, fake_dir=fake_cuda_dir,
                          pages=cbuild.write_pages(tmp_path)))
    assert result["wrapper_calls"] >= 1
    assert result["next_dlsym_in"] != "?"


def test_constructor_cuda_call_races_first_hooked_call_without_the_shim(
        reentrant: dict[str, Path], fake_cuda_dir: Path) -> None:
    """The control for the next test: without the shim the same program completes."""
    result = _result(_run(reentrant["plain"], "dlopen_race", str(reentrant["ctor_lib"]), shim=None,
                          fake_dir=fake_cuda_dir, pages=None, REENTRANT_DEADLINE_S="2",
                          REENTRANT_PAUSE_MS="300"))
    assert result["shim"] is False


class Deadlock(AssertionError):
    """The driver's watchdog fired: the run made no progress."""


def test_constructor_cuda_call_races_first_hooked_call(reentrant: dict[str, Path], shim: Path,
                                                       fake_cuda_dir: Path, tmp_path: Path) -> None:
    """One thread dlopens a library whose constructor (loader lock held) pauses, then calls
    cuGetProcAddress_v2; meanwhile the main thread makes the process's first hooked call
    (cuMemGetInfo_v2), which starts the shim. Both must complete: the shim's start-up
    calls dlopen, so it must never wait for another thread (it once did, and deadlocked)."""
    done = _run(reentrant["plain"], "dlopen_race", str(reentrant["ctor_lib"]), shim=shim,
                fake_dir=fake_cuda_dir, pages=cbuild.write_pages(tmp_path), REENTRANT_DEADLINE_S="2",
                REENTRANT_PAUSE_MS="300")
    if done.returncode == 3 and "FAIL deadline" in done.stdout:
        raise Deadlock(done.stdout)
    result = _result(done)
    assert result["shim"] is True
