"""SPICE, SIC, SCL and TURTLE trained with Ray Train (2 workers) on the tiny model's embeddings of real
images, neighbours from the index, and their assignments pass `scaleclust verify`. One embedded and
indexed run directory is shared (copied per method). A kill mid-fit and resume costs a Ray start in a
subprocess, so it runs once here, for SIC; SCAN's and MLC's kill-and-resume runs live in
test_fit_scan.py and test_fit_mlc.py (the loop they share with these recipes is the same)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from scaleclust.config import ConfigError, from_dict
from scaleclust.pipeline import prepare, run_stage
from scaleclust.rundir import RunDir
from scaleclust.verify import verify
from tests.conftest import NOUNS, kill_when_present, private_ray_env
from tests.shards import write_synthetic_shards

HEADS = {"heads": 2, "hidden": 16, "steps": 60, "batch_size": 16, "neighbors": 4, "lr": 0.01, "select_steps": 20}
METHODS: dict[str, dict[str, Any]] = {
    "spice": {**HEADS, "steps": 45, "self_label_steps": 15, "batch_size": 30, "confidence": 0.8},
    "sic": {**HEADS, "space_nouns": 20, "centre_nouns": 5},
    "scl": {**HEADS, "projection": 16},
    "turtle": {"batch_size": 60, "steps": 60, "inner_steps": 3, "inner_lr": 0.01, "outer_lr": 0.01},
}


def job(folder: Path, run: str, method: str = "kmeans") -> dict[str, Any]:
    cluster: dict[str, Any] = {"method": method, "k": 3, "sample_size": 1000, "assign_sample": 120,
                               "train": {"workers": 2, "cpus_per_worker": 0.5, "checkpoint_every": 10}}
    if method in METHODS:
        cluster[method] = METHODS[method]
    return {"run_dir": str(folder / run), "input": {"shards": str(folder / "shards" / "*.tar"), "label_field": "label"},
            "embed": {"model": {"arch": "scaleclust-tiny"}, "cpus_per_actor": 0.5, "decode_cpus": 0.5},
            "index": {"nprobe": 4}, "cluster": cluster, "label": {"vocabulary": NOUNS}}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> Path:
    """120 real images (three classes) embedded by the tiny model and indexed, once for every method."""
    folder = tmp_path_factory.mktemp("methods")
    write_synthetic_shards(folder / "shards", n_shards=4, per_shard=30)
    cfg = from_dict(job(folder, "indexed"))
    ctx = prepare(cfg)
    run, shards = ctx.run, ctx.shards
    for stage in ("embed", "index"):
        run_stage(stage, ctx)
    return folder


def fit_and_assign(data: dict[str, Any]) -> tuple[RunDir, dict[str, Any]]:
    """Fit and assign in this process (on the session's Ray), verify the run, check the assignments."""
    cfg = from_dict(data)
    ctx = prepare(cfg)
    run, shards = ctx.run, ctx.shards
    for stage in ("fit", "assign"):
        run_stage(stage, ctx)
    model = run.marker(run.model("model.json"))
    method = data["cluster"]["method"]
    steps = METHODS[method]["steps"] + METHODS[method].get("self_label_steps", 0)
    assert model["method"] == method and model["k"] == 3 and model["train"]["workers"] == 2
    assert model["train"]["steps"] == steps
    if method != "turtle":
        assert model["neighbors"]["m"] == 4 and model["head_losses"][model["head"]] == min(model["head_losses"])
    assert verify(cfg.run_dir, deep=True) == []
    confidence = [c for shard, marker in run.committed("assignments").items()
                  for c in run.read_table(run.assigned(shard, marker), ["confidence"])["confidence"].to_pylist()]
    assert len(confidence) == 120 and 0.0 < min(confidence) <= max(confidence) <= 1.0
    return run, model


def copy_indexed(indexed: Path, tmp_path: Path, method: str) -> dict[str, Any]:
    shutil.copytree(indexed / "indexed", tmp_path / "run")
    shutil.copytree(indexed / "shards", tmp_path / "shards")
    return job(tmp_path, "run", method)


@pytest.mark.timeout(600)  # the first one also embeds and indexes (the module's fixture)
@pytest.mark.parametrize("method", ["spice", "scl", "turtle"])
def test_fit_with_two_workers_assigns_every_row(indexed: Path, tmp_path: Path, method: str) -> None:
    fit_and_assign(copy_indexed(indexed, tmp_path, method))


@pytest.mark.timeout(600)
def test_sic_fit_killed_resumes_and_assigns(indexed: Path, tmp_path: Path) -> None:
    """The representative kill of the shared loop for these recipes: SIC, which also builds the semantic
    space (committed under semantic/ before training, reused by the re-run)."""
    data = copy_indexed(indexed, tmp_path, "sic")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(data))
    with private_ray_env() as env:
        proc = subprocess.Popen([sys.executable, "-m", "scaleclust.cli", "fit", str(tmp_path / "job.yaml")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
        kill_when_present(proc, tmp_path / "run" / "model" / "train", "*/checkpoint_*/state.pt", timeout=400)
    assert not (tmp_path / "run" / "model" / "model.json").exists(), "kill must land mid-fit"
    assert (tmp_path / "run" / "semantic" / "space.json").exists()

    _, model = fit_and_assign(data)
    assert len(model["train"]["starts"]) == 2 and model["train"]["starts"][1] > 0  # resumed, not restarted
    assert 0 < model["semantic"]["nouns"] <= 60 and model["semantic"]["kind"] == "text"


@pytest.mark.timeout(600)
def test_a_method_registered_from_outside_the_package_runs_end_to_end(indexed: Path, tmp_path: Path) -> None:
    """Adding a method is its module and one registry entry, nothing else: a toy method (a linear head that
    maximises the mutual information between rows and clusters) registered here, with no config section,
    trains on Ray Train, assigns every row, summarises and passes verify. Its classes live in this
    function so that Ray's workers receive them by value."""
    import numpy as np
    import torch
    from torch import nn

    from scaleclust import methods

    class MutualInformation:
        steps, batch_size, neighbors = 40, 30, 0

        def __init__(self, k: int) -> None:
            self.k = k

        def head(self, in_dim: int) -> nn.Module:
            return nn.Linear(in_dim, self.k)

        def optimizer(self, head: nn.Module) -> torch.optim.Optimizer:
            return torch.optim.Adam(head.parameters(), lr=0.05)

        def loss(self, head: nn.Module, x: torch.Tensor, step: int,
                 neighbors: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
            p = head(x).softmax(-1)
            mean = p.mean(0)
            loss = -(p * p.clamp_min(1e-8).log()).sum(1).mean() + (mean * mean.clamp_min(1e-8).log()).sum()
            return loss, {"loss": loss.item()}

        def on_step(self, head: nn.Module, step: int) -> None:
            """No schedule."""

    methods.register(methods.MethodEntry("toy", "ray_train", build=lambda cluster: MutualInformation(int(cluster.k))))
    try:
        data = copy_indexed(indexed, tmp_path, "toy")
        cfg = from_dict(data)
        ctx = prepare(cfg)
        for stage in ("fit", "assign", "summary"):
            run_stage(stage, ctx)
        model = ctx.run.marker(ctx.run.model("model.json"))
        assert model["method"] == "toy" and model["train"]["steps"] == 40 and model["head"] == 0
        assert verify(cfg.run_dir, deep=True) == []
        sizes = np.asarray(ctx.run.read_table(ctx.run.clusters, ["size"])["size"].to_pylist())
        assert sizes.sum() == 120 and (sizes > 0).sum() >= 2  # every row assigned, into more than one cluster
    finally:
        methods.REGISTRY.pop("toy")
    with pytest.raises(ConfigError, match="cluster.method: 'toy' is not a method"):
        methods.get("toy")
