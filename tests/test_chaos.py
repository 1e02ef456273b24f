"""The fault campaign's short form (benchmarks/chaos.py --short): one fault of every kind, on the S3
server with a Ray head of its own, and the invariants it checks all holding."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.subprocess
@pytest.mark.s3
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_short_chaos_campaign_loses_nothing(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "chaos.py"), "--short", "--work",
                           str(tmp_path / "work"), "--json", str(figures)],
                          cwd=REPO, capture_output=True, text=True, timeout=880)
    assert figures.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(figures.read_text())
    injected = {kind: result["faults"].get(kind, {}).get("injected", 0) for kind in result["kinds"]}
    assert len(injected) == 5 and all(injected.values()), f"not every kind of fault landed: {injected}"
    in_stages = {kind: sum(result["faults"].get(f"{kind} @ {stage}", {}).get("injected", 0)
                           for stage in result["stages"]) for kind in result["kinds"]}
    assert in_stages == injected, result["faults"]  # each fault counted in one stage of the table
    assert result["rows_lost"] == 0 and result["rows_duplicated"] == 0, result["nights"]
    assert result["tracebacks"] == [] and result["overlaps"] == [], (result["tracebacks"], result["overlaps"])
    assert all(n["completed"] and set(n["invariants"].values()) == {"ok"} for n in result["nights"]), result["nights"]
    assert "verify_deep" in result["nights"][-1]["invariants"]
    assert done.returncode == 0, done.stdout[-3000:]
