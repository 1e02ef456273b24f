"""Naming clusters in a semantic space of nouns: plain numpy, no Ray, no storage.

- SIC's generic-noun filter (Cai et al. 2023): a noun whose embedding is close to the mean noun
  embedding ('entity', 'thing', 'object') matches every image a little and names nothing; drop nouns
  whose cosine to the mean is >= 1 - gamma_u.
- CPP's zero-shot vote (Chu et al. 2024): every voting row gives its top-t softmax probabilities over
  the vocabulary to those nouns; a cluster's name is the noun with the largest summed vote. Here the
  voters are the cluster's most confident rows (a bounded number), and the score is the mean probability
  the voters give the name (0 for a voter that does not have it in its top t), so a cluster whose rows
  agree confidently scores near 1 and one whose rows scatter over many nouns scores near 0.
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
class ClusterName:
    """A cluster's name ('?' when the evidence is weak), its score in [0, 1], and the nouns with the
    largest votes, best first (the name's noun first)."""

    name: str
    score: float
    top_names: list[str]


def _ranked(row: sparse.csr_matrix, voters: int) -> list[tuple[int, float]]:
    """(noun, score) of one cluster's votes, best first; ties by noun index."""
    if voters == 0 or row.nnz == 0:
        return []
    order = np.lexsort((row.indices, -row.data))
    return [(int(row.indices[i]), float(row.data[i]) / voters) for i in order]


def name_clusters(votes: sparse.csr_matrix, voters: np.ndarray, names: list[str], min_score: float,
                  runners: int = 5) -> list[ClusterName]:
    """Name every cluster from its votes ((k, V), summed probabilities) and its number of voters (k,).

    A cluster whose best score is below `min_score` (or that has no voters) is named '?'. Clusters that
    would share a name are told apart by their most distinguishing other noun: the one whose score most
    exceeds the best score any other cluster of the group gives it, e.g. 'tabby (lynx)'.
    """
    ranked = [_ranked(votes.getrow(c), int(voters[c])) for c in range(votes.shape[0])]
    result = [ClusterName(UNNAMED, r[0][1] if r else 0.0, [names[v] for v, _ in r[:runners]]) for r in ranked]
    groups: dict[str, list[int]] = {}
    for c, r in enumerate(ranked):
        if r and r[0][1] >= min_score:
            groups.setdefault(names[r[0][0]], []).append(c)
    for top, members in groups.items():
        labels = _distinguish(top, members, ranked, names) if len(members) > 1 else {members[0]: top}
        for c, label in labels.items():
            result[c] = ClusterName(label, result[c].score, result[c].top_names)
    return result


def _distinguish(top: str, members: list[int], ranked: list[list[tuple[int, float]]],
                 names: list[str]) -> dict[int, str]:
    """'TOP (NOUN)' for each cluster of a group sharing the name TOP, with a different NOUN for each."""
    scores = [dict(ranked[c]) for c in members]
    labels: dict[int, str] = {}
    used: set[str] = {top}
    for i, c in enumerate(members):
        others = [s for j, s in enumerate(scores) if j != i]
        lead = sorted(((score - max(o.get(v, 0.0) for o in others), v) for v, score in ranked[c][1:]),
                      key=lambda t: (-t[0], t[1]))
        noun = next((names[v] for _, v in lead if names[v] not in used), f"cluster {c}")
        used.add(noun)
        labels[c] = f"{top} ({noun})"
    return labels
