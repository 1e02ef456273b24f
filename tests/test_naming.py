"""Naming math on tensors: planted clusters whose prototypes are the nouns' vectors get those nouns,
noise clusters get low scores and '?', and clusters sharing a name are told apart."""
from __future__ import annotations

import numpy as np

from scaleclust.cluster.naming import UNNAMED, generic_mask, name_clusters, softmax_top, vote_matrix
from scaleclust.semantic.space import SemanticSpace

D, V, ROWS = 32, 200, 150


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def space(rng: np.random.Generator) -> SemanticSpace:
    names = [f"noun{i}" for i in range(V)]
    return SemanticSpace(names, [f"n{i:08d}" for i in range(V)], unit(rng.normal(size=(V, D))),
                         np.zeros(V, np.float32), 30.0)


def name_rows(sp: SemanticSpace, groups: list[np.ndarray], min_score: float = 0.1):
    x = np.concatenate(groups)
    clusters = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    idx, probs = softmax_top(sp.logits(x), 5)
    votes = vote_matrix(clusters, idx, probs, len(groups), V)
    return name_clusters(votes, np.bincount(clusters, minlength=len(groups)), sp.names, min_score)


def test_softmax_top_matches_a_full_softmax() -> None:
    logits = np.random.default_rng(0).normal(size=(7, 50)) * 4
    idx, probs = softmax_top(logits, 5)
    full = np.exp(logits - logits.max(1, keepdims=True))
    full /= full.sum(1, keepdims=True)
    assert np.array_equal(idx, np.argsort(-full, axis=1)[:, :5])
    assert np.allclose(probs, np.sort(full, axis=1)[:, ::-1][:, :5], atol=1e-6)


def test_planted_prototypes_get_their_own_names_and_noise_gets_low_scores() -> None:
    rng = np.random.default_rng(1)
    sp = space(rng)
    planted = [7, 42, 99, 150, 3]
    groups = [unit(sp.vectors[p] + rng.normal(size=(ROWS, D)) * 0.12) for p in planted]
    noise = [unit(rng.normal(size=(ROWS, D))) for _ in range(3)]
    named = name_rows(sp, groups + noise)
    for c, p in enumerate(planted):
        assert named[c].name == f"noun{p}" and named[c].score > 0.8 and named[c].top_names[0] == f"noun{p}"
    for c in range(len(planted), len(planted) + 3):
        assert named[c].name == UNNAMED and named[c].score < 0.1 and len(named[c].top_names) == 5


def test_clusters_sharing_a_name_are_told_apart_by_their_next_noun() -> None:
    rng = np.random.default_rng(2)
    sp = space(rng)
    a = unit(sp.vectors[10] + 0.8 * sp.vectors[20] + rng.normal(size=(ROWS, D)) * 0.05)
    b = unit(sp.vectors[10] + 0.8 * sp.vectors[30] + rng.normal(size=(ROWS, D)) * 0.05)
    named = name_rows(sp, [a, b], min_score=0.05)
    assert named[0].top_names[0] == named[1].top_names[0] == "noun10"
    assert named[0].name == "noun10 (noun20)" and named[1].name == "noun10 (noun30)"


def test_empty_cluster_is_unnamed() -> None:
    sp = space(np.random.default_rng(3))
    named = name_clusters(vote_matrix(np.zeros(0, np.int64), np.zeros((0, 5), np.int64), np.zeros((0, 5)), 2, V),
                          np.zeros(2, np.int64), sp.names, 0.1)
    assert [(n.name, n.score, n.top_names) for n in named] == [(UNNAMED, 0.0, [])] * 2


def test_generic_mask_drops_nouns_near_the_mean() -> None:
    rng = np.random.default_rng(4)
    shared = unit(rng.normal(size=D))
    nouns = unit(shared + rng.normal(size=(V, D)) * 0.5)  # like CLIP prompts: a common direction + specifics
    nouns[[5, 17]] = unit(nouns.mean(0) + rng.normal(size=(2, D)) * 0.01)
    assert np.flatnonzero(generic_mask(nouns, 0.05)).tolist() == [5, 17]
