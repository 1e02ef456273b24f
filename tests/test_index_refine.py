"""IVF-PQ with OPQ and exact re-ranking from stored fp16 vectors: sharding, recall, S3 reads."""

import boto3
import faiss
import numpy as np
import pytest

from scaleclust.config import StorageConfig
from scaleclust.index.build import add, from_bytes, merge, train, unit_float32
from scaleclust.index.choose import choose_index
from scaleclust.index.knn import exact_search, recall_at_k
from scaleclust.index.search import Refine, search, search_vectors
from scaleclust.index.synthetic import clustered_vectors
from scaleclust.index.vectors import StoredVectors, npy_bytes
from scaleclust.storage import write_bytes_atomic

faiss.omp_set_num_threads(1)
N, D, K, NPROBE, M = 8000, 32, 10, 8, 8
BOUNDS = (0, 3000, 3001, N)  # uneven shards, one with a single row


@pytest.fixture(scope="module")
def data():
    x, _ = clustered_vectors(N + 200, D, n_clusters=40, noise=1.0, seed=3)
    return x[:N], x[N:]


@pytest.fixture(scope="module")
def opq_parts(data):
    x, _ = data
    spec = choose_index(N, D, kind="ivf_pq", pq_m=M, nlist=32, opq=True, refine_factor=10)
    empty = train(x[:2048], spec)  # 8 per list and 256 per PQ centroid set: enough here, and OPQ trains slowly
    return spec, empty, [add(empty, x[lo:hi], lo) for lo, hi in zip(BOUNDS[:-1], BOUNDS[1:])]


def stored(folder, x) -> list[StoredVectors]:
    """One local .npy per shard, as the index stage writes them."""
    out = []
    for lo, hi in zip(BOUNDS[:-1], BOUNDS[1:]):
        path = folder / f"shard-{lo}.f16.npy"
        path.write_bytes(npy_bytes(unit_float32(x[lo:hi])))
        out.append(StoredVectors(str(path), StorageConfig(), lo))
    return out


def test_opq_factory_and_sharded_search_equals_unsharded(data, opq_parts):
    x, queries = data
    spec, empty, parts = opq_parts
    assert spec.factory == f"OPQ{M},IVF32,PQ{M}x8np" and spec.bytes_per_vector == M + 8
    assert spec.fixed_bytes == 32 * D * 4 + 256 * D * 4 + D * D * 4  # + the rotation
    assert isinstance(from_bytes(empty), faiss.IndexPreTransform)
    whole = from_bytes(add(empty, x, 0))
    want = search([whole], queries, K, NPROBE)
    np.testing.assert_array_equal(search(parts, queries, K, NPROBE)[1], want[1])
    np.testing.assert_array_equal(search([merge(parts[:2]), parts[2]], queries, K, NPROBE)[1], want[1])
    faiss.extract_index_ivf(whole).nprobe = NPROBE
    sims, ids = whole.search(unit_float32(queries), K)  # faiss's own search: equal up to the order of ties
    np.testing.assert_allclose(sims, want[0], atol=1e-5)
    assert (np.sort(ids, axis=1) == np.sort(want[1], axis=1)).mean() > 0.99


def test_reconstruct_undoes_the_rotation(data, opq_parts):
    x, queries = data
    _, _, parts = opq_parts
    _, ids, vectors = search_vectors(parts, queries[:20], K, NPROBE)
    cos = np.einsum("qkd,qkd->qk", vectors.astype(np.float32), x[ids])
    assert cos.mean() > 0.8  # PQ's decoding of the neighbour itself, not of its rotated version


def test_refine_lifts_recall_and_gives_exact_sims(data, opq_parts, tmp_path):
    x, queries = data
    _, _, parts = opq_parts
    truth = exact_search([(0, x)], queries, K)
    plain = search(parts, queries, K, NPROBE)
    refine = Refine(stored(tmp_path, x), factor=10)
    sims, ids = search(parts, queries, K, NPROBE, refine)
    assert recall_at_k(ids, truth[1]) >= 0.95 > recall_at_k(plain[1], truth[1]) + 0.2
    rows = unit_float32(x).astype(np.float16)[ids]  # what the shards' .npy files hold
    exact = np.einsum("qd,qkd->qk", unit_float32(queries), rows.astype(np.float32))
    np.testing.assert_allclose(sims, exact, atol=1e-4)  # re-scored: exact on the stored fp16 rows
    assert (np.diff(sims, axis=1) <= 1e-6).all()
    _, vids, vectors = search_vectors(parts, queries, K, NPROBE, refine)
    np.testing.assert_array_equal(vids, ids)
    np.testing.assert_array_equal(vectors, rows)  # the stored rows, not PQ's decoding


def test_stored_vectors_read_by_range_from_s3(data, s3_endpoint):
    x, _ = data
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="refine")
    storage = StorageConfig(endpoint_url=s3_endpoint)
    url = "s3://refine/index/shards/a.f16.npy"
    write_bytes_atomic(url, npy_bytes(x[:500]), storage)
    remote = StoredVectors(url, storage, first_id=1000)
    ids = np.array([[1499, -1, 1000], [1200, 1200, 1001]])
    got = Refine([remote], factor=1).take(ids)  # ranged reads, each distinct row once
    want = x[:500].astype(np.float16)[np.maximum(ids - 1000, 0)]
    want[ids < 0] = 0
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="ids outside 1000..1499"):
        remote.rows(np.array([1500]))
