"""Compiling the shim tests' C code (the fake CUDA driver and the driver programs) and
running a driver under the shim, against pages made by the agent's own Python writer.

Plain functions, so any test module can import them (`from tests.shim.cbuild import ...`);
conftest.py wraps the builds in fixtures. Every build uses the compiler named by $CC
(default cc).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.node_agent.pages import ControlPageWriter, Stats, StatsReader, control_for, create_stats_page
from services.node_agent.shim import preload_env

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


# ---- running a driver under the shim ----


@dataclass(frozen=True)
class Pages:
    """An instance's control page and stats page, as the agent makes them."""

    control: Path
    stats: Path

    def read_stats(self) -> Stats:
        return StatsReader(self.stats).read()


def write_pages(directory: Path, share: float = 1.0, memory_limit_bytes: int = 0, *,
                inflight_cap_ns: int | None = None) -> Pages:
    """A control page at `share` (request and share alike, limit 1.0) and an empty stats page,
    in `directory` (made if missing); one pair a directory."""
    directory.mkdir(parents=True, exist_ok=True)
    pages = Pages(directory / "control", directory / "stats")
    control = control_for(share, share, 1.0, memory_limit_bytes)
    if inflight_cap_ns is not None:
        control = dataclasses.replace(control, inflight_cap_ns=inflight_cap_ns)
    ControlPageWriter(pages.control, control).close()
    create_stats_page(pages.stats)
    return pages


# What a developer's environment could set that would steer the fake, the shim or a driver.
_STEERING_PREFIXES = ("FAKE_CUDA_", "DILU_", "REENTRANT_")


def driver_env(fake_dir: Path, shim: Path | None, pages: Pages | None, *,
               control: bool = True) -> dict[str, str]:
    """This process's environment, less anything steering the fake, the shim or a driver,
    with the fake libcuda on the library path, `shim` preloaded (None: not) and quiet, and
    `pages` named to it: DILU_STATS, and DILU_CONTROL unless control=False (without a
    control page the shim only forwards)."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(_STEERING_PREFIXES) and key != "LD_PRELOAD"}
    env.update(LD_LIBRARY_PATH=str(fake_dir), DILU_SHIM_QUIET="1")
    if shim is not None:
        env.update(preload_env(shim, env))
    if pages is not None:
        env["DILU_STATS"] = str(pages.stats)
        if control:
            env["DILU_CONTROL"] = str(pages.control)
    return env


def run_program(binary: Path, *args: object, env: dict[str, str] | None = None,
                timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run `binary` with `args` in `env` (None: this process's), capturing its output as
    text; never raises on its exit status (some tests expect a failure)."""
    return subprocess.run([str(binary), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def json_lines(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """The JSON objects a driver printed, one a line, in order."""
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def single_result(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The one JSON line of a driver that exited 0 (asserted, with its output on failure)."""
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}{done.stderr}"
    results = json_lines(done)
    assert len(results) == 1, done.stdout
    return results[0]
