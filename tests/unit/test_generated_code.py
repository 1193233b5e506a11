"""The committed generated code must match what `make gen` produces from protos/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_generated_code_is_fresh(tmp_path: Path):
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "protos", copy / "protos")
    shutil.copytree(ROOT / "scripts", copy / "scripts")
    subprocess.run([sys.executable, str(copy / "scripts" / "gen_protos.py")], check=True,
                   capture_output=True)
    fresh = _files(copy / "gen" / "python")
    committed = _files(ROOT / "gen" / "python")
    assert sorted(fresh) == sorted(committed), "run `make gen` and commit the result"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated files (run `make gen`): {stale}"
