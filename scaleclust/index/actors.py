"""Fan-out search: Ray actors each hold a group of shard indexes; the driver merges their top-k.

Every shard index is a copy of one trained index, so merging the groups' exact top-k lists gives the
same answer as one unsharded index (see scaleclust.index.search). Ids map back to keys shard by shard.
An IVF-PQ index with re-ranking re-scores its candidates against the shards' stored vectors, which the
actor memory-maps (or reads by row range on object stores) rather than holds. nprobe ``auto`` is the
calibrated value of the manifest.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import ray

from scaleclust.index.build import from_bytes, load_shard, merge_indexes, unit_float32
from scaleclust.index.device import to_device
from scaleclust.index.search import (Coarse, Refine, Result, VectorResult, as_index, coarse_assign, empty_result,
                                     merge_topk, merge_topk_vectors, search, search_vectors)
from scaleclust.index.manifest import ids_to_keys, load_manifest, resolve_nprobe, trained_url
from scaleclust.index.vectors import StoredVectors
from scaleclust.rundir import RunDir

SEARCHER_CPUS = 0.5  # faiss threads itself; a fraction keeps 2-core machines from starving other tasks


@ray.remote(num_cpus=SEARCHER_CPUS)
class Searcher:
    """Holds the indexes of a group of shards, merged into one (loaded from the run directory, on the
    GPU if any), and with re-ranking their stored vectors (memory-mapped, not loaded)."""

    def __init__(self, run: RunDir, manifest: dict[str, Any], entries: list[dict[str, Any]]) -> None:
        """``manifest`` is index/manifest.json less its shards; ``entries`` are this group's shards."""
        self.manifest = manifest  # without its shards: the entries of this group come apart
        trained = from_bytes(run.read_bytes(trained_url(run)))  # its coarse quantizer, shared by every shard
        # One index for the group: a query visits each probed list once here, not once per shard.
        group = merge_indexes(load_shard(run.read_bytes(run.path("index", e["file"])), trained) for e in entries)
        self.indexes = [as_index(to_device(group))]
        factor = manifest["spec"].get("refine_factor", 0)
        self.refine = Refine([StoredVectors(run.path("index", e["vectors"]), run.storage, e["first_id"])
                              for e in entries], factor) if factor else None

    def coarse(self, queries: np.ndarray, nprobe: int | str) -> Coarse:
        """The queries' coarse assignment, for every actor of a fan-out to reuse (each actor's shards share
        one quantizer: assigning once per batch, not once per actor, keeps the work per query flat)."""
        return coarse_assign(self.indexes[0], unit_float32(queries), resolve_nprobe(nprobe, self.manifest))

    def search(self, queries: np.ndarray, k: int, nprobe: int | str, coarse: Coarse | None = None) -> Result:
        """Top-k (sims, ids) of the queries over this group."""
        return search(self.indexes, queries, k, resolve_nprobe(nprobe, self.manifest), self.refine, coarse)

    def search_vectors(self, queries: np.ndarray, k: int, nprobe: int | str,
                       coarse: Coarse | None = None) -> VectorResult:
        """Top-k (sims, ids, vectors float16) of the queries over this group."""
        return search_vectors(self.indexes, queries, k, resolve_nprobe(nprobe, self.manifest), self.refine, coarse)


@contextmanager
def searchers(run: RunDir, manifest: dict[str, Any], per_actor: int) -> Iterator[list[Any]]:
    """Start one Searcher per group of `per_actor` shards (in id order); kill them on exit."""
    entries = sorted(manifest["shards"].values(), key=lambda e: e["first_id"])
    groups = max(1, math.ceil(len(entries) / per_actor))
    settings = {k: v for k, v in manifest.items() if k != "shards"}
    actors = [Searcher.remote(run, settings, entries[g * per_actor:(g + 1) * per_actor]) for g in range(groups)]
    try:
        yield actors
    finally:
        for actor in actors:
            ray.kill(actor)


def shared(actors: list[Any], queries: np.ndarray, nprobe: int | str) -> tuple[Any, Any]:
    """(queries, their coarse assignment) as object refs for every actor: the queries are put in the object
    store once, and the first actor assigns them for all."""
    ref = ray.put(np.asarray(queries, np.float32))
    return ref, actors[0].coarse.remote(ref, nprobe)


def fan_out(actors: list[Any], queries: np.ndarray, k: int, nprobe: int | str) -> Result:
    """Search every actor's group and merge the top-k lists exactly."""
    best = empty_result(len(queries), k)
    ref, coarse = shared(actors, queries, nprobe)
    for result in ray.get([a.search.remote(ref, k, nprobe, coarse) for a in actors]):
        best = merge_topk(best, result, k)
    return best


def fan_out_vectors(actors: list[Any], queries: np.ndarray, k: int, nprobe: int | str) -> VectorResult:
    """fan_out that also brings each neighbour's vector (float16) from the actor holding it."""
    d = np.shape(queries)[1]
    best = (*empty_result(len(queries), k), np.zeros((len(queries), k, d), np.float16))
    ref, coarse = shared(actors, queries, nprobe)
    for result in ray.get([a.search_vectors.remote(ref, k, nprobe, coarse) for a in actors]):
        best = merge_topk_vectors(best, result, k)
    return best


class IndexNeighbors:
    """The embeddings of each row's m nearest other rows of the whole index, fetched from the search
    actors: rows (b, d) -> (b, m, d) float16. Picklable (it holds actor handles), so a Ray Train worker
    calls it on its own share of the sample. The rows must be indexed rows: the first hit (the row
    itself, or an identical duplicate) is dropped."""

    def __init__(self, actors: list[Any], m: int, nprobe: int | str) -> None:
        self.actors, self.m, self.nprobe = actors, m, nprobe

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        _, ids, vectors = fan_out_vectors(self.actors, np.asarray(rows, np.float32), self.m + 1, self.nprobe)
        if (ids[:, 1:] < 0).any():
            raise RuntimeError(f"the index holds fewer than {self.m + 1} rows near some queries; raise "
                               f"index.nprobe or lower the method's neighbors")
        return vectors[:, 1:]


def search_run(run: RunDir, queries: np.ndarray, k: int, nprobe: int | str = 16,
               per_actor: int = 256) -> list[tuple[list[str], np.ndarray]]:
    """Nearest keys and cosine similarities of each query over the run's whole index."""
    manifest = load_manifest(run)
    with searchers(run, manifest, per_actor) as actors:
        sims, ids = fan_out(actors, np.atleast_2d(queries), k, nprobe)
    keys = ids_to_keys(run, manifest, ids)
    return [(list(row[found >= 0]), s[found >= 0]) for row, s, found in zip(keys, sims, ids)]
