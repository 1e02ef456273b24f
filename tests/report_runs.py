"""Run directories written straight to disk for report tests and the report benchmark: synthetic
embeddings, assignments, clusters.parquet and metrics.json in the run-directory layout (through the
real writers), with some shards real WebDataset tars whose images the report reads back. The other
shards are planned as LAION embedding parts (no images: the report shows their URL and caption)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import yaml

from scaleclust.cluster.metrics import Contingency, scores
from scaleclust.config import Config, from_dict
from scaleclust.tables import embedding_array, write_commit
from scaleclust.rundir import RunDir, assignments_file
from scaleclust.sources import ShardSpec
from scaleclust.sources.shard_writer import tar_bytes
from tests.shards import synthetic_samples

Samples = Callable[[int, int], list[tuple[str, dict[str, bytes]]]]  # (shard, rows) -> samples


def _tar_samples(shard: int, rows: int) -> list[tuple[str, dict[str, bytes]]]:
    return synthetic_samples(shard, rows, seed=7)


def build_run(root: Path, n_shards: int, rows_per_shard: int, k: int, image_shards: int, dim: int = 32,
              seed: int = 0, samples: Samples = _tar_samples, names: list[str | None] | None = None,
              top_names: list[list[str]] | None = None, report: dict | None = None,
              image_rows: int | None = None) -> tuple[Config, RunDir, dict[str, ShardSpec]]:
    """Write a committed run (embed, fit, assign, summary done) under root/run; return what the report
    stage takes. The first `image_shards` shards are tars under root/shards whose samples come from
    `samples` (`image_rows` each, default rows_per_shard); their rows are the most confident of their
    clusters, so their images are the ones shown."""
    rng = np.random.default_rng(seed)
    run = root / "run"
    (root / "shards").mkdir(parents=True, exist_ok=True)
    centroids = rng.standard_normal((k, dim)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    popularity = 1.0 / (np.arange(k) + 5.0)  # uneven sizes, like real clusters
    popularity /= popularity.sum()
    shards: dict[str, ShardSpec] = {}
    sizes = np.zeros(k, np.int64)
    conf_sum = np.zeros(k)
    contingency = Contingency()
    cfg = from_dict({"run_dir": str(run), "input": {"shards": [str(root / "shards" / "*.tar")], "label_field": "label"},
                     "embed": {"model": {"arch": "scaleclust-tiny"}}, "cluster": {"method": "kmeans", "k": k},
                     **({"report": report} if report else {})})
    rundir = RunDir(cfg.run_dir, cfg.storage)
    for s in range(n_shards):
        name = f"{s:05d}"
        if s < image_shards:
            tar = samples(s, image_rows or rows_per_shard)
            (root / "shards" / f"{name}.tar").write_bytes(tar_bytes(tar))
            shards[name] = ShardSpec((str(root / "shards" / f"{name}.tar"),))
            keys = [key for key, _ in tar]
            captions = [m.get("txt", b"").decode() or None for _, m in tar]
            urls = [json.loads(m["json"]).get("url") if "json" in m else None for _, m in tar]
            conf = rng.uniform(0.9, 1.0, len(keys))
        else:
            shards[name] = ShardSpec((str(root / "laion" / f"img_emb_{s}.npy"), str(root / "laion" / f"metadata_{s}.parquet")),
                                     str(root / "laion"), "laion")
            keys = [f"{name}-{i:06d}" for i in range(rows_per_shard)]
            captions = [f"synthetic caption {i % 97}" for i in range(rows_per_shard)]
            urls = [f"https://example.com/{key}.jpg" for key in keys]
            conf = rng.beta(5, 2, len(keys)) * 0.9
        clusters = rng.choice(k, size=len(keys), p=popularity).astype(np.int32)
        emb = centroids[clusters] + 0.3 * rng.standard_normal((len(keys), dim)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        labels = [str(c % 10) for c in clusters]
        table = pa.table({"key": pa.array(keys, pa.string()), "embedding": embedding_array(emb),
                          "caption": pa.array(captions, pa.string()), "url": pa.array(urls, pa.string()),
                          "width": pa.array(np.full(len(keys), 64, np.int32)),
                          "height": pa.array(np.full(len(keys), 64, np.int32)),
                          "label": pa.array(labels, pa.string()), "shard": pa.array([name] * len(keys), pa.string())})
        write_commit(rundir, name, shards[name].urls[0], table, pa.table({"key": pa.array([], pa.string()),
                     "error": pa.array([], pa.string())}), "embed", time.time(), "synthetic")
        rundir.write_table(rundir.assignments(name, "synthetic", "c0"), pa.table({
            "key": table["key"], "cluster": pa.array(clusters), "confidence": pa.array(conf.astype(np.float32)),
            "cluster2": pa.array((clusters + 1) % k)}))
        rundir.write_marker(rundir.assignments_marker(name), {"shard": name, "rows": len(keys), "model": "synthetic",
                                                             "file": assignments_file(name, "synthetic", "c0")})
        sizes += np.bincount(clusters, minlength=k)
        np.add.at(conf_sum, clusters, conf)
        contingency.update(clusters, labels)
    record = {"config": cfg.model_dump(mode="json"), "versions": {},
              "shards": {n: {"urls": list(sp.urls), "root": sp.root, "kind": sp.kind} for n, sp in shards.items()}}
    (run / "config.yaml").write_text(yaml.safe_dump(record, sort_keys=False))
    rundir.write_marker(rundir.model("model.json"), {"method": "kmeans", "k": k, "dim": dim, "model_id": "synthetic",
                                                    "sample_rows": int(sizes.sum())})
    rundir.write_table(rundir.clusters, pa.table({
        "cluster": pa.array(np.arange(k, dtype=np.int32)), "size": pa.array(sizes),
        "mean_confidence": pa.array((conf_sum / np.maximum(sizes, 1)).astype(np.float32)),
        "name": pa.array(names or [None] * k, pa.string()), "name_score": pa.array([0.5 if names else None] * k, pa.float32()),
        "top_names": pa.array(top_names or [[] for _ in range(k)], pa.list_(pa.string())),
        "exemplar_keys": pa.array([[] for _ in range(k)], pa.list_(pa.string())),
        "centroid": pa.FixedSizeListArray.from_arrays(pa.array(centroids.reshape(-1)), dim)}))
    rows = int(sizes.sum())
    rundir.write_marker(rundir.metrics, {
        "seconds": {"embed": 1.0, "fit": 1.0, "assign": 1.0, "summary": 1.0},
        "counts": {"shards": n_shards, "rows": rows, "embedded": rows, "errors": 0, "assigned": rows,
                   "clusters": k, "non_empty_clusters": int((sizes > 0).sum())},
        "labels": {"column": "label", **scores(contingency.matrix())}})
    return cfg, rundir, shards
