"""faiss builds: k-means picks the GPU when faiss sees one and the CPU otherwise (checked on a CPU machine);
the package installs one faiss build, faiss-cpu or (the gpu extra, the image) faiss-gpu, never both."""

import importlib.metadata
import tomllib
from pathlib import Path

import faiss
import numpy as np
import pytest

from scaleclust.cluster import kmeans
from scaleclust.index.synthetic import clustered_vectors


class Recorded(faiss.Kmeans):
    """faiss.Kmeans that records the device it was asked for, then trains on the CPU (no GPU here)."""

    asked: list = []

    def __init__(self, d: int, k: int, **kwargs) -> None:
        Recorded.asked.append(kwargs.pop("gpu"))
        super().__init__(d, k, **kwargs)


@pytest.mark.parametrize("seen, asked", [(0, False), (1, 1), (4, 4)])
def test_kmeans_uses_every_gpu_faiss_sees(monkeypatch, seen: int, asked) -> None:
    x, _ = clustered_vectors(2000, 16, n_clusters=5, noise=0.3, seed=2)
    want = kmeans.spherical_kmeans(x, 5, niter=10, restarts=1, seed=0, gpus=0)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: seen)
    monkeypatch.setattr(faiss, "Kmeans", Recorded)
    Recorded.asked = []
    assert kmeans.kmeans_gpus() == seen
    got = kmeans.spherical_kmeans(x, 5, niter=10, restarts=1, seed=0)
    assert Recorded.asked == [asked]
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)  # same algorithm and seed on either device
    kmeans.spherical_kmeans(x, 5, niter=10, restarts=1, seed=0, gpus=0)
    assert Recorded.asked[-1] is False  # an explicit 0 keeps it on the CPU



def test_one_faiss_build_per_install() -> None:
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert not [pin for pin in project["dependencies"] if pin.startswith("faiss")]  # an extra picks the build
    extras = project["optional-dependencies"]
    version = importlib.metadata.version("faiss-cpu")  # what the tests run on
    assert extras["cpu"] == [f"faiss-cpu=={version}"] and extras["gpu"] == [f"faiss-gpu=={version}"]
    assert f"faiss-cpu=={version}" in extras["dev"] and not [p for p in extras["dev"] if "faiss-gpu" in p]
