"""Warm-started refits and cluster-id matching across refits (numpy, faiss, and torch for one blockwise sum).

Warm start, k-means: k-means begins from the current centroids, plus a few new centroids seeded by
k-means among the rows no current cluster accepts (novel rows), so a concept absent before can get its
own cluster while the others start where they were and move only as far as the new data pulls them.
Warm start, MLC: the same in the trained head's feature space with subspaces instead of centroids
(k-subspaces from the current bases plus bases fitted on the groups of new-concept rows); the head is kept.

Id matching: new clusters are matched one-to-one to old ones by the Hungarian algorithm on the cosine
of their prototypes (centroids), or for subspaces on the root mean squared cosine of their principal
angles (|cos| of the two directions at rank 1); a pair below the similarity floor is no match. A matched cluster keeps
its old id; an unmatched new cluster gets a fresh id, never used before (ids are not reused, even for
clusters that vanished).
"""
from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import torch

from scaleclust.cluster.kmeans import spherical_kmeans
from scaleclust.cluster.subspaces import SubspaceAssigner, fit_subspaces

# fresh_rows: a part of a grown cluster is a new concept when the odds that its rows come from new shards are this
# many times the sample's. An old concept's part has odds near the sample's: at a base share of one half, a part of
# 20 such rows reaches 4 (a new share of 0.8) about 3 standard deviations out.
FRESH_ODDS = 4.0
BLOCK = 8192  # rows taken to float64 at a time (tightness, prototypes): never a float64 copy of a sample
LOOSER = 1.5  # typical_tightness: how much looser than the typical cluster one concept may be


def tightness(x: np.ndarray) -> float:
    """How tight a group of unit rows is: the median cosine of its rows to its prototype (their
    normalised mean). Unlike the distance between prototypes, it does not depend on the group's size."""
    x = np.asarray(x, np.float32)
    mean = x.mean(axis=0, dtype=np.float64)  # accumulated in float64 without a float64 copy of the rows
    unit = mean / max(float(np.linalg.norm(mean)), 1e-12)
    return float(np.median(np.concatenate([x[i:i + BLOCK] @ unit for i in range(0, len(x), BLOCK)])))


def typical_tightness(x: np.ndarray, slots: np.ndarray, min_rows: int) -> float | None:
    """The tightness a group may have and still be one concept at a model's granularity: that of its
    typical cluster (the median over its clusters with at least `min_rows` of the rows x, given with
    their cluster slots; a row of slot -1 is left out), with LOOSER times its looseness (1 - tightness), as
    clusters' widths vary; None when no cluster has that many rows."""
    order = np.argsort(slots, kind="stable")  # each cluster's rows in one slice, in their order: one pass, not k
    found = [tightness(x[order[start:start + count]])
             for slot, start, count in zip(*np.unique(np.asarray(slots)[order], return_index=True, return_counts=True))
             if slot >= 0 and count >= min_rows]
    return 1.0 - LOOSER * (1.0 - float(np.median(found))) if found else None


def novel_groups(x_novel: np.ndarray, n: int, niter: int, seed: int, min_rows: int,
                 tight: float | None = None) -> np.ndarray:
    """Group of each new-concept row, -1 for a row left out: spherical k-means into at most n groups
    (their dense parts, not their outliers, which a farthest-point seeding would pick); a group of fewer
    than `min_rows` rows is left out (a clump of outliers, not a concept); two groups whose union is as
    tight as the old model's typical cluster (`tight`, typical_tightness) are one concept and merge,
    closest pair first (without `tight`, none merge). Groups are renumbered 0..m-1. New clusters thus
    come at the granularity of the old ones, and a concept is not split because k-means was asked for
    more groups than it holds."""
    x = np.asarray(x_novel, np.float32)
    if n <= 0 or len(x) < min_rows:
        return np.full(len(x), -1, np.int64)
    centroids = spherical_kmeans(x, min(n, len(x)), niter, 1, seed)[0]
    groups = np.argmax(x @ centroids.T, axis=1).astype(np.int64)
    counts = np.bincount(groups, minlength=len(centroids))
    groups[counts[groups] < min_rows] = -1
    if tight is not None:
        _merge(x, groups, tight)
    kept = groups >= 0
    groups[kept] = np.unique(groups[kept], return_inverse=True)[1]
    return groups


def _merge(x: np.ndarray, groups: np.ndarray, tight: float) -> None:
    """novel_groups' merging: the pair whose union is tightest first, while it is at least `tight` (in place)."""
    while True:
        kept = np.unique(groups[groups >= 0])
        pairs = [(tightness(x[(groups == a) | (groups == b)]), a, b) for i, a in enumerate(kept) for b in kept[i + 1:]]
        if not pairs or max(pairs)[0] < tight:
            break
        _, a, b = max(pairs)
        groups[groups == b] = a


def _odds(share: float) -> float:
    return share / (1.0 - share) if share < 1.0 else float("inf")


def _fresh(is_new: np.ndarray, base: float) -> bool:
    """Whether rows (their is_new flags) are FRESH_ODDS times likelier than odds `base` to be new."""
    return base > 0.0 and _odds(float(np.mean(is_new))) >= FRESH_ODDS * base


def keep_fresh(groups: np.ndarray, is_new: np.ndarray, share: float) -> np.ndarray:
    """novel_groups' groups (of rows with their is_new flags) less those whose rows are not FRESH_ODDS times
    likelier than the sample's (of which `share` is new) to come from shards the old model has not seen,
    renumbered: outliers of old concepts, which old and new shards hold alike, seed no cluster."""
    groups, base = groups.copy(), _odds(share)
    for g in np.unique(groups[groups >= 0]):
        if not _fresh(is_new[groups == g], base):
            groups[groups == g] = -1
    kept = groups >= 0
    groups[kept] = np.unique(groups[kept], return_inverse=True)[1]
    return groups


def fresh_rows(x: np.ndarray, slots: np.ndarray, is_new: np.ndarray, grown: list[int], min_rows: int, niter: int,
               seed: int) -> np.ndarray:
    """Mask of the rows of a concept that an old cluster absorbed. A concept absent before comes only
    from the shards the model has not seen (`is_new`); an old concept that grew comes from old and new
    shards alike. So each grown cluster slot's rows are split in two by spherical k-means, and a part of
    at least `min_rows` rows whose odds of coming from new shards are FRESH_ODDS times the whole
    sample's is a new concept: its new rows are marked. Rows that no cluster accepts (novelty) miss
    such a concept when an old cluster is wide enough to take it in."""
    x = np.asarray(x, np.float32)
    fresh = np.zeros(len(x), bool)
    base = _odds(float(np.mean(is_new))) if len(x) else 0.0
    if base == 0.0:
        return fresh
    for slot in grown:
        rows = np.flatnonzero(slots == slot)
        if len(rows) < 2 * min_rows:
            continue
        centroids = spherical_kmeans(x[rows], 2, niter, 1, seed)[0]
        part = np.argmax(x[rows] @ centroids.T, axis=1)
        for p in (0, 1):
            mine = rows[part == p]
            if len(mine) >= min_rows and _fresh(is_new[mine], base):
                fresh[mine[is_new[mine]]] = True
    return fresh


def warm_kmeans(x: np.ndarray, init: np.ndarray, niter: int, seed: int) -> np.ndarray:
    """Spherical k-means on unit rows x starting from unit centroids `init` (k, d); returns centroids."""
    x = np.ascontiguousarray(x, np.float32)
    init = np.ascontiguousarray(init, np.float32)
    km = faiss.Kmeans(x.shape[1], len(init), niter=niter, nredo=1, spherical=True, seed=seed,
                      max_points_per_centroid=max(256, len(x) // len(init) + 1), verbose=False)
    km.train(x, init_centroids=init)
    return km.centroids.copy()


def warm_subspaces(feats: np.ndarray, init: np.ndarray, niter: int) -> np.ndarray:
    """k-subspaces on unit rows `feats` from the bases `init` (k, d, r): each row goes to the subspace
    that captures most of its energy, each basis is refitted on its rows; a basis left without rows
    keeps its old value (a cluster the sample lacks is not lost). Returns the bases."""
    bases = np.asarray(init, np.float32)
    for _ in range(niter):
        labels = SubspaceAssigner(bases).assign(feats)[0]
        fitted = fit_subspaces(feats, labels, len(bases), bases.shape[2]).bases
        empty = np.bincount(labels, minlength=len(bases)) == 0
        fitted[empty] = bases[empty]
        bases = fitted
    return bases


def subspace_similarity(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """(m, k) similarity of subspaces new (m, d, r) and old (k, d, r): sqrt(||U_new^T U_old||_F^2 / r),
    the root mean squared cosine of their principal angles (1: the same subspace, 0: orthogonal or empty)."""
    cross = np.einsum("mdr,kds->mkrs", np.asarray(new, np.float64), np.asarray(old, np.float64))
    return np.sqrt(np.square(cross).sum(axis=(2, 3)) / new.shape[2])


def match_ids(old: np.ndarray, old_ids: np.ndarray, new: np.ndarray, floor: float,
              next_id: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Stable ids for the new prototypes (m, d) given the old ones (k, d) and their ids (cosine)."""
    return match_similar(np.asarray(new, np.float64) @ np.asarray(old, np.float64).T, old_ids, floor, next_id)


def match_similar(sims: np.ndarray, old_ids: np.ndarray, floor: float,
                  next_id: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Stable ids for m new clusters from their similarities (m, k) to the k old ones with `old_ids`.

    Returns the id of each new cluster and the mapping record: matched (new slot, old id, cosine),
    new ids, retired old ids, and the next free id.
    """
    from scipy.optimize import linear_sum_assignment  # imported where used: scaleclust/cluster/__init__.py

    rows, cols = linear_sum_assignment(-sims)
    ids = np.full(len(sims), -1, np.int64)
    matched = []
    for r, c in zip(rows, cols):
        if sims[r, c] >= floor:
            ids[r] = old_ids[c]
            matched.append({"slot": int(r), "id": int(old_ids[c]), "cosine": round(float(sims[r, c]), 4)})
    fresh = []
    for r in np.flatnonzero(ids < 0):
        ids[r] = next_id
        fresh.append({"slot": int(r), "id": int(next_id),
                      "nearest_old_id": int(old_ids[int(np.argmax(sims[r]))]) if len(old_ids) else None,
                      "cosine": round(float(sims[r].max()), 4) if len(old_ids) else None})
        next_id += 1
    kept = {m["id"] for m in matched}
    retired = [int(i) for i in old_ids if int(i) not in kept]
    return ids.astype(np.int32), {"matched": matched, "new": fresh, "retired": retired, "floor": floor,
                                  "next_id": int(next_id)}


def prototypes(x: np.ndarray, slots: np.ndarray, k: int) -> np.ndarray:
    """(k, d) prototype of each cluster slot: the normalised mean of the rows of x (n, d) assigned to it
    (a zero row for a slot without rows, which then matches nothing). The id matching of head refits
    compares these, so two models are compared on the same rows whatever their parameters look like."""
    sums = torch.zeros((k, x.shape[1]), dtype=torch.float64)
    slots = torch.as_tensor(np.asarray(slots, np.int64))
    for i in range(0, len(x), BLOCK):
        sums.index_add_(0, slots[i:i + BLOCK], torch.as_tensor(np.asarray(x[i:i + BLOCK], np.float64)))
    sums = sums.numpy()
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return np.where(norms > 0, sums / np.maximum(norms, 1e-12), 0.0)
