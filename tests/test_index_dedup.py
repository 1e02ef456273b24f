"""Planted near-duplicates are found, grouped, and each group keeps exactly one member."""

import faiss
import numpy as np
import pytest

from scaleclust.index.build import add_listed, train, unit_float32
from scaleclust.index.choose import choose_index
from scaleclust.index.pairs import Pairs, group_duplicates, pairs_in_blocks, pairs_within_clusters, removal_counts
from scaleclust.index.synthetic import clustered_vectors

faiss.omp_set_num_threads(1)  # shared 2-core machine: no OpenMP spin contention
N, D, THRESHOLD = 6000, 64, 0.97


@pytest.fixture(scope="module")
def planted():
    """Clustered data plus 30 originals with 1-3 copies each at cosine ~0.995; ids = row numbers."""
    rng = np.random.default_rng(3)
    x, labels = clustered_vectors(N, D, n_clusters=20, noise=1.0, seed=3)
    originals = rng.choice(N, size=30, replace=False)
    copies, groups = [], {}
    for orig in originals:
        for _ in range(rng.integers(1, 4)):
            groups.setdefault(int(orig), [int(orig)]).append(N + len(copies))
            copies.append(x[orig] + 0.1 * rng.standard_normal(D).astype(np.float32) / np.sqrt(D))
    x = np.concatenate([x, unit_float32(np.array(copies))])
    labels = np.concatenate([labels, labels[[g for g, m in groups.items() for _ in m[1:]]]])
    return x, labels, {frozenset(m) for m in groups.values()}


def found_groups(dups) -> set[frozenset[int]]:
    return {frozenset(dups.ids[dups.group == g].tolist()) for g in np.unique(dups.group)}


def check(dups, want):
    assert found_groups(dups) == want
    for g in np.unique(dups.group):
        in_group = dups.group == g
        assert dups.keep[in_group].sum() == 1 and dups.ids[in_group & dups.keep][0] == g
    assert dups.n_removed == sum(len(m) - 1 for m in want)


def test_within_clusters_finds_planted_groups(planted):
    x, labels, want = planted
    ids = np.arange(len(x))
    check(group_duplicates(pairs_within_clusters(x, ids, labels, THRESHOLD, block_rows=500)), want)
    # rows spread over the set: same answer without clusters
    check(group_duplicates(pairs_within_clusters(x, ids, None, THRESHOLD)), want)


def listed(x: np.ndarray, lists: np.ndarray, m: int) -> tuple[np.ndarray, ...]:
    """Each row once per list of its m nearest: (vectors, ids, list, member of it)."""
    rows, rank = np.nonzero(lists[:, :m] >= 0)
    return x[rows], rows, lists[rows, rank], rank == 0


def test_list_blocks_find_pairs_across_lists(planted):
    """Scope all's blocks: each row a member of its nearest list and a visitor of its next two. Planted
    pairs whose rows fall in different lists are found; with the own list alone they are lost."""
    x, _, want = planted
    spec = choose_index(len(x), D, nlist=64)
    empty = train(x[:4096], spec)
    lists = np.concatenate([add_listed(empty, x[:3000], 0)[1], add_listed(empty, x[3000:], 3000)[1]])
    assert lists.shape == (len(x), 3) and (lists[:, 0] != lists[:, 1]).all()
    split = [m for m in want if len({int(lists[i, 0]) for i in m}) > 1]
    assert split, "the planted pairs should straddle lists for this test to mean something"
    check(group_duplicates(pairs_in_blocks(*listed(x, lists, 3), THRESHOLD, block_rows=50)), want)
    own = group_duplicates(pairs_in_blocks(*listed(x, lists, 1), THRESHOLD))
    assert not set(split) & found_groups(own)


def test_keeper_is_most_central_ties_to_smallest_id():
    # 7 is similar to both 3 and 9; 3-9 is weaker: 7 has the largest summed similarity
    dups = group_duplicates(Pairs.build([3, 7, 9], [7, 9, 3], [0.99, 0.99, 0.98]))
    assert dups.ids[dups.keep].tolist() == [7] and set(dups.group) == {7}
    tie = group_duplicates(Pairs.build([8, 4], [4, 8], [0.99, 0.99]))  # repeated pair counted once
    assert tie.ids.tolist() == [4, 8] and tie.keep.tolist() == [True, False]


def test_removal_counts_shrink_as_threshold_rises():
    pairs = Pairs.build([0, 1, 5], [1, 2, 6], [0.99, 0.95, 0.91])
    assert removal_counts(pairs, [0.9, 0.95, 0.99, 0.999]) == {0.9: 3, 0.95: 2, 0.99: 1, 0.999: 0}

