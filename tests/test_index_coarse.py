"""Coarse quantizer at scale: two-level centroids from a streamed sample, the nested quantizer, and shard
files that leave the shared quantizer out."""

import faiss
import numpy as np
import pytest

from scaleclust.index.build import add, from_bytes, load_shard, train
from scaleclust.index.choose import choose_index
from scaleclust.index.coarse import NESTED_MIN, shares, top_count, train_centroids
from scaleclust.index.knn import recall_at_k
from scaleclust.index.search import search
from scaleclust.index.synthetic import clustered_vectors

faiss.omp_set_num_threads(1)  # shared 2-core machine: no OpenMP spin contention
N, D, K = 120_000, 24, 10
NLIST = NESTED_MIN  # the smallest nlist that gets the nested quantizer
BLOCK = 20_000


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x, _ = clustered_vectors(N + 300, D, n_clusters=60, noise=1.0, rank=8, seed=3)
    return x[:N], x[N:]


def test_shares_are_proportional_bounded_and_exact() -> None:
    sizes = np.array([1000, 10, 0, 1, 5000, 3])
    k = shares(sizes, 120)
    assert k.sum() == 120 and (k <= sizes).all() and (k[sizes > 0] >= 1).all() and k[2] == 0
    assert abs(k[4] / k[0] - 5) < 0.3  # proportional to rows
    assert shares(np.array([2, 2]), 4).tolist() == [2, 2]  # every row a centroid when it must
    with pytest.raises(ValueError, match="index.nlist"):
        shares(np.array([3, 4]), 8)
    with pytest.raises(ValueError, match="3 cells hold rows"):  # one centroid each cannot be kept
        shares(np.array([3, 4, 5]), 2)


def test_streamed_two_level_centroids_partition_like_kmeans(data) -> None:
    x, _ = data
    consumed = []

    def blocks():
        for start in range(0, N, BLOCK):
            consumed.append(start)
            yield x[start:start + BLOCK]

    centroids = train_centroids(x[:8192], blocks(), NLIST, seed=0)
    assert consumed == list(range(0, N, BLOCK))  # one pass over the stream
    assert centroids.shape == (NLIST, D)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)
    # quantisation quality: mean cosine of a row to its nearest centroid is close to flat k-means's
    flat = faiss.Kmeans(D, NLIST, niter=20, seed=0, spherical=True, max_points_per_centroid=256)
    flat.train(x)

    def fit(c: np.ndarray) -> float:
        index = faiss.IndexFlatIP(D)
        index.add(c)
        return float(index.search(x[::10], 1)[0].mean())

    assert fit(centroids) >= fit(flat.centroids) - 0.01
    assert fit(centroids) > fit(x[np.random.default_rng(0).choice(N, NLIST, replace=False)]) + 0.005


@pytest.mark.parametrize("kind", ["ivf_flat", "ivf_pq"])
def test_nested_quantizer_index_finds_neighbours_and_shards_share_it(data, kind) -> None:
    x, queries = data
    spec = choose_index(N, D, kind=kind, nlist=NLIST, pq_m=8 if kind == "ivf_pq" else None)
    assert spec.factory.startswith(f"IVF{NLIST}(IVF{top_count(NLIST)},Flat),")
    empty = train(x[:spec.small_rows], spec, (x[s:s + BLOCK] for s in range(0, spec.train_rows, BLOCK)))
    whole = add(empty, x, 0)
    cuts = range(0, N, 40_000)
    full = [add(empty, x[s:s + 40_000], s) for s in cuts]
    stripped = [add(empty, x[s:s + 40_000], s, shared_quantizer=True) for s in cuts]
    quantizer_bytes = NLIST * D * 4
    assert all(len(f) - len(s) >= quantizer_bytes for f, s in zip(full, stripped))
    with pytest.raises(ValueError, match="load_shard"):
        search(stripped[:1], queries, K, 8)
    trained = from_bytes(empty)
    shards = [load_shard(s, trained) for s in stripped]
    del trained  # the shards keep the quantizer's owner alive
    want = search([whole], queries, K, 16)
    got = search(shards, queries, K, 16)
    np.testing.assert_array_equal(got[1], want[1])
    truth = np.argsort(-(queries @ x.T), axis=1)[:, :K]
    assert recall_at_k(got[1], truth) >= (0.9 if kind == "ivf_flat" else 0.5)
