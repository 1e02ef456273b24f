"""MLC trained with Ray Train (2 workers, DDP on gloo) inside the pipeline, on a copy of the session's
embedded run. A fit killed mid-way and resumed is tested once for the Train loop that every method but
kmeans shares (test_fit_methods.py, on SIC)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from scaleclust.config import from_dict
from scaleclust.pipeline import run_all
from scaleclust.rundir import RunDir
from scaleclust.train.loop import LOCAL_CHECKPOINT_PREFIX, local_checkpoint_prefix
from scaleclust.verify import verify
from tests.conftest import NOUNS, SharedRun

MLC = {"hidden": 64, "out_dim": 16, "batch_size": 16, "steps": 40, "warmup_steps": 10, "lr": 0.05, "eta": 0.2}
TRAIN = {"workers": 2, "cpus_per_worker": 0.5, "checkpoint_every": 20}


def mlc_config(tmp_path: Path, run: str, **cluster) -> dict:
    return {"run_dir": str(tmp_path / run), "input": {"shards": str(tmp_path / "shards" / "*.tar"), "label_field": "label"},
            "embed": {"model": {"arch": "scaleclust-tiny"}, "cpus_per_actor": 0.5, "decode_cpus": 0.5},
            "cluster": {"method": "mlc", "k": 3, "sample_size": 1000, "assign_sample": 500, "mlc": MLC,
                        "train": TRAIN, **cluster}, "label": {"vocabulary": NOUNS}}


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_mlc_pipeline_with_ray_train(tmp_path: Path, shared_run: SharedRun, ray_local: Path) -> None:
    shared_run.copy(tmp_path)
    cfg = from_dict(mlc_config(tmp_path, "run"))
    local = ray_local  # the Train workers' temp folder
    # a worker killed mid-upload left its folder, checkpoint and all (its id is past any process's);
    # a running worker's folder stays
    gone = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    orphan, alive = (local / (local_checkpoint_prefix(pid) + "x") for pid in (gone, os.getpid()))
    for folder in (orphan, alive):
        folder.mkdir()
        (folder / "state.pt").write_bytes(b"0" * 1000)
    before = set(local.glob(f"{LOCAL_CHECKPOINT_PREFIX}*"))
    try:
        metrics = run_all(cfg)
        after = set(local.glob(f"{LOCAL_CHECKPOINT_PREFIX}*"))
    finally:
        shutil.rmtree(alive)
    assert after <= before  # checkpoints uploaded, local copies gone
    assert alive in after and orphan not in after
    assert verify(cfg.run_dir, deep=True) == []
    model = RunDir(cfg.run_dir, cfg.storage).marker(RunDir(cfg.run_dir, cfg.storage).model("model.json"))
    assert model["method"] == "mlc" and model["k"] == 3
    assert model["train"]["steps"] == 40 and model["train"]["workers"] == 2 and model["train"]["starts"] == [0]
    assert metrics["counts"]["assigned"] == shared_run.rows
    assert metrics["labels"]["acc"] > 0.6  # three visually distinct classes; chance is 1/3


@pytest.mark.timeout(300)
def test_an_assigner_task_no_node_can_hold_fails_before_training(tmp_path: Path, shared_run: SharedRun,
                                                                   ray_local: Path) -> None:
    import ray

    from scaleclust.config import ConfigError
    from scaleclust.pipeline import prepare, run_stage

    shared_run.copy(tmp_path)
    nodes = max(node["Resources"]["memory"] for node in ray.nodes() if node["Alive"]) / (1 << 30)
    cfg = from_dict(mlc_config(tmp_path, "run", assign_memory_gb=round(nodes + 1, 1)))
    with pytest.raises(ConfigError, match=r"cluster\.assign_memory_gb: the MLC assigner fit needs .* could never start"):
        run_stage("fit", prepare(cfg))
    assert not (tmp_path / "run" / "model" / "train").exists()  # refused before the Train loop started
