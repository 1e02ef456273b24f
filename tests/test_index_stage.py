"""Index, neighbors, dedup and search stages on one pipeline run of the tiny model (a copy of the session's
finished run, shared per module)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from scaleclust.cli import main
from scaleclust.index import build
from scaleclust.index import manifest as index_manifest
from scaleclust.stages import index as stage, neighbors
from scaleclust.index.pairs import group_duplicates, pairs_within_clusters
from scaleclust.index.search import search
from scaleclust.index.actors import fan_out, searchers
from scaleclust.pipeline import prepare, run_stage
from scaleclust.rundir import RunDir
from tests.conftest import SHARED_INDEX, FinishedRun, SharedRun, tiny_config
from tests.shards import write_synthetic_shards

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.timeout(300)]

INDEX = SHARED_INDEX


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, shared_run: SharedRun,
            finished_run: FinishedRun) -> dict[str, Any]:
    """A copy of the session's finished run (the shared run's 4 shards of 30 images and dups.tar, indexed, then
    run through every stage)."""
    folder = tmp_path_factory.mktemp("index")
    cfg = finished_run.copy(folder)
    return {"cfg": cfg, "run": RunDir(cfg.run_dir, cfg.storage), "pairs": shared_run.pairs, "folder": folder,
            "result": shared_run.index}


def test_sharded_search_equals_one_unsharded_index(indexed: dict[str, Any]) -> None:
    run = indexed["run"]
    manifest = index_manifest.load_manifest(run)
    assert indexed["result"]["trained"] and len(manifest["shards"]) == 5 > INDEX["shards_per_searcher"]
    assert manifest["spec"]["nlist"] == 4 and "bytes_per_vector" in manifest["spec"]
    vectors = np.concatenate([v for _, v in index_manifest.shard_vectors(run, manifest)])
    assert manifest["next_id"] == manifest["rows"] == len(vectors)
    whole = build.add(run.read_bytes(index_manifest.trained_url(run)), vectors, 0)
    queries = vectors[::5]
    want_sims, want_ids = search([whole], queries, 8, nprobe=2)  # one more: a tie at the 7th is seen
    with searchers(run, manifest, INDEX["shards_per_searcher"]) as actors:
        assert len(actors) == 3  # 5 shards, 2 per searcher
        sims, ids = fan_out(actors, queries, 7, nprobe=2)
    np.testing.assert_allclose(sims, want_sims[:, :7], rtol=1e-5, atol=1e-6)
    # The same ids, except that of two neighbours with the same similarity (the tiny model puts a class's
    # images above cosine 0.9999, so float32 ties occur) either may come first, or be the 7th.
    for row, rank in zip(*np.nonzero(ids != want_ids[:, :7])):
        tied = want_ids[row][np.abs(want_sims[row] - want_sims[row, rank]) <= 1e-6]
        assert ids[row, rank] in tied, (row, rank, ids[row], want_ids[row])
    assert all(len(set(row)) == 7 for row in ids.tolist())
    assert stage.run(indexed["cfg"], run)["added"] == 0  # idempotent: nothing new to add


def test_neighbors_graph_and_recall(indexed: dict[str, Any]) -> None:
    run = indexed["run"]
    result = neighbors.run(indexed["cfg"], run)
    graph = pq.read_table(run.path("neighbors", "part-00000.parquet")).to_pylist()
    assert run.exists(run.path("neighbors", "done.json")) and len(graph) == INDEX["queries"]
    assert len({row["key"] for row in graph}) == len(graph)
    for row in graph:
        assert len(row["neighbor_keys"]) == INDEX["k"] and row["key"] not in row["neighbor_keys"]
        assert row["sims"] == sorted(row["sims"], reverse=True)
    metrics = run.marker(run.metrics)
    assert "counts" in metrics and "seconds" in metrics  # merged, not replaced
    assert metrics["neighbors"]["recall_at_k"] == result["recall_at_k"] >= 0.9
    assert metrics["neighbors"]["recall_queries"] == INDEX["recall_queries"]


@pytest.mark.parametrize("scope", ["cluster", "all"])
def test_planted_near_duplicates_one_keeper_per_group(indexed: dict[str, Any], scope: str, capsys) -> None:
    run = indexed["run"]
    assert main(["dedup", indexed["cfg"].run_dir, "--threshold", "0.98", "--scope", scope]) == 0
    assert "0.990" in capsys.readouterr().out
    rows = pq.read_table(run.path("duplicates.parquet")).to_pylist()
    group = {r["key"]: r["group"] for r in rows}
    for original, copy in indexed["pairs"]:
        assert original in group and group[original] == group.get(copy)
    by_group: dict[int, list[dict]] = {}
    for r in rows:
        by_group.setdefault(r["group"], []).append(r)
    # The tiny random-weight model maps a whole class to cosine > 0.99, so groups are at least class-sized;
    # the three classes must still stay apart.
    assert len(by_group) >= 3
    for members in by_group.values():
        keepers = [m["key"] for m in members if m["is_keeper"]]
        assert len(keepers) == 1 and all(m["keeper_key"] == keepers[0] for m in members)
        assert all(m["max_sim"] >= 0.98 for m in members)
    if scope == "all":  # the same groups and keepers as exact all-pairs dedup, across the index's lists
        manifest = index_manifest.load_manifest(run)
        shards = list(index_manifest.shard_vectors(run, manifest))
        ids = np.concatenate([first + np.arange(len(v)) for first, v in shards])
        exact = group_duplicates(pairs_within_clusters(np.concatenate([v for _, v in shards]), ids, None, 0.98))
        keys = index_manifest.ids_to_keys(run, manifest, np.concatenate([exact.ids, exact.group]))
        assert {(r["key"], r["keeper_key"], r["is_keeper"]) for r in rows} == set(
            zip(keys[:len(exact.ids)], keys[len(exact.ids):], exact.keep.tolist()))
        primary = np.concatenate([np.load(run.path("index", e["lists"]))[:, 0]
                                  for e in sorted(manifest["shards"].values(), key=lambda e: e["first_id"])])
        at = np.searchsorted(ids, exact.ids), np.searchsorted(ids, exact.group)
        assert (primary[at[0]] != primary[at[1]]).any()  # members in another list than their keeper's


def test_search_by_key_image_and_text(indexed: dict[str, Any], capsys) -> None:
    run_dir = indexed["cfg"].run_dir
    key = pq.read_table(indexed["run"].embeddings("00001"), columns=["key"])["key"][3].as_py()
    assert main(["search", run_dir, "--key", key, "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[1].split()[-1] == key and float(lines[1].split()[1]) > 0.999
    image = str(indexed["folder"] / "shards" / "orig0.jpg")
    assert main(["search", run_dir, "--image", image, "--k", "2"]) == 0
    top = capsys.readouterr().out.splitlines()[1].split()
    assert top[-1] in indexed["pairs"][0] and float(top[1]) > 0.99  # the same preprocessing as embed
    assert main(["search", run_dir, "--text", "a red disk", "--k", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_incremental_add_without_retraining(indexed: dict[str, Any], shared_run: SharedRun, tmp_path: Path) -> None:
    """A nightly shard is added under new ids; a re-embedded shard is re-added under a new range. On a copy
    of the module's run: the other tests must find it as built, whichever order they run in."""
    folder = replace(shared_run, folder=indexed["folder"]).copy(tmp_path)
    cfg = tiny_config(str(folder / "run"), str(folder / "shards" / "*.tar"), index=INDEX)
    run = RunDir(cfg.run_dir, cfg.storage)
    trained = run.read_bytes(index_manifest.trained_url(run))
    before = index_manifest.load_manifest(run)
    new = write_synthetic_shards(folder / "nightly", n_shards=5, per_shard=10)[4:]
    cfg = cfg.model_copy(update={"input": cfg.input.model_copy(update={"shards": cfg.input.shards + new})})
    Path(run.embeddings_marker("00000")).unlink()  # as if 00000 were re-embedded: a new commit
    ctx = prepare(cfg)
    run = ctx.run
    run_stage("embed", ctx)
    result = stage.run(cfg, run)
    after = index_manifest.load_manifest(run)
    assert not result["trained"] and result["added"] == 2
    assert run.read_bytes(index_manifest.trained_url(run)) == trained
    kept = set(before["shards"]) - {"00000"}
    assert {s: after["shards"][s] for s in kept} == {s: before["shards"][s] for s in kept}
    assert after["shards"]["00000"]["first_id"] == before["next_id"]  # sorted: 00000 before 00004
    assert after["shards"]["00004"]["first_id"] == before["next_id"] + 30
    assert after["shards"]["00004"]["count"] == 10 and after["next_id"] == before["next_id"] + 40
    files = sorted(Path(run.path("index", "shards")).iterdir())
    assert [f"shards/{f.name}" for f in files] == sorted(e[f] for e in after["shards"].values() for f in ("file", "lists"))
    keys = index_manifest.ids_to_keys(run, after, np.array([before["next_id"], before["next_id"] + 30]))
    assert keys[0].startswith("00000") and keys[1].startswith("00004")
    with pytest.raises(ValueError):
        index_manifest.ids_to_keys(run, after, np.array([before["shards"]["00000"]["first_id"]]))  # dropped range
