"""The report shows the newest nightly update's drift report: score with its thresholds, novel share,
clusters that grew or shrank, and the refit decision; a run without updates has no drift table."""
from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pytest

from scaleclust.cluster.drift import DriftCounts, report as drift_report
from scaleclust.stages import report
from scaleclust.versions import Versions
from tests.report_runs import build_run

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.timeout(300)]


def overview_table(index: Path, table_id: str) -> dict[str, str] | None:
    """The rows (name -> value) of one overview table of the page, as a reader sees them."""
    found = re.search(rf'<table class="kv" id="overview-{table_id}">(.*?)</table>', index.read_text(), re.S)
    if found is None:
        return None
    return {html.unescape(k): html.unescape(v) for k, v in re.findall(r"<th>(.*?)</th><td>(.*?)</td>", found.group(1))}


def test_report_shows_the_latest_drift(tmp_path: Path) -> None:
    cfg, run, shards = build_run(tmp_path, n_shards=2, rows_per_shard=60, k=4, image_shards=1)
    index = Path(report.run(cfg, run, shards)["report"])
    assert overview_table(index, "run") is not None and overview_table(index, "drift") is None

    # A night whose 50 new rows all land in cluster 0, 10 of them far from every cluster, and 0.1 of
    # them accepted yet in neighbourhoods of new rows only.
    sizes = dict(zip(*(run.read_table(run.clusters, ["cluster", "size"])[c].to_pylist() for c in ("cluster", "size"))))
    counts = DriftCounts()
    novel = np.arange(50) < 10
    counts.add(np.zeros(50, np.int32), np.full(50, 0.9, np.float32), novel, [f"k{i}" for i in range(50)], 0.5, 20)
    drift = {"parent": "00002-20261129T000000Z", "shards": ["00002"],
             **drift_report(sizes, counts, 2.0, 5, 0.1, 0.25, fresh=0.1)}
    history = Versions(run)
    older = {**drift, "score": 0.0, "status": "ok", "grown": [], "shrunk": []}  # an earlier night's report
    run.write_marker(history.path("00002-20261129T000000Z", "drift.json"), older)
    run.write_marker(history.path("00003-20261130T000000Z", "drift.json"), drift)
    run.write_marker(history.path("00003-20261130T000000Z", "decision.json"),
                     {"parent": drift["parent"], "refit": True, "reason": "drift score >= 0.25", "model": None})
    index = Path(report.run(cfg, run, shards)["report"])
    table = overview_table(index, "drift")
    total = sum(sizes.values())
    tv = 0.5 * (abs(1 - sizes[0] / total) + sum(n / total for c, n in sizes.items() if c != 0))
    assert table["version"] == "00003-20261130T000000Z"
    assert table["drift score"] == f"{tv + 0.2 + 0.1:.3f} (refit; warn at 0.1, refit at 0.25)"
    assert table["novel rows"].startswith("10 (20.0%)")
    assert table["fresh rows"].startswith("10.0% accepted by a cluster")
    assert table["new rows"] == "50"
    assert table["grew (new share >= 2.0x fitted)"] == "0"
    shrunk = [c for c, n in sorted(sizes.items()) if c != 0 and n / total * 50 >= 5]
    assert shrunk and table["shrank (new share <= 1/2.0 of fitted)"] == ", ".join(map(str, shrunk))
    assert table["refit"] == "yes: drift score >= 0.25"
