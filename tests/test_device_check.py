"""benchmarks/device_check.sh, the prepared GPU check, in its CPU form: every step runs at toy sizes and
prints its JSON lines; a step that fails is reported with its traceback and the next still runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.subprocess


def check(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> tuple[int, list[dict]]:
    done = subprocess.run([str(ROOT / "benchmarks" / "device_check.sh"), "--dry-run", *args], capture_output=True,
                          text=True, timeout=timeout, env={**(env or os.environ), "PYTHON": sys.executable})
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_dry_run_runs_every_step() -> None:
    scratch = set(Path(tempfile.gettempdir()).glob("device-*"))
    code, lines = check()
    assert set(Path(tempfile.gettempdir()).glob("device-*")) == scratch, "a step left its scratch folder behind"
    steps = {line["step"]: line for line in lines if "step" in line}
    assert code == 0, [line for line in lines if line.get("ok") is False]
    assert set(steps) == {"env", "embed:vitb32", "kmeans", "ivf", "scan", "pipeline"}
    figures = {line.get("figure") for line in lines}
    assert {"env", "kmeans", "ivf", "scan_fit", "pipeline"} <= figures
    assert any(line.get("side") == "loader" for line in lines) and any(line.get("side") == "stage" for line in lines)
    pipeline = next(line for line in lines if line.get("figure") == "pipeline")
    assert pipeline["assigned"] == 64
    assert lines[-1] == {"summary": "device_check", "form": "dry", "steps": 6, "failed": 0}


@pytest.mark.timeout(300)
def test_a_failing_step_is_reported_and_the_next_runs(tmp_path: Path) -> None:
    (tmp_path / "faiss.py").write_text("raise ImportError('faiss is broken on this machine')\n")  # a bad package
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    code, lines = check("--only", "kmeans", "ivf", env=env, timeout=240)
    failed = [line for line in lines if line.get("ok") is False]
    assert code == 1 and [line["step"] for line in failed] == ["kmeans", "ivf"]
    assert all("faiss is broken on this machine" in line["traceback"] for line in failed)
    assert lines[-1]["failed"] == 2
