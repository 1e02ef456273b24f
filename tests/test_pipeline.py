"""The whole pipeline on a local Ray: bad input is recorded and skipped, re-runs redo only missing
work, and the run directory keeps its invariants (each key exactly once)."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from scaleclust.pipeline import STAGES, run_all
from scaleclust.rundir import RunDir
from scaleclust.verify import verify
from tests.conftest import FinishedRun
from tests.shards import BAD_KEYS, write_bad_shards

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.timeout(300)]


def test_bad_input_is_recorded_and_the_job_goes_on(tmp_path: Path, shards: list[str], make_config) -> None:
    bad = write_bad_shards(tmp_path / "bad")
    cfg = make_config(str(tmp_path / "run"), shards + bad)
    metrics = run_all(cfg)
    assert verify(cfg.run_dir, deep=True) == []
    run = RunDir(cfg.run_dir, cfg.storage)
    errors = pq.read_table(run.errors("bad-mixed")).to_pylist()
    assert {e["key"] for e in errors} == BAD_KEYS
    assert all(e["shard"] == "bad-mixed" and e["stage"] == "embed" and e["error"] for e in errors)
    cut = pq.read_table(run.errors("bad-cut")).to_pylist()
    assert cut and all(e["error"].startswith(("Truncated", "NoImage")) for e in cut)
    embedded_cut = run.committed("embeddings")["bad-cut"]["embedded"]
    assert embedded_cut >= 1
    counts = metrics["counts"]
    assert counts["embedded"] == 36 + 4 + embedded_cut
    assert counts["errors"] == len(BAD_KEYS) + len(cut)
    assert counts["assigned"] == counts["embedded"]
    clusters = pq.read_table(run.clusters).to_pylist()
    assert sum(c["size"] for c in clusters) == counts["embedded"]
    assert all(len(c["exemplar_keys"]) > 0 for c in clusters if c["size"])
    assert metrics["labels"]["acc"] > 0.6  # three visually distinct classes; chance is 1/3
    assert set(metrics["seconds"]) == {s.name for s in STAGES} - {"index", "neighbors"}  # k-means needs no index


def test_rerun_redoes_only_missing_work(tmp_path: Path, finished_run: FinishedRun) -> None:
    cfg = finished_run.copy(tmp_path)  # embedded, fitted, assigned and named already
    run = RunDir(cfg.run_dir, cfg.storage)
    before_embed = run.committed("embeddings")
    before_assign = run.committed("assignments")
    model = run.marker(run.model("model.json"))["model_id"]
    # As if killed mid-way: shard 00001 lost its marker with a stale part left behind, and shard
    # 00002 was killed while being assigned.
    Path(run.embeddings_marker("00001")).unlink()
    stale = Path(run.embedding_parts("00001")) / "stale.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(Path(run.embeddings("00001")).read_bytes())
    Path(run.assignments_marker("00002")).unlink()
    run_all(cfg)
    after_embed = run.committed("embeddings")
    after_assign = run.committed("assignments")
    assert after_embed["00000"]["commit"] == before_embed["00000"]["commit"]
    assert after_embed["00002"]["commit"] == before_embed["00002"]["commit"]
    assert after_embed["00001"]["commit"] != before_embed["00001"]["commit"]
    assert after_assign["00000"] == before_assign["00000"]
    assert after_assign["00001"]["embed_commit"] == after_embed["00001"]["commit"]
    assert "00002" in after_assign
    assert run.marker(run.model("model.json"))["model_id"] == model  # no refit
    assert not stale.exists()
    assert verify(cfg.run_dir, deep=True) == []


def test_changed_cluster_params_refit_and_reassign(tmp_path: Path, finished_run: FinishedRun) -> None:
    cfg = finished_run.copy(tmp_path)
    run = RunDir(cfg.run_dir, cfg.storage)
    first = run.marker(run.model("model.json"))["model_id"]
    cfg.cluster.k = 4
    metrics = run_all(cfg)
    assert run.marker(run.model("model.json"))["model_id"] != first
    assert {m["model"] for m in run.committed("assignments").values()} != {first}
    assert metrics["counts"]["clusters"] == 4
    assert verify(cfg.run_dir) == []
