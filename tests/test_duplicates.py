"""A key that two shards both contain is embedded once (first shard by name) and recorded as a
DuplicateKey error in the other shard; the run keeps its invariants and a re-run changes nothing."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from scaleclust.embed.dedupe import find_duplicates
from scaleclust.pipeline import prepare, run_all, run_stage
from scaleclust.rundir import RunDir
from scaleclust.sources.shard_writer import tar_bytes
from scaleclust.verify import verify
from tests.shards import synthetic_samples

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.timeout(300)]


def test_keys_repeated_across_shards(tmp_path: Path, make_config) -> None:
    a, b = synthetic_samples(0, 10, seed=5), synthetic_samples(1, 10, seed=5)
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "a.tar").write_bytes(tar_bytes(a))
    (folder / "b.tar").write_bytes(tar_bytes(b[:6] + a[:4]))  # b repeats four of a's keys
    cfg = make_config(str(tmp_path / "run"), str(folder / "*.tar"))
    metrics = run_all(cfg)
    assert verify(cfg.run_dir, deep=True) == []
    run = RunDir(cfg.run_dir, cfg.storage)
    errors = run.read_table(run.errors("b")).to_pylist()
    assert sorted(e["key"] for e in errors) == sorted(key for key, _ in a[:4])
    assert all(e["error"] == "DuplicateKey: kept in shard a" for e in errors)
    assert metrics["counts"]["embedded"] == 16 and metrics["counts"]["errors"] == 4
    assert metrics["counts"]["assigned"] == 16
    before = run.committed("embeddings")
    run_all(cfg)
    assert run.committed("embeddings") == before


def test_one_task_and_the_shuffle_find_the_same_duplicates(tmp_path: Path, make_config) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "a.tar").write_bytes(tar_bytes(synthetic_samples(0, 8, seed=3)))
    (folder / "b.tar").write_bytes(tar_bytes(synthetic_samples(1, 8, seed=3)))
    cfg = make_config(str(tmp_path / "run"), str(folder / "*.tar"))
    ctx = prepare(cfg)
    run = ctx.run
    run_stage("embed", ctx)  # find_duplicates reads committed embeddings only
    shutil.copy(run.embeddings("a"), run.embeddings("c"))  # shard c: a copy of a, committed behind the stage's back
    shutil.copy(run.embeddings_marker("a"), run.embeddings_marker("c"))
    a_keys = run.read_table(run.embeddings("a"), ["key"])["key"].to_pylist()
    expected = {key: ["a", "c"] for key in a_keys}
    assert len(expected) == 8
    assert find_duplicates(run, ["a", "b", "c"], 24) == expected  # one task
    assert find_duplicates(run, ["a", "b", "c"], 24, keys_per_task=5) == expected  # a 5-partition shuffle
