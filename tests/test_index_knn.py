"""kNN graph of a sample over the sharded index: self excluded, recall against exact search."""

import faiss
import numpy as np
import pytest

from scaleclust.index.build import add, train
from scaleclust.index.choose import choose_index
from scaleclust.index.knn import drop_self, exact_search, knn_graph, knn_recall, recall_at_k
from scaleclust.index.synthetic import clustered_vectors

faiss.omp_set_num_threads(1)  # shared 2-core machine: no OpenMP spin contention
N, D, SHARDS, K = 16_000, 64, 4, 10


@pytest.fixture(scope="module")
def sharded():
    x, _ = clustered_vectors(N, D, n_clusters=50, noise=1.0, seed=2)
    spec = choose_index(N, D, nlist=64)
    empty = train(x[: spec.train_rows], spec)
    size = N // SHARDS
    parts = [add(empty, x[i:i + size], i) for i in range(0, N, size)]
    return x, parts, [(i, x[i:i + size]) for i in range(0, N, size)]


def test_exact_search_over_shards_is_brute_force(sharded):
    x, _, shards = sharded
    sims, ids = exact_search(shards, x[:20], K)
    full = x[:20] @ x.T
    np.testing.assert_array_equal(ids, np.argsort(-full, axis=1, kind="stable")[:, :K])
    np.testing.assert_allclose(sims, -np.sort(-full, axis=1)[:, :K], atol=1e-5)


def test_knn_graph_excludes_self_and_has_high_recall(sharded):
    x, parts, shards = sharded
    qid = np.arange(0, N, 7)
    sims, ids = knn_graph(parts, x[qid], qid, K, nprobe=8)
    assert ids.shape == (len(qid), K) and not (ids == qid[:, None]).any()
    assert (np.diff(sims, axis=1) <= 1e-6).all()  # best first
    assert knn_recall(parts, shards, x, np.arange(N), K, nprobe=8, n_sample=300) >= 0.9


def test_drop_self_and_recall_arithmetic():
    sims = np.array([[1.0, 0.8, 0.7], [0.9, 0.8, 0.7]], np.float32)
    ids = np.array([[5, 1, 2], [3, 4, 6]])
    kept = drop_self((sims, ids), np.array([5, 9]), 2)
    assert kept[1].tolist() == [[1, 2], [3, 4]]  # self dropped; else the last one dropped
    assert recall_at_k(np.array([[1, 2], [3, 9]]), np.array([[1, 2], [3, 4]])) == 0.75
