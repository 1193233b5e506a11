"""Log files rotate at their size bound, keep a few old files, and carry the process's raw
stderr with them (issue 11: logs were never rotated)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_CHILD = """
import logging, os, sys
from services.common.logs import setup_logging
setup_logging("svc", "INFO", sys.argv[1], max_bytes=4096, backups=2)
log = logging.getLogger("x")
for i in range(400):
    log.info("line %d %s", i, "y" * 40)
os.write(2, b"raw stderr after rotating\\n")
print("stdout after rotating", flush=True)
import warnings; warnings.warn("a warning goes through logging")
"""


def test_a_service_log_rotates_keeps_a_few_files_and_follows_stderr(tmp_path: Path):
    log = tmp_path / "svc.log"
    subprocess.run([sys.executable, "-c", _CHILD, str(log)], check=True, cwd=ROOT, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["svc.log", "svc.log.1", "svc.log.2"]
    assert all(f.stat().st_size <= 4096 + 200 for f in files)
    current = log.read_text()
    assert "line 399" in current and "raw stderr after rotating" in current
    assert "stdout after rotating" in current and "a warning goes through logging" in current
    assert "line 0 " not in "".join(f.read_text() for f in files)  # the oldest were dropped
