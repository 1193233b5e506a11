"""Regenerate the Python code for protos/ into gen/python/ (committed; CI checks it is fresh)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "gen" / "python"


def main() -> int:
    shutil.rmtree(OUT / "dilu", ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    bin_dir = Path(sys.executable).parent
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}",
        f"--python_out={OUT}", f"--grpc_python_out={OUT}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={OUT}", f"--mypy_grpc_out={OUT}",
        *sources,
    ]
    subprocess.run(cmd, check=True, cwd=PROTOS)
    # Explicit packages so mypy and setuptools see them the same way.
    for folder in [OUT / "dilu", *(p for p in (OUT / "dilu").rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    print(f"generated {len(sources)} protos into {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
