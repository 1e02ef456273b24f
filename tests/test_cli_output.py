"""What a person sees on the command line: a quiet run (progress bars and short lines, no Ray INFO
logs, no known-harmless warnings) ending with the report's path; `info` on the run; one line and
exit 2 for a bad run directory, with the traceback only under --verbose."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import private_ray_env
from tests.shards import write_synthetic_shards
from tests.test_cli import config_file

CLI = [sys.executable, "-m", "scaleclust.cli"]
pytestmark = pytest.mark.subprocess
RAY_NOISE = (" INFO ", "RayDeprecationWarning", "core_worker", "Progress bars disabled", "Execution plan",
             "Failed to query Ray Train Controller")


@pytest.mark.ray  # the CLI's own
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_quiet_run_then_info_and_report(tmp_path: Path) -> None:
    write_synthetic_shards(tmp_path / "shards", 3, 12)
    cfg = config_file(tmp_path, str(tmp_path / "shards" / "*.tar"))
    with private_ray_env() as env:
        done = subprocess.run([*CLI, "run", str(cfg)], capture_output=True, text=True, timeout=360, env=env)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert [line for line in out.splitlines() if any(noise in line for noise in RAY_NOISE)] == []
    report = tmp_path / "run" / "report" / "index.html"
    assert done.stdout.splitlines()[-1] == f"report: {report}" and report.exists()
    assert re.search(r"embed: 100%.*\| 36(\.0)?/36(\.0)? ", done.stderr)  # the stage's progress bar, in rows

    marker = json.loads(next((tmp_path / "run" / "embeddings").glob("*.done.json")).read_text())
    assert marker["error_types"] == {} and 0 < marker["busy_seconds"]
    # busy_seconds is stored to the millisecond: rows / images_per_second gives it back to that rounding (a
    # relative bound fails when a shard takes under 25 ms)
    assert marker["embedded"] / marker["images_per_second"] == pytest.approx(marker["busy_seconds"], abs=6e-4)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["rows_per_second"]["embed"] > 0

    info = subprocess.run([*CLI, "info", str(tmp_path / "run")], capture_output=True, text=True, timeout=60)
    assert info.returncode == 0, info.stderr
    for stage in ("embed", "fit", "assign", "summary", "report"):
        assert any(line.split()[:2] == [stage, "committed"] for line in info.stdout.splitlines()), (stage, info.stdout)
    assert "3/3 shards" in info.stdout and "rows 36: embedded 36, skipped 0" in info.stdout


@pytest.mark.parametrize("command", ["info", "report"])
def test_bad_run_directory_is_one_line_and_exit_2(tmp_path: Path, command: str) -> None:
    missing = str(tmp_path / "no-such-run")
    argv = [command, missing]
    done = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert missing in done.stderr and "Traceback" not in done.stderr
    if command == "info":  # the traceback comes back with --verbose (same handler for every command)
        loud = subprocess.run([*CLI, *argv, "--verbose"], capture_output=True, text=True, timeout=120)
        assert loud.returncode == 2 and "Traceback" in loud.stderr
