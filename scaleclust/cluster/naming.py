"""Naming clusters in a semantic space of nouns: plain numpy, no Ray, no storage.

- SIC's generic-noun filter (Cai et al. 2023): a noun whose embedding is close to the mean noun
  embedding ('entity', 'thing', 'object') matches every image a little and names nothing; drop nouns
  whose cosine to the mean is >= 1 - gamma_u.
- CPP's zero-shot vote (Chu et al. 2024): every voting row gives its top-t softmax probabilities over
  the vocabulary to those nouns; a cluster's name is the noun with the largest summed vote. Here the
  voters are the cluster's most confident rows (a bounded number), and the score is the mean probability
  the voters give the name (0 for a voter that does not have it in its top t), so a cluster whose rows
  agree confidently scores near 1 and one whose rows scatter over many nouns scores near 0.
- Names from a hierarchy of synsets (WordNet's hypernyms), weighed by distinctiveness: a noun's
  weight in a cluster is its score there times how much more it belongs to this cluster than to all
  (its lift over its mean score, rescaled so that a noun every cluster votes for alike, like 'letter
  opener' on grey images, weighs 0 and one only this cluster votes for keeps its score); every synset
  sums the weights of the nouns at or below it, and the cluster is named by the deepest synset that
  holds at least `share` of the cluster's weight: five domestic cats' votes name 'domestic cat', not
  whichever breed led. Runners-up stay the leaves.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

UNNAMED = "?"


def generic_mask(vectors: np.ndarray, gamma: float) -> np.ndarray:
    """True for the generic rows of `vectors` (V, d): cosine to the mean row >= 1 - gamma."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    mean = unit.mean(axis=0)
    mean /= max(float(np.linalg.norm(mean)), 1e-12)
    return unit @ mean >= 1.0 - gamma


def softmax_top(logits: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the `top` largest softmax probabilities over all columns and their column indices, best
    first: (n, top) int64 indices and (n, top) float32 probabilities."""
    top = min(top, logits.shape[1])
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    idx = np.argpartition(-shifted, top - 1, axis=1)[:, :top]
    part = np.take_along_axis(shifted, idx, axis=1)
    order = np.argsort(-part, axis=1)
    idx = np.take_along_axis(idx, order, axis=1)
    probs = np.exp(np.take_along_axis(part, order, axis=1) - log_z)
    return idx.astype(np.int64), probs.astype(np.float32)


def vote_matrix(clusters: np.ndarray, idx: np.ndarray, probs: np.ndarray, k: int, vocab: int) -> sparse.csr_matrix:
    """(k, vocab) summed votes: row r of cluster clusters[r] adds probs[r, j] to noun idx[r, j]."""
    rows = np.repeat(np.asarray(clusters, np.int64), idx.shape[1])
    return sparse.coo_matrix((probs.reshape(-1).astype(np.float64), (rows, idx.reshape(-1))),
                             shape=(k, vocab)).tocsr()


@dataclass(frozen=True)
class Hierarchy:
    """The nouns of a space placed in a tree of synsets. ancestors (V, N) csr of 0/1: row v marks noun
    v's own node and every node above it (each once, over all paths); names, ids (N,) of the nodes; depth
    (N,) the longest path from the root, so a node is always deeper than each of its hypernyms."""

    ancestors: sparse.csr_matrix
    names: list[str]
    ids: list[str]
    depth: np.ndarray


@dataclass(frozen=True)
class ClusterName:
    """A cluster's name ('?' when the evidence is weak), its score in [0, 1], the nouns with the largest
    votes, best first (the leaves), and the id of the name's node ('' when unnamed)."""

    name: str
    score: float
    top_names: list[str]
    name_id: str = ""


def _ranked(row: sparse.csr_matrix, voters: int) -> list[tuple[int, float]]:
    """(noun, score) of one cluster's votes, best first; ties by noun index."""
    if voters == 0 or row.nnz == 0:
        return []
    order = np.lexsort((row.indices, -row.data))
    return [(int(row.indices[i]), float(row.data[i]) / voters) for i in order]


def distinctive(scores: sparse.csr_matrix) -> sparse.csr_matrix:
    """(k, V) scores, each times how much more its noun belongs to its cluster than to all k clusters
    that have votes: lift = score / the noun's mean score over them (0..k), weight = score x (lift - 1)
    / (k - 1), at least 0. A noun only this cluster votes for keeps its score; one that all clusters vote
    for alike keeps nothing. A cluster left with nothing (a lone cluster, or one whose every noun is
    everybody's) keeps its own scores."""
    k = int((np.diff(scores.indptr) > 0).sum())
    mean = np.asarray(scores.sum(axis=0)).ravel() / max(k, 1)
    lift = scores.data / np.maximum(mean[scores.indices], 1e-30)
    data = scores.data * np.maximum(lift - 1.0, 0.0) / max(k - 1, 1)
    out = sparse.csr_matrix((data, scores.indices.copy(), scores.indptr.copy()), shape=scores.shape)
    empty = np.asarray(out.sum(axis=1)).ravel() <= 0
    out = (out + sparse.diags(empty.astype(np.float64)) @ scores).tocsr()
    out.eliminate_zeros()
    return out


def _deepest(mass: sparse.csr_matrix, total: float, depth: np.ndarray, share: float) -> int:
    """The deepest node of one cluster's rolled-up mass (1, N) holding at least `share` of `total`
    (ties: more mass, then the lower node); the node of most mass when none does."""
    held = mass.data >= share * total - 1e-12
    pick = np.flatnonzero(held) if held.any() else np.flatnonzero(mass.data == mass.data.max())
    order = np.lexsort((mass.indices[pick], -mass.data[pick], -depth[mass.indices[pick]]))
    return int(mass.indices[pick[order[0]]])


def _hierarchy_names(scores: sparse.csr_matrix, tree: Hierarchy, share: float) -> list[tuple[int, float] | None]:
    """Per cluster, (node, score) of its deepest node holding `share` of its distinctive mass, the score
    being the mean probability its voters give the nouns at or below that node; None without votes."""
    weights = distinctive(scores)
    mass = (weights @ tree.ancestors).tocsr()
    summed = (scores @ tree.ancestors).tocsr()
    totals = np.asarray(weights.sum(axis=1)).ravel()
    picked: list[tuple[int, float] | None] = []
    for c in range(scores.shape[0]):
        if mass.indptr[c] == mass.indptr[c + 1]:
            picked.append(None)
            continue
        node = _deepest(mass.getrow(c), float(totals[c]), tree.depth, share)
        picked.append((node, min(float(summed[c, node]), 1.0)))
    return picked


def name_clusters(votes: sparse.csr_matrix, voters: np.ndarray, names: list[str], min_score: float,
                  runners: int = 5, *, ids: list[str] | None = None, tree: Hierarchy | None = None,
                  share: float = 0.4) -> list[ClusterName]:
    """Name every cluster from its votes ((k, V), summed probabilities) and its number of voters (k,).

    Without `tree`, the noun with the largest score (ids, when given, are the nouns' ids for name_id);
    with it, the deepest node holding `share` of the cluster's distinctive mass (module docstring). A
    cluster whose name scores below `min_score` (or that has no voters) is named '?'. Clusters that would
    share a name are told apart by their most distinguishing noun: the one whose score most exceeds the
    best score any other cluster of the group gives it, e.g. 'tabby (lynx)'.
    """
    k = votes.shape[0]
    ranked = [_ranked(votes.getrow(c), int(voters[c])) for c in range(k)]
    if tree is None:
        picked = [(r[0][0], r[0][1]) if r else None for r in ranked]
        node_names, node_ids = names, ids or [""] * len(names)
    else:
        scores = (sparse.diags(1.0 / np.maximum(np.asarray(voters, np.float64), 1)) @ votes).tocsr()
        picked = _hierarchy_names(scores, tree, share)
        node_names, node_ids = tree.names, tree.ids
    result = [ClusterName(UNNAMED, p[1] if p else 0.0, [names[v] for v, _ in r[:runners]])
              for p, r in zip(picked, ranked)]
    groups: dict[str, list[int]] = {}
    for c, p in enumerate(picked):
        if p and p[1] >= min_score:
            groups.setdefault(node_names[p[0]], []).append(c)
    for top, members in groups.items():
        labels = _distinguish(top, members, ranked, names) if len(members) > 1 else {members[0]: top}
        for c, label in labels.items():
            result[c] = ClusterName(label, result[c].score, result[c].top_names, node_ids[picked[c][0]])
    return result


def _distinguish(top: str, members: list[int], ranked: list[list[tuple[int, float]]],
                 names: list[str]) -> dict[int, str]:
    """'TOP (NOUN)' for each cluster of a group sharing the name TOP, with a different NOUN for each."""
    scores = [dict(ranked[c]) for c in members]
    labels: dict[int, str] = {}
    used: set[str] = {top}
    for i, c in enumerate(members):
        others = [s for j, s in enumerate(scores) if j != i]
        lead = sorted(((score - max(o.get(v, 0.0) for o in others), v) for v, score in ranked[c]),
                      key=lambda t: (-t[0], t[1]))
        noun = next((names[v] for _, v in lead if names[v] not in used), f"cluster {c}")
        used.add(noun)
        labels[c] = f"{top} ({noun})"
    return labels
