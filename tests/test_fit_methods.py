"""SPICE, SIC, SCL and TURTLE trained with Ray Train (2 workers) on the tiny model's embeddings of real
images, neighbours from the index, and their assignments pass `scaleclust verify`; each copies the
session's embedded and indexed run (tests/conftest.py, shared_run). The Train loop's one kill-and-resume
test is here, on SIC: every method but kmeans trains on the same loop (SCAN in test_fit_scan.py, MLC in
test_fit_mlc.py), so one kill (of a command that joins the session's Ray) covers them. SIC's nightly refit is
here too: the one method whose recipe is built from the run (its nouns) for a refit as for a fit."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import numpy as np
import torch
import yaml

from scaleclust import methods
from scaleclust.config import ConfigError, from_dict
from scaleclust.pipeline import prepare, run_stage
from scaleclust.rundir import RunDir, cluster_ids
from scaleclust.verify import verify
from scaleclust.versions import Versions
from tests.conftest import NOUNS, SharedRun, checkpoint_steps, joined_slow_train_env, kill_when_present

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


def fit_and_assign(data: dict[str, Any], rows: int) -> tuple[RunDir, dict[str, Any]]:
    """Fit and assign in this process (on the session's Ray), verify the run, check the assignments."""
    cfg = from_dict(data)
    ctx = prepare(cfg)
    run = ctx.run
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
    assert len(confidence) == rows and 0.0 < min(confidence) <= max(confidence) <= 1.0
    return run, model


def copy_shared(shared_run: SharedRun, folder: Path, method: str) -> dict[str, Any]:
    shared_run.copy(folder)
    return job(folder, "run", method)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["spice", "scl", "turtle"])
def test_fit_with_two_workers_assigns_every_row(shared_run: SharedRun, tmp_path: Path, method: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    fit_and_assign(copy_shared(shared_run, tmp_path, method), shared_run.rows)
    # a method that does not beat k-means on every labelled set says so when it fits
    reason = methods.get(method).experimental
    said = [line for line in capsys.readouterr().out.splitlines() if "is experimental" in line]
    assert said == ([f"fit: {method} is experimental: {reason}"] if reason else [])


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_fit_resumes_from_its_newest_checkpoint(shared_run: SharedRun, tmp_path: Path) -> None:
    """The one kill of the Train loop that every method but kmeans shares: a SIC fit (which also builds its
    semantic space, committed under semantic/ before training) killed mid-way resumes from its newest
    complete checkpoint, with max_failures and checkpoint_every changed (as after a crash), to the same
    steps and final loss as an unbroken fit, keeping only the newest checkpoints."""
    data = copy_shared(shared_run, tmp_path / "killed", "sic")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(data))
    train_dir = tmp_path / "killed" / "run" / "model" / "train"
    proc = subprocess.Popen([sys.executable, "-m", "scaleclust.cli", "fit", str(tmp_path / "job.yaml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=joined_slow_train_env())
    kill_when_present(proc, train_dir, "*/checkpoint_*/state.pt", timeout=400, settle=1)
    assert not (tmp_path / "killed" / "run" / "model" / "model.json").exists(), "kill must land mid-fit"
    assert (tmp_path / "killed" / "run" / "semantic" / "space.json").exists()
    newest = checkpoint_steps(train_dir)[-1]

    every = data["cluster"]["train"]["checkpoint_every"]
    knobs = {"max_failures": 5, "checkpoint_every": 25}
    _, model = fit_and_assign({**data, "cluster": {**data["cluster"], "train": {**data["cluster"]["train"], **knobs}}},
                              shared_run.rows)
    facts = model["train"]
    assert newest < facts["steps"], f"the kill landed after the last checkpoint (step {newest}): nothing to resume"
    assert len(facts["starts"]) == 2 and facts["starts"][1] > 0, facts["starts"]  # resumed, not restarted
    # From the newest complete checkpoint, never an older one (Ray Train's own record lags its uploads).
    # A worker orphaned by the kill may still upload a newer one before the re-run starts: hence >=.
    assert facts["starts"][1] >= newest and facts["starts"][1] % every == 0, (facts["starts"], newest)
    steps, start = facts["steps"], facts["starts"][1]  # the re-run checkpoints every 25 steps (and at the end)
    kept = sorted({start, steps, *(s for s in range(start + 1, steps) if s % 25 == 0)})[-2:]
    assert sorted(p.name for p in train_dir.glob("*/checkpoint_step_*")) == [f"checkpoint_step_{s:08d}" for s in kept]
    assert 0 < model["semantic"]["nouns"] <= 60 and model["semantic"]["kind"] == "text"

    unbroken = from_dict(copy_shared(shared_run, tmp_path / "unbroken", "sic"))
    ctx = prepare(unbroken)
    reference = run_stage("fit", ctx)["train"]
    assert reference["starts"] == [0] and reference["steps"] == steps
    # A fit is deterministic given its seed (same rows per rank, epoch order from (seed, rank, epoch)), so
    # the resumed fit retraces the unbroken one.
    assert facts["final_loss"] == pytest.approx(reference["final_loss"], rel=1e-4, abs=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sic_refits_warm_against_the_nouns_of_its_semantic_space(shared_run: SharedRun, tmp_path: Path) -> None:
    """A nightly refit builds SIC as its fit does, from the run (its semantic space's nouns, through the
    registry's `recipe`; without them SIC cannot train), trains the committed head warm for
    update.refit_steps, and writes the refitted model with the fit's semantic facts and every old id kept."""
    import ray

    from scaleclust.update import _calibrate, refit_heads

    data = copy_shared(shared_run, tmp_path, "sic")
    data["cluster"]["train"]["workers"] = 1
    data["update"] = {"refit_steps": 20}
    cfg = from_dict(data)
    ctx = prepare(cfg)
    run_stage("fit", ctx)
    run = ctx.run
    old, markers = run.marker(run.model("model.json")), run.committed("embeddings")
    # what the first update keeps of the model before any night refits it: its archive and novelty calibration
    Versions(run).archive_model(old, list(methods.get("sic").files))
    ray.get(ray.remote(_calibrate).remote(run, old, markers, cfg.assign.temperature, cfg.update, cfg.cluster.seed))
    meta, mapping = refit_heads(cfg, run, markers, old, cfg.cluster.seed + 1, "00002", unseen=set(), grown=[])
    # reaching here is the check that the refit built SIC with its nouns: without them SIC's loss raises
    assert meta["method"] == "sic" and meta["warm_from"] == old["model_id"]
    assert meta["train"]["steps"] == 20 and meta["train"]["starts"] == [0] and meta["seeded_new"] == 0
    assert meta["k"] == old["k"] and sorted(meta["cluster_ids"]) == cluster_ids(old).tolist()
    assert mapping["retired"] == []
    refitted = methods.read(run, run.path("models", meta["model_id"], "head.pt"))
    assert any(not torch.equal(refitted[name], value) for name, value in methods.read(run, run.model("head.pt")).items())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_method_registered_from_outside_the_package_runs_end_to_end(shared_run: SharedRun, tmp_path: Path) -> None:
    """Adding a method is its module and one registry entry, nothing else: a toy method (a linear head that
    maximises the mutual information between rows and clusters) registered here, with no config section,
    trains on Ray Train, assigns every row, summarises and passes verify. Its classes live in this
    function so that Ray's workers receive them by value."""
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
        data = copy_shared(shared_run, tmp_path, "toy")
        cfg = from_dict(data)
        ctx = prepare(cfg)
        for stage in ("fit", "assign", "summary"):
            run_stage(stage, ctx)
        model = ctx.run.marker(ctx.run.model("model.json"))
        assert model["method"] == "toy" and model["train"]["steps"] == 40 and model["head"] == 0
        assert verify(cfg.run_dir, deep=True) == []
        sizes = np.asarray(ctx.run.read_table(ctx.run.clusters, ["size"])["size"].to_pylist())
        assert sizes.sum() == shared_run.rows and (sizes > 0).sum() >= 2  # every row assigned, into more than one cluster
    finally:
        methods.REGISTRY.pop("toy")
    with pytest.raises(ConfigError, match="cluster.method: 'toy' is not a method"):
        methods.get("toy")
