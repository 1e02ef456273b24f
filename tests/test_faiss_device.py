"""faiss builds: faiss runs on a GPU only where the process may use one, k-means on the GPUs it is given
(both checked on a CPU machine);
the package installs one faiss build, faiss-cpu or (the gpu extra, the image) faiss-gpu, never both."""

import importlib.metadata
import tomllib
from pathlib import Path

import faiss
import numpy as np
import pytest
import ray

from scaleclust.cluster import kmeans
from scaleclust.index import device
from scaleclust.index.synthetic import clustered_vectors


class Recorded(faiss.Kmeans):
    """faiss.Kmeans that records the device it was asked for, then trains on the CPU (no GPU here)."""

    asked: list = []

    def __init__(self, d: int, k: int, **kwargs) -> None:
        Recorded.asked.append(kwargs.pop("gpu"))
        super().__init__(d, k, **kwargs)


@pytest.mark.parametrize("gpus, asked", [(0, False), (1, 1), (4, 4)])
def test_kmeans_runs_on_the_gpus_it_is_given(monkeypatch, gpus: int, asked) -> None:
    x, _ = clustered_vectors(2000, 16, n_clusters=5, noise=0.3, seed=2)
    want = kmeans.spherical_kmeans(x, 5, niter=10, restarts=1, seed=0)
    monkeypatch.setattr(faiss, "Kmeans", Recorded)
    Recorded.asked = []
    got = kmeans.spherical_kmeans(x, 5, niter=10, restarts=1, seed=0, gpus=gpus)
    assert Recorded.asked == [asked]
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)  # same algorithm and seed on either device


def gpus_seen_in_a_task(seen: int) -> int:
    """usable_gpus() inside a Ray task given no GPU, on a node where faiss would see ``seen`` GPUs."""
    faiss.get_num_gpus = lambda: seen  # this worker process only
    return device.usable_gpus()


@pytest.mark.timeout(120)
def test_faiss_uses_a_gpu_only_where_the_process_was_given_one(monkeypatch, ray_local) -> None:
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2)
    assert device.usable_gpus() == 2  # the driver (or a script outside Ray): every GPU faiss sees
    task = ray.remote(num_cpus=0.1, max_retries=0)(gpus_seen_in_a_task)
    assert ray.get(task.remote(2)) == 0  # Ray leaves CUDA_VISIBLE_DEVICES alone for num_gpus=0
    assert ray.get(task.remote(0)) == 0
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    assert device.usable_gpus() == 0


def test_one_faiss_build_per_install() -> None:
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert not [pin for pin in project["dependencies"] if pin.startswith("faiss")]  # an extra picks the build
    extras = project["optional-dependencies"]
    version = importlib.metadata.version("faiss-cpu")  # what the tests run on
    assert extras["cpu"] == [f"faiss-cpu=={version}"] and extras["gpu"] == [f"faiss-gpu=={version}"]
    assert f"faiss-cpu=={version}" in extras["dev"] and not [p for p in extras["dev"] if "faiss-gpu" in p]
