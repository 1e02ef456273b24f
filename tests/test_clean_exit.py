"""`scaleclust verify --deep` exits cleanly, every time: no abort at interpreter shutdown (it used to end
with exit 134, "terminate called without an active exception", about 1 time in 37: an Arrow reader
thread holding an fsspec file object reached for the GIL of the finalizing interpreter). Five runs here;
benchmarks/verify_exit.py runs fifty."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.runs import committed_run

CLI = [sys.executable, "-m", "scaleclust.cli"]


@pytest.mark.subprocess
@pytest.mark.timeout(600)
def test_verify_deep_exits_cleanly(tmp_path: Path) -> None:
    run = committed_run(tmp_path)
    for _ in range(5):
        done = subprocess.run([*CLI, "verify", run, "--deep"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and done.stdout.strip() == "verify: ok", done.stdout + done.stderr[-2000:]
        assert "terminate called" not in done.stderr
