"""Near-duplicates: pairs above a cosine threshold -> connected groups -> one keeper per group.

Pairs come from exact blocked dot products within each cluster, or within each IVF list with the rows
that visit it from their next-nearest lists (no n x n matrix: one block of rows x members at a time).
Groups are the connected components of the pair graph (what union-find yields).

Keeper rule: in each group keep the member with the largest sum of similarities over its pairs
in the group (its weighted degree: the most central copy; in a group where every pair is above the
threshold this is the highest mean similarity to the rest of the group); ties go to the smallest id.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from scaleclust.index.build import unit_float32


@dataclass(frozen=True)
class Pairs:
    """Undirected similar pairs by global id, a < b, with their cosine similarity."""

    a: np.ndarray
    b: np.ndarray
    sims: np.ndarray

    @classmethod
    def build(cls, a: np.ndarray, b: np.ndarray, sims: np.ndarray) -> Pairs:
        """Orient every pair as (min, max), drop self pairs and repeats (first similarity wins)."""
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        lo, hi, sims = np.minimum(a, b), np.maximum(a, b), np.asarray(sims, np.float32)
        keep = lo != hi
        _, first = np.unique(np.stack([lo[keep], hi[keep]], axis=1), axis=0, return_index=True)
        return cls(lo[keep][first], hi[keep][first], sims[keep][first])

    @classmethod
    def concat(cls, parts: Iterable[Pairs]) -> Pairs:
        """Union of several pair sets (e.g. from query batches), repeats removed."""
        parts = list(parts)
        return cls.build(*(np.concatenate([getattr(p, f) for p in parts] or [np.empty(0)])
                           for f in ("a", "b", "sims")))

    def above(self, threshold: float) -> Pairs:
        """The pairs with similarity >= threshold."""
        keep = self.sims >= threshold
        return Pairs(self.a[keep], self.b[keep], self.sims[keep])


def pairs_within_clusters(
    vectors: np.ndarray, ids: np.ndarray, clusters: np.ndarray | None, threshold: float,
    block_rows: int = 2048,
) -> Pairs:
    """Exact pairs with cosine >= threshold among rows of the same cluster (all rows if None).

    Memory is block_rows x (largest cluster) similarities at a time; time is quadratic per cluster.
    """
    return pairs_in_blocks(vectors, ids, np.zeros(len(ids), np.int64) if clusters is None else clusters, None,
                           threshold, block_rows)


def pairs_in_blocks(
    vectors: np.ndarray, ids: np.ndarray, blocks: np.ndarray, members: np.ndarray | None, threshold: float,
    block_rows: int = 2048,
) -> Pairs:
    """Exact pairs with cosine >= threshold, within each block, of a member with a member or a visitor.

    ``members`` (bool per row; all when None) marks the rows that belong to their block; the others
    visit it (a row listed in its nearest IVF lists as a member of the first, a visitor of the rest) and
    are compared with its members only. Memory is block_rows x (block's members) similarities at a time.
    """
    x = unit_float32(vectors)
    ids = np.asarray(ids, np.int64)
    blocks = np.asarray(blocks)
    members = np.ones(len(x), bool) if members is None else np.asarray(members, bool)
    order = np.lexsort((~members, blocks))  # per block: its members first, then its visitors
    bounds = np.flatnonzero(np.diff(blocks[order])) + 1
    found = []
    for rows in np.split(order, bounds):
        n_members = int(members[rows].sum())
        xm = x[rows[:n_members]]
        for start in range(0, len(rows), block_rows):
            sims = x[rows[start:start + block_rows]] @ xm.T
            q, j = np.nonzero(sims >= threshold)
            keep = (start + q >= n_members) | (j > start + q)  # a member pair once; a visitor with every member
            found.append(Pairs(ids[rows[start + q[keep]]], ids[rows[j[keep]]], sims[q[keep], j[keep]]))
    return Pairs.concat(found)


@dataclass(frozen=True)
class Duplicates:
    """Members of near-duplicate groups: ``group`` is the keeper's id, ``keep`` marks keepers."""

    ids: np.ndarray
    group: np.ndarray
    keep: np.ndarray

    @property
    def n_removed(self) -> int:
        """How many rows de-duplication would drop (members that are not keepers)."""
        return int((~self.keep).sum())


def group_duplicates(pairs: Pairs) -> Duplicates:
    """Connected components of the pair graph and their keepers (rule in the module docstring)."""
    nodes, inverse = np.unique(np.concatenate([pairs.a, pairs.b]), return_inverse=True)
    if not len(nodes):
        return Duplicates(nodes, nodes.copy(), np.zeros(0, bool))
    a, b = np.split(inverse, 2)
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(nodes), len(nodes)))
    _, label = connected_components(graph, directed=False)
    degree = (np.bincount(a, weights=pairs.sims, minlength=len(nodes))
              + np.bincount(b, weights=pairs.sims, minlength=len(nodes)))
    order = np.lexsort((-degree, label))  # stable: equal degree keeps ascending id
    first = order[np.r_[True, label[order][1:] != label[order][:-1]]]
    keeper = np.empty(label.max() + 1, np.int64)
    keeper[label[first]] = nodes[first]
    group = keeper[label]
    return Duplicates(nodes, group, nodes == group)


def removal_counts(pairs: Pairs, thresholds: Sequence[float]) -> dict[float, int]:
    """Rows dropped at each threshold (the pairs must have been found at <= the lowest one)."""
    return {float(t): group_duplicates(pairs.above(t)).n_removed for t in thresholds}
