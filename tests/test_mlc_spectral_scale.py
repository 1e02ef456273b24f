"""MLC's spectral step at scale: the sparse kNN membership agrees with the dense one, one eigen-solve
serves every K, and assign_sample=100,000 fits in a stated memory bound (no n x n matrix)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from scaleclust.cluster.mlc import assign_memory_bytes, knn_membership, membership_affinity
from scaleclust.cluster.settings import MLCConfig
from scaleclust.cluster.spectral import SpectralBasis, spectral_cluster
from scaleclust.config import ClusterConfig, ConfigError
from scaleclust.methods import check_assign_memory
from scaleclust.index.synthetic import clustered_vectors
from tests.conftest import rejected_before_ray

REPO = Path(__file__).resolve().parents[1]


def test_sparse_membership_clusters_like_the_dense_one() -> None:
    c, labels = clustered_vectors(1500, 16, 6, noise=0.9, seed=3)
    config = MLCConfig()
    dense = spectral_cluster(membership_affinity(c, config), 6, seed=0)
    graph = knn_membership(c, config, neighbors=10)
    assert graph.nnz <= 2 * 1500 * 11 and abs(graph - graph.T).max() < 1e-9
    sparse = spectral_cluster(graph, 6, seed=0)
    assert adjusted_rand_score(labels, dense) > 0.9
    assert adjusted_rand_score(labels, sparse) > 0.9
    assert adjusted_rand_score(dense, sparse) > 0.9


def test_one_eigen_solve_serves_every_smaller_k() -> None:
    c, labels = clustered_vectors(1200, 16, 4, noise=0.8, seed=1)
    graph = knn_membership(c, MLCConfig(), neighbors=10)
    basis = SpectralBasis.of(graph, 8, seed=0)
    separate = SpectralBasis.of(graph, 4, seed=0).embedding(4)
    reused = basis.embedding(4)
    # the same 4-dimensional eigenspace whichever k_max was solved for: principal angles near 0
    cosines = np.linalg.svd(np.linalg.qr(basis.vectors[:, :4])[0].T @ np.linalg.qr(separate)[0], compute_uv=False)
    assert cosines.min() > 0.99
    assert adjusted_rand_score(labels, basis.labels(4, seed=0)) > 0.95
    assert reused.shape == (1200, 4) and len(set(basis.labels(7, seed=0))) == 7


def test_memory_estimate_refuses_a_dense_sample_before_any_work() -> None:
    cluster = ClusterConfig(method="mlc", k=10, assign_sample=5000, assign_memory_gb=0.25)
    with pytest.raises(ConfigError, match=r"cluster\.assign_memory_gb: .*5,000 rows"):
        check_assign_memory(cluster, 5000, 0)
    check_assign_memory(cluster.model_copy(update={"assign_memory_gb": 2.0}), 5000, 512)


@pytest.mark.subprocess
@pytest.mark.timeout(150)
def test_an_assign_sample_too_big_for_its_memory_fails_before_ray(tmp_path: Path) -> None:
    data = {"run_dir": str(tmp_path / "run"), "input": {"shards": str(tmp_path / "shards" / "*.tar")},
            "cluster": {"method": "mlc", "k": 10, "assign_sample": 5000, "assign_memory_gb": 0.1}}
    stderr = rejected_before_ray(tmp_path, data, timeout=140)
    assert "cluster.assign_memory_gb" in stderr and "5,000 rows" in stderr, stderr


BOUND_GIB = 1.5  # the stated bound for 100,000 rows of 64-d embeddings, k 20: docs/measurements.md says the same

SCRIPT = textwrap.dedent("""
    import json, resource
    import numpy as np, torch
    from scaleclust.cluster.mlc import MLC, fit_assigner
    from scaleclust.cluster.settings import MLCConfig
    from scaleclust.index.synthetic import clustered_vectors

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    torch.set_num_threads(2)
    x, labels = clustered_vectors(100_000, 64, 20, noise=0.7, seed=0)
    config = MLCConfig()
    torch.manual_seed(0)
    head = MLC(config).head(64)
    base = rss("VmRSS:")
    assigner, spectral = fit_assigner(head, x, 20, config, seed=0, neighbors=10)
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"base": base, "peak": rss("VmHWM:"), "clusters": int(len(np.unique(spectral))),
                      "rows": int(len(spectral)), "cpu_s": round(cpu.ru_utime + cpu.ru_stime, 1)}))
""")


@pytest.mark.subprocess
@pytest.mark.timeout(400)
def test_assign_step_at_100k_rows_stays_within_its_memory_bound() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=390)
    assert out.returncode == 0, out.stderr[-2000:]
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts["rows"] == 100_000 and facts["clusters"] == 20
    grew = facts["peak"] - facts["base"]
    estimate = assign_memory_bytes(100_000, 64, MLCConfig(), 20, 10)
    assert facts["peak"] < BOUND_GIB * 2**30, facts
    assert grew < estimate, (grew, estimate)  # the estimate the fit checks before it starts is an upper bound
    assert estimate < 100_000 ** 2 * 8 / 100  # and far below one dense n x n float64 matrix (80 GB)
