"""Train once, add per shard, fan-out search == one unsharded index; bytes round trip; id ranges."""

import faiss
import numpy as np
import pytest

from scaleclust.index.build import add, from_bytes, merge, to_bytes, train, unit_float32
from scaleclust.index.choose import choose_index
from tests.index_ids import IdRanges
from scaleclust.index.search import coarse_assign, merge_topk, search
from scaleclust.index.synthetic import clustered_vectors

faiss.omp_set_num_threads(1)  # shared 2-core machine: no OpenMP spin contention
N, D, K, NPROBE = 12_000, 64, 10, 8
COUNTS = (3000, 4500, 1, 4499)  # uneven shards, one with a single row


@pytest.fixture(scope="module")
def data():
    x, _ = clustered_vectors(N + 200, D, n_clusters=40, noise=1.0, seed=1)
    return x[:N], x[N:]


def build_shards(x: np.ndarray, spec) -> tuple[bytes, list[bytes], IdRanges]:
    empty = train(x[:4096], spec)  # 64 per list; fewer than faiss wants for PQ, to stay fast
    ranges = IdRanges.from_counts([f"shard-{i:03d}" for i in range(len(COUNTS))], COUNTS)
    offsets = ranges.offsets
    parts = [add(empty, x[lo:hi], int(lo)) for lo, hi in zip(offsets[:-1], offsets[1:])]
    return empty, parts, ranges


@pytest.mark.parametrize("kind", ["ivf_flat", "ivf_pq"])
def test_sharded_search_equals_unsharded(data, kind):
    x, queries = data
    spec = choose_index(N, D, kind=kind, pq_m=8 if kind == "ivf_pq" else None, nlist=64)
    empty, parts, _ = build_shards(x, spec)
    whole = add(empty, x, 0)
    want = search([whole], queries, K, NPROBE)
    got = search(parts, queries, K, NPROBE)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    lazy = search((p for p in parts), queries, K, NPROBE)  # one index in memory at a time
    np.testing.assert_array_equal(lazy[1], want[1])
    grouped = search([merge(parts[:2]), merge(parts[2:])], queries, K, NPROBE)
    np.testing.assert_array_equal(grouped[1], want[1])
    # the groups of a fan-out reuse one coarse assignment, computed once for all of them
    coarse = coarse_assign(empty, unit_float32(queries), NPROBE)
    shared = [search(group, queries, K, NPROBE, coarse=coarse) for group in (parts[:2], parts[2:])]
    np.testing.assert_array_equal(merge_topk(*shared, K)[1], want[1])
    with pytest.raises(ValueError, match="trained separately"):
        search(parts, queries, K, NPROBE, coarse=coarse_assign(train(x[:4096], choose_index(N, D, kind=kind, nlist=32,
               pq_m=8 if kind == "ivf_pq" else None)), unit_float32(queries), NPROBE))
    # and it is the same as faiss's own search on the unsharded index
    index = from_bytes(whole)
    index.nprobe = NPROBE
    sims, ids = index.search(queries, K)
    np.testing.assert_array_equal(ids, want[1])
    np.testing.assert_allclose(sims, want[0], atol=1e-5)


def test_serialise_round_trip(data):
    x, queries = data
    spec = choose_index(N, D, nlist=64)
    empty, parts, _ = build_shards(x, spec)
    again = to_bytes(from_bytes(parts[0]))
    assert again == parts[0]
    index = from_bytes(parts[0])
    assert index.is_trained and index.ntotal == COUNTS[0] and index.nlist == 64
    assert from_bytes(empty).ntotal == 0
    with pytest.raises(ValueError, match="empty"):
        add(parts[0], x[:5], 0)


def test_id_ranges_locate_and_manifest_form():
    ranges = IdRanges.from_counts(["a", "b", "c", "d"], COUNTS)
    assert ranges.first_id("c") == 7500 and ranges.total == N
    shard, row = ranges.locate(np.array([0, 2999, 3000, 7500, 7501, N - 1]))
    assert shard.tolist() == [0, 0, 1, 2, 3, 3] and row.tolist() == [0, 2999, 0, 0, 0, 4498]
    assert IdRanges.from_dict(ranges.to_dict()) == ranges
    with pytest.raises(ValueError):
        ranges.locate(np.array([-1]))


def test_merge_topk_orders_by_score_then_id_and_puts_missing_last():
    a = (np.array([[0.9, 0.5]], np.float32), np.array([[7, 3]]))
    b = (np.array([[0.5, -3e38]], np.float32), np.array([[2, -1]]))
    sims, ids = merge_topk(a, b, 4)
    assert ids.tolist() == [[7, 2, 3, -1]]
    assert sims[0, :3].tolist() == pytest.approx([0.9, 0.5, 0.5]) and sims[0, 3] == -np.inf
