"""Index stage with IVF-PQ + re-ranking on a LAION-layout dump: stored vectors, nprobe auto from measured recall."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scaleclust.index import manifest as index_manifest
from scaleclust.stages import index as stage, neighbors
from scaleclust.index.build import from_bytes, load_shard, unit_float32
from scaleclust.index.calibrate import nprobe_ladder
from scaleclust.index.knn import drop_self, recall_at_k
from scaleclust.index.search import Refine, search
from scaleclust.index.synthetic import clustered_vectors
from scaleclust.index.vectors import StoredVectors
from scaleclust.pipeline import prepare, run_stage
from scaleclust.rundir import RunDir
from tests.conftest import tiny_config

faiss.omp_set_num_threads(1)
pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.timeout(300)]

PARTS, ROWS, DIM = 3, 1500, 32
INDEX = {"kind": "ivf_pq", "pq_m": 8, "opq": False, "refine_factor": 10, "nlist": 32, "nprobe": "auto",
         "target_recall": 0.9, "k": 5, "queries": 300, "recall_queries": 200, "shards_per_searcher": 2}


def write_dump(root: Path) -> np.ndarray:
    """PARTS parts of ROWS clustered fp16 unit vectors in clip-retrieval's layout; all rows in order."""
    x, _ = clustered_vectors(PARTS * ROWS, DIM, n_clusters=300, noise=1.0, seed=5)
    for name in ("img_emb", "metadata"):
        (root / name).mkdir(parents=True)
    for n in range(PARTS):
        np.save(root / "img_emb" / f"img_emb_{n}.npy", x[n * ROWS:(n + 1) * ROWS].astype(np.float16))
        pq.write_table(pa.table({"key": [f"{n}-{i:05d}" for i in range(ROWS)]}),
                       root / "metadata" / f"metadata_{n}.parquet")
    return x


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, ray_local: Path) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("calibrate")
    write_dump(folder / "dump")
    cfg = tiny_config(str(folder / "run"), str(folder / "dump"), input={"format": "laion_embeddings"}, index=INDEX)
    ctx = prepare(cfg)
    run = ctx.run
    run_stage("embed", ctx)
    return {"cfg": cfg, "run": run, "result": stage.run(cfg, run)}


def test_nprobe_ladder_doubles_up_to_nlist():
    assert nprobe_ladder(1) == [1]
    assert nprobe_ladder(32) == [1, 2, 4, 8, 16, 32]
    assert nprobe_ladder(40) == [1, 2, 4, 8, 16, 32, 40]


def test_resolve_nprobe_needs_a_calibration():
    assert index_manifest.resolve_nprobe(7, {}) == 7
    assert index_manifest.resolve_nprobe("auto", {"calibration": {"nprobe": 4}}) == 4
    with pytest.raises(RuntimeError, match="no calibration"):
        index_manifest.resolve_nprobe("auto", {"spec": {}})


def test_stored_vectors_beside_each_shard(indexed: dict[str, Any]) -> None:
    run: RunDir = indexed["run"]
    manifest = index_manifest.load_manifest(run)
    assert manifest["spec"]["factory"] == "IVF32,PQ8x8np" and manifest["spec"]["refine_factor"] == 10
    assert manifest["spec"]["bytes_per_vector"] == 16 and manifest["spec"]["stored_bytes_per_vector"] == 2 * DIM
    for first_id, vectors in index_manifest.shard_vectors(run, manifest):
        entry = next(e for e in manifest["shards"].values() if e["first_id"] == first_id)
        stored = np.load(run.path("index", entry["vectors"]))
        assert stored.dtype == np.float16
        np.testing.assert_array_equal(stored, unit_float32(vectors).astype(np.float16))
    files = {f.name for f in Path(run.path("index", "shards")).iterdir()}
    assert files == {e[f].rpartition("/")[2] for e in manifest["shards"].values() for f in ("file", "vectors", "lists")}


def test_auto_nprobe_is_the_smallest_reaching_the_target(indexed: dict[str, Any]) -> None:
    run, cfg = indexed["run"], indexed["cfg"]
    manifest = index_manifest.load_manifest(run)
    calibration = manifest["calibration"]
    assert indexed["result"]["calibration"] == calibration
    chosen = calibration["nprobe"]
    assert calibration["reached"] and calibration["recall_at_k"] >= 0.9 and calibration["queries"] == 200
    assert sorted(calibration["tried"], key=int) == [str(p) for p in nprobe_ladder(32) if p <= chosen]  # JSON sorts keys as text
    assert all(r < 0.9 for p, r in calibration["tried"].items() if int(p) < chosen)
    assert chosen > 1  # PQ8 on these clusters needs more than one list: the search is a real one
    # recall at the chosen nprobe, measured here without Ray: the shard files, re-ranked, vs numpy's exact top-k
    entries = sorted(manifest["shards"].values(), key=lambda e: e["first_id"])
    x = np.concatenate([v for _, v in index_manifest.shard_vectors(run, manifest)])
    xs = unit_float32(x)
    refine = Refine([StoredVectors(run.path("index", e["vectors"]), run.storage, e["first_id"]) for e in entries], 10)
    trained = from_bytes(run.read_bytes(index_manifest.trained_url(run)))  # shard files leave the quantizer out
    indexes = [load_shard(run.read_bytes(run.path("index", e["file"])), trained) for e in entries]
    q = np.arange(0, len(x), 7)
    truth = np.argsort(-(xs[q] @ xs.T), axis=1)[:, :cfg.index.k + 1]
    got = drop_self(search(indexes, x[q], cfg.index.k + 1, chosen, refine), q, cfg.index.k)
    exact = drop_self((np.zeros(truth.shape, np.float32), truth), q, cfg.index.k)
    assert recall_at_k(got[1], exact[1]) >= 0.85


def test_neighbors_use_it_and_a_rerun_keeps_it(indexed: dict[str, Any]) -> None:
    run, cfg = indexed["run"], indexed["cfg"]
    before = index_manifest.load_manifest(run)["calibration"]
    result = neighbors.run(cfg, run)
    assert result["nprobe"] == before["nprobe"] and result["recall_at_k"] >= 0.85
    again = stage.run(cfg, run)
    assert again["added"] == 0 and again["calibration"] == before  # nothing added: not measured again
    stricter = cfg.model_copy(update={"index": cfg.index.model_copy(update={"target_recall": 0.99})})
    assert stage.run(stricter, run)["calibration"]["nprobe"] >= before["nprobe"]
    assert index_manifest.load_manifest(run)["calibration"]["target_recall"] == 0.99
