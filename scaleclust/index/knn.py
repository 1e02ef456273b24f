"""kNN graph of a query set against the sharded index, exact search to compare, and recall@k."""

from __future__ import annotations

from collections.abc import Iterable

import faiss
import numpy as np

from scaleclust.index.build import unit_float32
from scaleclust.index.search import Result, empty_result, merge_topk, search


def drop_self(result: Result, query_ids: np.ndarray, k: int) -> Result:
    """From (nq, k+1) results keep k per row: drop the query's own id, else drop the last entry."""
    sims, ids = result
    is_self = ids == np.asarray(query_ids, dtype=np.int64)[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(ids, order, axis=1)


def knn_graph(
    indexes: Iterable[faiss.Index | bytes], queries: np.ndarray, query_ids: np.ndarray, k: int,
    nprobe: int,
) -> Result:
    """Top-k neighbours (sims, ids) of each query over all indexes, excluding the query itself."""
    return drop_self(search(indexes, queries, k + 1, nprobe), query_ids, k)


def exact_search(shards: Iterable[tuple[int, np.ndarray]], queries: np.ndarray, k: int) -> Result:
    """Exact top-k by inner product (IndexFlatIP) over (first_id, vectors) shards, merged."""
    q = unit_float32(queries)
    best = empty_result(len(q), k)
    for first_id, vectors in shards:
        flat = faiss.IndexFlatIP(q.shape[1])
        flat.add(unit_float32(vectors))
        sims, ids = flat.search(q, k)
        best = merge_topk(best, (sims, np.where(ids >= 0, ids + first_id, -1)), k)
    return best


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Fraction of the exact neighbours (ids >= 0) that the approximate search also returned."""
    hit = (approx_ids[:, :, None] == exact_ids[:, None, :]).any(axis=1) & (exact_ids >= 0)
    return float(hit.sum() / max(1, (exact_ids >= 0).sum()))


def knn_recall(
    indexes: Iterable[faiss.Index | bytes], shards: Iterable[tuple[int, np.ndarray]],
    queries: np.ndarray, query_ids: np.ndarray, k: int, nprobe: int, n_sample: int = 1000,
    seed: int = 0,
) -> float:
    """recall@k of :func:`knn_graph` against exact search, on ``n_sample`` random queries."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(queries), size=min(n_sample, len(queries)), replace=False))
    q, qid = queries[pick], np.asarray(query_ids)[pick]
    approx = knn_graph(indexes, q, qid, k, nprobe)
    exact = drop_self(exact_search(shards, q, k + 1), qid, k)
    return recall_at_k(approx[1], exact[1])
