"""A report after a night that only added shards reads just those shards and the thumbnails it has not
written before, and shows what a full pass over every shard shows."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scaleclust.stages import report
from tests.report_runs import build_run

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.timeout(300)]


def test_added_shards_are_merged_into_the_last_pass(tmp_path: Path) -> None:
    cfg, run, shards = build_run(tmp_path, n_shards=6, rows_per_shard=200, k=5, image_shards=3)
    tonight = Path(run.assignments_marker("00005"))
    held = tonight.read_bytes()
    tonight.unlink()  # the last shard arrives "tonight"
    first = report.run(cfg, run, shards)
    assert first["shards_read"] == 5 and first["thumbnails_read"] == first["thumbnails"] > 0

    tonight.write_bytes(held)
    second = report.run(cfg, run, shards)
    cache = Path(run.path("report-picks.json"))
    merged = json.loads(cache.read_text())
    assert second["shards_read"] == 1 and second["thumbnails_read"] == 0
    assert second["thumbnails"] == first["thumbnails"]
    assert sum(merged["picks"]["hist"]) == 6 * 200

    cache.unlink()
    full = report.run(cfg, run, shards)
    assert full["shards_read"] == 6
    assert json.loads(cache.read_text())["picks"] == merged["picks"]


def test_a_new_dedup_result_or_member_count_means_a_full_pass(tmp_path: Path) -> None:
    cfg, run, shards = build_run(tmp_path, n_shards=4, rows_per_shard=100, k=4, image_shards=1)
    assert report.run(cfg, run, shards)["shards_read"] == 4
    assert report.run(cfg, run, shards)["shards_read"] == 0  # nothing changed
    keys = pq.read_table(run.embeddings("00002"), columns=["key"])["key"].to_pylist()[:10]
    pq.write_table(pa.table({"key": keys, "is_keeper": [False] * 10}), run.path("duplicates.parquet"))
    assert report.run(cfg, run, shards)["shards_read"] == 4
    assert sum(json.loads(Path(run.path("report-picks.json")).read_text())["picks"]["duplicates"]) == 10
    fewer = cfg.model_copy(update={"report": cfg.report.model_copy(update={"images": cfg.report.images - 1})})
    assert report.run(fewer, run, shards)["shards_read"] == 4
