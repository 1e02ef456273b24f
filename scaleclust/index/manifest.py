"""The index's manifest (RUN/index/manifest.json) and what is read through it: its paths, each shard's
global id range, ids to keys, a shard's vectors, a uniform sample of indexed rows. Shared by the index
stage, the search actors, the neighbours stage and dedup, so none of them imports another."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from scaleclust.failures import NotReady
from scaleclust.rundir import RunDir
from scaleclust.sample import ROW, keys_of_rows, sample_embeddings
from scaleclust.tables import embedding_matrix


def manifest_url(run: RunDir) -> str:
    return run.path("index", "manifest.json")


def trained_url(run: RunDir) -> str:
    return run.path("index", "trained.faiss")


def shard_file(shard: str, commit: str) -> str:
    """Index file of one embeddings commit, relative to RUN/index/."""
    return f"shards/{shard}.{commit}.faiss"


def vectors_file(shard: str, commit: str) -> str:
    """Stored fp16 vectors (for re-ranking) of one embeddings commit, relative to RUN/index/."""
    return f"shards/{shard}.{commit}.f16.npy"


def resolve_nprobe(nprobe: int | str, manifest: dict[str, Any]) -> int:
    """index.nprobe as a number: itself, or (auto) the calibrated one recorded in the manifest."""
    if nprobe != "auto":
        return int(nprobe)
    calibration = manifest.get("calibration")
    if calibration is None:
        raise NotReady("index.nprobe is auto but index/manifest.json has no calibration: run "
                           "`scaleclust index CONFIG --set index.nprobe=auto` to measure it")
    return int(calibration["nprobe"])


def load_manifest(run: RunDir) -> dict[str, Any]:
    """The committed manifest; raises when the index stage has not run."""
    manifest = run.marker(manifest_url(run))
    if manifest is None:
        raise NotReady(f"{run.url}: no index/manifest.json; run `scaleclust index CONFIG` first")
    return manifest


@dataclass(frozen=True)
class Ranges:
    """The manifest's id ranges (gaps allowed where a shard was re-added): id -> (shard, row)."""

    shards: tuple[str, ...]
    first: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, manifest: dict[str, Any]) -> Ranges:
        entries = sorted(manifest["shards"].items(), key=lambda e: e[1]["first_id"])
        return cls(tuple(s for s, _ in entries), np.array([e["first_id"] for _, e in entries], np.int64),
                   np.array([e["count"] for _, e in entries], np.int64))

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in self.shards, row in that shard) per id; raises on an id in no range."""
        ids = np.asarray(ids, np.int64)
        pos = np.searchsorted(self.first, ids, side="right") - 1
        row = ids - self.first[np.maximum(pos, 0)]
        if ids.size and ((pos < 0) | (row >= self.counts[np.maximum(pos, 0)])).any():
            raise ValueError("an id lies in no shard's range of the manifest")
        return pos, row


def ids_to_keys(run: RunDir, manifest: dict[str, Any], ids: np.ndarray) -> np.ndarray:
    """Keys of global ids (any shape; -1 -> None). The lookup runs where the data is: one task per
    shard reads only the row groups of its key column that hold the ids (scaleclust.sample.keys_of_rows)."""
    flat = np.asarray(ids, np.int64).reshape(-1)
    keys = np.full(flat.shape, None, dtype=object)
    valid = np.flatnonzero(flat >= 0)
    ranges = Ranges.of(manifest)
    pos, row = ranges.locate(flat[valid])
    members = {ranges.shards[p]: np.flatnonzero(pos == p) for p in np.unique(pos)}
    unique = {s: np.unique(row[m], return_inverse=True) for s, m in members.items()}
    found = keys_of_rows(run, {s: rows for s, (rows, _) in unique.items()})
    for shard, m in members.items():
        keys[valid[m]] = np.asarray(found[shard], dtype=object)[unique[shard][1]]
    return keys.reshape(np.shape(ids))


def shard_vectors(run: RunDir, manifest: dict[str, Any]) -> Iterator[tuple[int, np.ndarray]]:
    """(first_id, float32 vectors) per indexed shard, read one at a time (for exact search)."""
    for shard, entry in sorted(manifest["shards"].items(), key=lambda e: e[1]["first_id"]):
        yield entry["first_id"], embedding_matrix(run.read_table(run.embeddings(shard), ["embedding"])["embedding"])


def sample_rows(run: RunDir, manifest: dict[str, Any], n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A uniform sample of indexed rows: (vectors, global ids, keys). A row's id is its shard's first id
    plus its position in the shard, which the sampler's reads return: nothing is looked up in the driver."""
    markers = {s: {"embedded": e["count"], "dim": manifest["spec"]["d"]} for s, e in manifest["shards"].items()}
    vectors, extra = sample_embeddings(run, markers, n, seed, columns=("key", "shard", ROW))
    first = np.array([manifest["shards"][shard]["first_id"] for shard in extra["shard"]], np.int64)
    return vectors, first + np.asarray(extra[ROW], np.int64), extra["key"]
