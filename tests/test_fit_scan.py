"""SCAN trained with Ray Train (2 workers) on the tiny model's embeddings of real images, each sampled
row's neighbours fetched from the index stage's search actors; the fit is killed mid-way, resumes from
its checkpoint, and the assignments pass `scaleclust verify`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scaleclust.config import from_dict
from scaleclust.rundir import RunDir
from scaleclust.verify import verify
from tests.conftest import NOUNS, kill_when_present, private_ray_env
from tests.shards import write_synthetic_shards

SCAN = {"heads": 2, "hidden": 16, "steps": 120, "self_label_steps": 30, "batch_size": 16, "neighbors": 4,
        "lr": 0.01, "select_steps": 20}


@pytest.mark.timeout(600)
def test_scan_fit_with_index_neighbours_killed_and_resumed(tmp_path: Path) -> None:
    write_synthetic_shards(tmp_path / "shards", n_shards=4, per_shard=30)
    data = {"run_dir": str(tmp_path / "run"), "input": {"shards": str(tmp_path / "shards" / "*.tar"), "label_field": "label"},
            "embed": {"model": {"arch": "scaleclust-tiny"}, "cpus_per_actor": 0.5, "decode_cpus": 0.5},
            "index": {"nprobe": 4},
            "cluster": {"method": "scan", "k": 3, "sample_size": 1000, "scan": SCAN,
                        "train": {"workers": 2, "cpus_per_worker": 0.5, "checkpoint_every": 25}},
            "label": {"vocabulary": NOUNS}}  # WordNet's 67,893 prompts took 106 s of this test
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(data))
    cli = [sys.executable, "-m", "scaleclust.cli"]
    run = RunDir(str(tmp_path / "run"), from_dict(data).storage)

    fit_first = subprocess.run([*cli, "fit", str(job)], capture_output=True, text=True, timeout=120)
    assert fit_first.returncode != 0 and "embed stage first" in fit_first.stderr + fit_first.stdout
    for stage in ("embed", "index"):
        done = subprocess.run([*cli, stage, str(job)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]

    train_dir = tmp_path / "run" / "model" / "train"
    with private_ray_env() as env:
        proc = subprocess.Popen([*cli, "fit", str(job)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, env=env)
        kill_when_present(proc, train_dir, "*/checkpoint_*/state.pt")
    assert run.marker(run.model("model.json")) is None, "kill must land mid-fit"

    done = subprocess.run([*cli, "run", str(job)], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    model = run.marker(run.model("model.json"))
    assert model["method"] == "scan" and model["k"] == 3 and 0 <= model["head"] < 2
    assert model["train"]["steps"] == 150 and model["train"]["workers"] == 2
    assert len(model["train"]["starts"]) == 2 and model["train"]["starts"][1] > 0  # resumed, not restarted
    assert model["neighbors"]["m"] == 4 and model["head_losses"][model["head"]] == min(model["head_losses"])
    assert verify(str(tmp_path / "run"), deep=True) == []
    metrics = run.marker(run.metrics)
    assert metrics["counts"]["assigned"] == 120
    assert metrics["labels"]["acc"] > 0.6  # three visually distinct classes; chance is 1/3
    shard, marker = sorted(run.committed("assignments").items())[0]
    confidence = run.read_table(run.assigned(shard, marker), ["confidence"])["confidence"]
    assert 0.0 < min(confidence.to_pylist()) <= max(confidence.to_pylist()) <= 1.0
