"""dilu_cuda.h against the CUDA toolkit's cuda.h: prototypes, type layouts and constant values.

The shim's header restates part of the driver API so the shim builds without a toolkit. These
tests compile it next to a real cuda.h (needs /usr/local/cuda/include/cuda.h and a C compiler):

* prototypes: cuda.h and dilu_cuda.h in one translation unit, so a differing parameter list is
  a "conflicting types" error; every entry point dilu_cuda.h declares must exist in cuda.h;
* layouts and values: tests/shim/abi_probe.c, built once per header, prints sizes, field
  offsets and constant values, and the two outputs must be identical;
* coverage: the probe must print every constant, typedef and struct field dilu_cuda.h defines,
  and deliberately broken copies of the header must make the checks fail.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIM_DIR = REPO_ROOT / "services" / "node_agent" / "shim"
HEADER = SHIM_DIR / "dilu_cuda.h"
PROBE_SOURCE = Path(__file__).resolve().with_name("abi_probe.c")
CUDA_INCLUDE = Path("/usr/local/cuda/include")
CC = shutil.which(os.environ.get("CC", "cc"))
CFLAGS = ["-std=gnu11", "-Wall", "-Wextra", "-Werror"]

pytestmark = [
    pytest.mark.skipif(not (CUDA_INCLUDE / "cuda.h").is_file(),
                       reason=f"no CUDA toolkit header at {CUDA_INCLUDE / 'cuda.h'}"),
    pytest.mark.skipif(CC is None, reason=f"no C compiler ({os.environ.get('CC', 'cc')!r} not on PATH)"),
]

# Both headers in one unit: cuda.h first (internal mode, so it also declares the _ptsz and
# unversioned legacy entry points), then dilu_cuda.h's prototypes alone.
PROTOTYPES_TU = """\
#define __CUDA_API_VERSION_INTERNAL
#include <cuda.h>
#define DILU_USE_SYSTEM_CUDA_TYPES
#include "dilu_cuda.h"
"""

# dilu_cuda.h's cuMemAlloc_v2 entry; the mutation test gives it a wrong parameter type.
MEM_ALLOC_ENTRY = re.compile(r"(X\(cuMemAlloc_v2,\s*\(CUdeviceptr \*dptr,\s*)size_t(\s+bytesize\)\))")


def _cc(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert CC is not None
    return subprocess.run([CC, *map(str, args)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "LC_ALL": "C"}, check=False)


def _check_prototypes(tmp_path: Path, header_dir: Path) -> subprocess.CompletedProcess[str]:
    source = tmp_path / "prototypes.c"
    source.write_text(PROTOTYPES_TU)
    return _cc(*CFLAGS, "-fsyntax-only", f"-I{CUDA_INCLUDE}", f"-I{header_dir}", source)


def _copy_header(tmp_path: Path, text: str) -> Path:
    header_dir = tmp_path / "mutated"
    header_dir.mkdir()
    (header_dir / "dilu_cuda.h").write_text(text)
    return header_dir


def _mutate(text: str, pattern: str | re.Pattern[str], replacement: str) -> str:
    mutated, count = re.subn(pattern, replacement, text)
    assert count == 1, f"mutation target {pattern!r} not found exactly once in dilu_cuda.h ({count})"
    return mutated


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", " ", text, flags=re.DOTALL))


def _run_probe(tmp_path: Path, label: str, *include_args: str) -> str:
    binary = tmp_path / f"abi_probe_{label}"
    built = _cc(*CFLAGS, *include_args, "-o", binary, PROBE_SOURCE)
    assert built.returncode == 0, f"abi_probe.c does not build against {label}:\n{built.stderr}"
    ran = subprocess.run([str(binary)], capture_output=True, text=True, timeout=30, check=False)
    assert ran.returncode == 0, f"abi_probe ({label}) exited {ran.returncode}:\n{ran.stderr}"
    assert ran.stdout.strip(), f"abi_probe ({label}) printed nothing"
    return ran.stdout


def _probe_system(tmp_path: Path) -> str:
    return _run_probe(tmp_path, "cuda_h", "-DDILU_PROBE_SYSTEM_CUDA", f"-I{CUDA_INCLUDE}")


def _probe_ours(tmp_path: Path, header_dir: Path = SHIM_DIR) -> str:
    return _run_probe(tmp_path, "dilu_cuda_h", f"-I{header_dir}")


def _probe_diff(expected: str, actual: str) -> str:
    return "".join(difflib.unified_diff(expected.splitlines(keepends=True), actual.splitlines(keepends=True),
                                        fromfile="cuda.h (expected)", tofile="dilu_cuda.h (actual)"))


def _probe_names(output: str) -> set[str]:
    return {line.split(" ", 1)[0] for line in output.splitlines()}


# ---- what dilu_cuda.h defines, read from its text ----

def _declared_entry_points(tmp_path: Path, header_dir: Path = SHIM_DIR) -> list[str]:
    """Function names dilu_cuda.h declares, from its preprocessed form (X-macros expanded)."""
    source = tmp_path / "entry_points.c"
    source.write_text('#include "dilu_cuda.h"\n')
    expanded = _cc("-std=gnu11", "-E", "-P", f"-I{header_dir}", source)
    assert expanded.returncode == 0, expanded.stderr
    return re.findall(r"\bCUresult\s+(cu\w+)\s*\(", expanded.stdout)


def _header_constants(text: str) -> set[str]:
    """Every enum constant and every CU*/CUDA* object-like macro dilu_cuda.h defines."""
    text = _strip_comments(text)
    names = set(re.findall(r"^\s*#\s*define\s+(CU\w+)(?![\w(])", text, flags=re.MULTILINE))
    for body in re.findall(r"\benum\b[^{;]*\{(.*?)\}", text, flags=re.DOTALL):
        names.update(re.findall(r"(?:^|,)\s*([A-Za-z_]\w*)", body))
    return names


def _header_typedefs(text: str) -> set[str]:
    """Names of complete typedefs (scalars, handles, enums, structs); opaque ones excluded."""
    text = _strip_comments(text)
    scalar = re.findall(r"\btypedef\s+(?!struct\b|enum\b|union\b)[\w\s]*?\w\s+(\w+)\s*;", text)
    handle = re.findall(r"\btypedef\s+struct\s+\w+\s*\*\s*(\w+)\s*;", text)
    enums = re.findall(r"\btypedef\s+enum\b[^{;]*\{[^}]*\}\s*(\w+)\s*;", text)
    return {*scalar, *handle, *enums, *_header_struct_fields(text)}


def _header_struct_fields(text: str) -> dict[str, list[str]]:
    """{typedef name: field paths} for each `typedef struct ... { ... } Name;` (nested: a.b)."""
    structs: dict[str, list[str]] = {}
    stack: list[list[str]] | None = None
    for raw in _strip_comments(text).splitlines():
        line = raw.strip()
        if stack is None:
            if re.match(r"typedef\s+struct\b[^;]*\{$", line):
                stack = [[]]
            continue
        if re.match(r"(struct|union)\s*\{$", line):
            stack.append([])
        elif closing := re.match(r"\}\s*(\w+)\s*;$", line):
            name = closing.group(1)
            inner = stack.pop()
            if not stack:
                structs[name] = inner
                stack = None
            else:
                stack[-1] += [name, *(f"{name}.{field}" for field in inner)]
        elif line:
            field = re.match(r"[^,;]*?\b(\w+)\s*(?:\[[^\]]*\])?\s*;$", line)
            assert field, f"abi test cannot parse struct member line in dilu_cuda.h: {raw!r}"
            stack[-1].append(field.group(1))
    return structs


# ---- prototypes ----

def test_prototypes_match_cuda_h(tmp_path: Path) -> None:
    result = _check_prototypes(tmp_path, SHIM_DIR)
    assert result.returncode == 0, f"dilu_cuda.h prototypes conflict with cuda.h:\n{result.stderr}"


def test_prototype_check_catches_a_wrong_parameter_type(tmp_path: Path) -> None:
    mutated = _mutate(HEADER.read_text(), MEM_ALLOC_ENTRY, r"\1unsigned int\2")
    result = _check_prototypes(tmp_path, _copy_header(tmp_path, mutated))
    assert result.returncode != 0, "a cuMemAlloc_v2 declared with `unsigned int bytesize` still compiled"
    assert "cuMemAlloc_v2" in result.stderr, result.stderr


def test_every_entry_point_is_declared_by_cuda_h(tmp_path: Path) -> None:
    # A prototype cuda.h lacks (a typo, a wrong _v2/_ptsz suffix) is not a conflict, so check
    # separately that cuda.h alone declares each name dilu_cuda.h declares.
    names = _declared_entry_points(tmp_path)
    x_entries = set(re.findall(r"\bX\(\s*(\w+)\s*,", _strip_comments(HEADER.read_text())))
    assert x_entries and x_entries <= set(names), f"not declared: {sorted(x_entries - set(names))}"
    assert len(set(names)) == len(names), f"duplicate declarations: {names}"

    def references(entry_points: list[str]) -> subprocess.CompletedProcess[str]:
        source = tmp_path / "references.c"
        refs = "".join(f"    (void (*)(void))&{name},\n" for name in entry_points)
        source.write_text(f"#define __CUDA_API_VERSION_INTERNAL\n#include <cuda.h>\n"
                          f"void (*const dilu_entry_points[])(void) = {{\n{refs}}};\n")
        return _cc(*CFLAGS, "-fsyntax-only", f"-I{CUDA_INCLUDE}", source)

    result = references(names)
    assert result.returncode == 0, f"dilu_cuda.h declares entry points cuda.h does not:\n{result.stderr}"
    bogus = references([*names, "cuDiluNoSuchEntryPoint"])
    assert bogus.returncode != 0 and "cuDiluNoSuchEntryPoint" in bogus.stderr, bogus.stderr


# ---- types and constants ----

def test_types_and_constants_match_cuda_h(tmp_path: Path) -> None:
    expected, actual = _probe_system(tmp_path), _probe_ours(tmp_path)
    assert actual == expected, "dilu_cuda.h differs from cuda.h:\n" + _probe_diff(expected, actual)


def test_probe_covers_everything_the_header_defines(tmp_path: Path) -> None:
    text = HEADER.read_text()
    printed = _probe_names(_probe_ours(tmp_path))

    constants = _header_constants(text)
    assert "CUDA_ERROR_UNKNOWN" in constants and "CU_STREAM_LEGACY" in constants, constants
    assert not constants - printed, f"abi_probe.c does not print constants: {sorted(constants - printed)}"

    typedefs = _header_typedefs(text)
    assert {"CUdevice", "CUstream", "CUresult", "CUmemAllocationProp"} <= typedefs, typedefs
    sized = {f"sizeof({name})" for name in typedefs}
    assert not sized - printed, f"abi_probe.c does not print: {sorted(sized - printed)}"

    structs = _header_struct_fields(text)
    assert "allocFlags.usage" in structs.get("CUmemAllocationProp", []), structs
    fields = {f"offsetof({struct},{field})" for struct, members in structs.items() for field in members}
    assert not fields - printed, f"abi_probe.c does not print: {sorted(fields - printed)}"


@pytest.mark.parametrize(("pattern", "replacement"), [
    (r"CUDA_ERROR_UNKNOWN = 999\b", "CUDA_ERROR_UNKNOWN = 998"),
    (r"(CUstream hStream;\s*CUlaunchAttribute \*attrs;\s*)unsigned int numAttrs;",
     r"\1unsigned long long numAttrs;"),
    (r"(unsigned char gpuDirectRDMACapable;\s*)unsigned short usage;", r"\1unsigned int usage;"),
], ids=["enum-value", "struct-field-type", "nested-field-type"])
def test_probe_catches_a_mismatch(tmp_path: Path, pattern: str, replacement: str) -> None:
    mutated = _mutate(HEADER.read_text(), pattern, replacement)
    actual = _probe_ours(tmp_path, _copy_header(tmp_path, mutated))
    assert actual != _probe_system(tmp_path), "a deliberately broken dilu_cuda.h still matched cuda.h"
