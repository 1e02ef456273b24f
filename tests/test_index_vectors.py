"""Neighbours' vectors from a sharded index: the fan-out search with vectors keeps each neighbour's own
(stored) vector beside its id, and finds the same ids as the plain search."""

import faiss
import numpy as np

from scaleclust.index.build import add, train, unit_float32
from scaleclust.index.choose import choose_index
from scaleclust.index.search import search, search_vectors
from scaleclust.index.synthetic import clustered_vectors

faiss.omp_set_num_threads(1)


def test_search_vectors_returns_the_neighbours_own_vectors() -> None:
    x, _ = clustered_vectors(3000, 32, n_clusters=10, noise=1.0, seed=3)
    x16 = x.astype(np.float16)                     # what the embed stage stores
    spec = choose_index(len(x), 32, kind="ivf_flat", nlist=16)
    empty = train(x16, spec)
    parts = [add(empty, x16[lo:lo + 1000], lo) for lo in (0, 1000, 2000)]
    queries = x16[::97]
    sims, ids, vectors = search_vectors(parts, queries, 6, 4)
    plain = search(parts, queries, 6, 4)
    np.testing.assert_array_equal(ids, plain[1])
    np.testing.assert_allclose(sims, plain[0], atol=1e-5)
    assert vectors.dtype == np.float16 and vectors.shape == (len(queries), 6, 32)
    np.testing.assert_allclose(vectors.astype(np.float32), unit_float32(x16)[ids], atol=1e-3)
    assert (ids[:, 0] == np.arange(0, 3000, 97)).all()  # a stored row finds itself first
