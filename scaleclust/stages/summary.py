"""Summary stage: clusters.parquet (size, exemplars, centroid) and metrics.json (counts, seconds per
stage, ACC/NMI/ARI when the source has labels). Shards are reduced in parallel to small partials.
"""
from __future__ import annotations

import heapq
import io
import json
from typing import Any

import numpy as np
import pyarrow as pa

from scaleclust.cluster.metrics import Contingency, scores
from scaleclust.config import Config
from scaleclust.tables import embedding_matrix
from scaleclust.parallel import map_shards
from scaleclust.progress import Progress
from scaleclust.rundir import RunDir, cluster_ids
from scaleclust.stage import Stage


class Partial:
    """What one shard contributes: sizes, embedding sums, label counts and exemplar candidates."""

    def __init__(self, k: int, dim: int) -> None:
        self.sizes = np.zeros(k, np.int64)
        self.sums = np.zeros((k, dim), np.float64)
        self.confidence = np.zeros(k, np.float64)
        self.contingency = Contingency()
        self.exemplars: list[list[tuple[float, str]]] = [[] for _ in range(k)]

    def merge(self, other: "Partial", top: int) -> None:
        self.sizes += other.sizes
        self.sums += other.sums
        self.confidence += other.confidence
        self.contingency.merge(other.contingency)
        for mine, theirs in zip(self.exemplars, other.exemplars):
            mine[:] = heapq.nlargest(top, mine + theirs)

    def to_bytes(self) -> bytes:
        """The partial as .npz (no pickle), so a nightly update can merge new shards into it."""
        extra = {"contingency": [[c, lab, n] for (c, lab), n in self.contingency.counts.items()],
                 "exemplars": self.exemplars}
        sink = io.BytesIO()
        np.savez(sink, sizes=self.sizes, sums=self.sums, confidence=self.confidence,
                 extra=np.frombuffer(json.dumps(extra).encode(), np.uint8))
        return sink.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Partial":
        with np.load(io.BytesIO(data)) as npz:
            part = cls(*npz["sums"].shape)
            part.sizes, part.sums, part.confidence = npz["sizes"], npz["sums"], npz["confidence"]
            extra = json.loads(npz["extra"].tobytes())
        part.contingency.counts.update({(c, lab): n for c, lab, n in extra["contingency"]})
        part.exemplars = [[(conf, key) for conf, key in ex] for ex in extra["exemplars"]]
        return part


def slots(clusters: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Position in `ids` (the model's stable cluster ids) of each cluster id."""
    order = np.argsort(ids)
    return order[np.searchsorted(ids[order], clusters)]


def reduce_shard(item: dict[str, Any], run: RunDir, ids: np.ndarray, dim: int, top: int, label: str | None) -> Partial:
    """One shard's partial (indexed by model slot): joins its assignments to its embeddings by key."""
    shard = item["shard"]
    columns = ["key", "embedding"] + ([label] if label else [])
    emb = run.read_table(run.embeddings(shard), columns)
    asg = run.read_table(run.path("assignments", item["file"]), ["key", "cluster", "confidence"])
    if emb["key"].to_pylist() != asg["key"].to_pylist():
        order = {key: i for i, key in enumerate(asg["key"].to_pylist())}
        asg = asg.take(pa.array([order[key] for key in emb["key"].to_pylist()]))
    clusters = slots(asg["cluster"].to_numpy(), ids)
    conf = asg["confidence"].to_numpy()
    k = len(ids)
    part = Partial(k, dim)
    part.sizes += np.bincount(clusters, minlength=k)
    np.add.at(part.sums, clusters, embedding_matrix(emb["embedding"], np.float64))
    np.add.at(part.confidence, clusters, conf)
    if label:
        part.contingency.update(ids[clusters], emb[label].to_pylist())
    keys = emb["key"].to_pylist()
    for c in np.unique(clusters):
        idx = np.flatnonzero(clusters == c)
        best = idx[np.argsort(-conf[idx])[:top]]
        part.exemplars[c] = [(float(conf[i]), keys[i]) for i in best]
    return part


def reduce_run(run: RunDir, top: int, label: str | None, shards: list[str] | None = None) -> Partial:
    """Merge the partials of every assigned shard (or of `shards`); slots follow the committed model's
    `cluster_ids`."""
    markers = run.committed("assignments")
    if shards is not None:
        markers = {s: markers[s] for s in shards}
    model = run.marker(run.model("model.json"))
    ids = cluster_ids(model)
    total = Partial(len(ids), model["dim"])
    progress = Progress("summary", total=sum(m["rows"] for m in markers.values()), unit="rows")
    for part in map_shards(reduce_shard, [{"shard": s, "file": m["file"]} for s, m in sorted(markers.items())],
                           num_cpus=1, run=run, ids=ids, dim=model["dim"], top=top, label=label):
        total.merge(part, top)
        progress.update(int(part.sizes.sum()))
    progress.close()
    return total


def run(cfg: Config, run: RunDir) -> dict[str, Any]:
    return summarise(cfg, run)[0]


def summarise(cfg: Config, run: RunDir, base: Partial | None = None,
              shards: list[str] | None = None) -> tuple[dict[str, Any], Partial]:
    """clusters.parquet and metrics.json from every assigned shard, or from `base` (the partial of the
    shards already summarised with the same model) merged with the partials of `shards` only."""
    model = run.marker(run.model("model.json"))
    ids = cluster_ids(model)
    k = len(ids)
    label = "label" if cfg.input.label_field else None
    total = reduce_run(run, cfg.summary.exemplars, label, shards)
    if base is not None:
        total.merge(base, cfg.summary.exemplars)
    norms = np.linalg.norm(total.sums, axis=1, keepdims=True)
    centroids = np.where(norms > 0, total.sums / np.maximum(norms, 1e-12), 0).astype(np.float32)
    table = pa.table({
        "cluster": pa.array(ids),
        "size": pa.array(total.sizes),
        "mean_confidence": pa.array((total.confidence / np.maximum(total.sizes, 1)).astype(np.float32)),
        "name": pa.array([None] * k, pa.string()),
        "name_id": pa.array([None] * k, pa.string()),
        "name_score": pa.array([None] * k, pa.float32()),
        "top_names": pa.array([[] for _ in range(k)], pa.list_(pa.string())),
        "exemplar_keys": pa.array([[key for _, key in ex] for ex in total.exemplars], pa.list_(pa.string())),
        "centroid": pa.FixedSizeListArray.from_arrays(pa.array(centroids.reshape(-1)), centroids.shape[1]),
    })
    run.write_table(run.clusters, table)
    embedded = run.committed("embeddings")
    metrics = run.marker(run.metrics) or {}
    metrics["counts"] = {
        "shards": len(embedded),
        "rows": sum(m["rows"] for m in embedded.values()),
        "embedded": sum(m["embedded"] for m in embedded.values()),
        "errors": sum(m["errors"] for m in embedded.values()),
        "retryable": sum(m.get("retryable", 0) for m in embedded.values()),
        "assigned": int(total.sizes.sum()),
        "clusters": k,
        "non_empty_clusters": int((total.sizes > 0).sum()),
    }
    metrics["model"] = {key: model[key] for key in ("method", "k", "model_id", "sample_rows")}
    metrics["labels"] = {"column": label, **scores(total.contingency.matrix())} if label else None
    run.write_json(run.metrics, metrics)
    return metrics, total


def status(run: RunDir) -> dict[str, Any]:
    """Committed when clusters.parquet exists."""
    return {"done": run.exists(run.clusters)}


STAGE = Stage("summary", reads=("assignments/", "embeddings/", "model/"),
              commits=("clusters.parquet", "metrics.json"),
              resources="one task of 1 CPU per shard",
              run=lambda ctx: run(ctx.cfg, ctx.run), status=status)
