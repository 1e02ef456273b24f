"""SCAN trained with Ray Train (2 workers) on the tiny model's embeddings of real images (a copy of the
session's embedded and indexed run), each sampled row's neighbours fetched from the index stage's search
actors; the whole pipeline after it runs, and the assignments pass `scaleclust verify`. A fit killed and
resumed is tested once for the Train loop that SCAN shares with the other methods (test_fit_methods.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from scaleclust.cli import main
from scaleclust.config import from_dict
from scaleclust.pipeline import run_all
from scaleclust.rundir import RunDir
from scaleclust.verify import verify
from tests.conftest import NOUNS, SharedRun

# 60 + 15 steps: enough on these three classes; the 120 + 30 it had gave a kill time to land mid-fit, and the
# Train loop's kill is tested once, in test_fit_methods.py
SCAN = {"heads": 2, "hidden": 16, "steps": 60, "self_label_steps": 15, "batch_size": 16, "neighbors": 4,
        "lr": 0.01, "select_steps": 20}


def scan_job(folder: Path) -> dict:
    return {"run_dir": str(folder / "run"), "input": {"shards": str(folder / "shards" / "*.tar"), "label_field": "label"},
            "embed": {"model": {"arch": "scaleclust-tiny"}, "cpus_per_actor": 0.5, "decode_cpus": 0.5},
            "index": {"nprobe": 4},
            "cluster": {"method": "scan", "k": 3, "sample_size": 1000, "scan": SCAN,
                        "train": {"workers": 2, "cpus_per_worker": 0.5, "checkpoint_every": 25}},
            "label": {"vocabulary": NOUNS}}  # WordNet's 67,893 prompts took 106 s of this test


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_scan_fit_with_index_neighbours(tmp_path: Path, shared_run: SharedRun, capsys) -> None:
    (tmp_path / "new" / "shards").mkdir(parents=True)  # shards not embedded yet: fit refuses, saying why
    shutil.copy(shared_run.folder / "shards" / "00000.tar", tmp_path / "new" / "shards")
    (tmp_path / "new" / "job.yaml").write_text(yaml.safe_dump(scan_job(tmp_path / "new")))
    assert main(["fit", str(tmp_path / "new" / "job.yaml")]) != 0
    assert "embed stage first" in capsys.readouterr().err

    data = scan_job(shared_run.copy(tmp_path / "indexed"))
    metrics = run_all(from_dict(data))
    run = RunDir(data["run_dir"], from_dict(data).storage)
    model = run.marker(run.model("model.json"))
    assert model["method"] == "scan" and model["k"] == 3 and 0 <= model["head"] < 2
    assert model["train"]["steps"] == 75 and model["train"]["workers"] == 2 and model["train"]["starts"] == [0]
    assert model["neighbors"]["m"] == 4 and model["head_losses"][model["head"]] == min(model["head_losses"])
    assert verify(data["run_dir"], deep=True) == []
    assert metrics["counts"]["assigned"] == shared_run.rows
    assert metrics["labels"]["acc"] > 0.6  # three visually distinct classes; chance is 1/3
    confidence = [c for shard, marker in sorted(run.committed("assignments").items())
                  for c in run.read_table(run.assigned(shard, marker), ["confidence"])["confidence"].to_pylist()]
    assert 0.0 < min(confidence) <= max(confidence) <= 1.0
    # the calibration sample is every row here (fewer than calibration.ROWS), so the assigned confidence is
    # the calibrated one exactly when assign applies the recorded temperature
    calibrated = model["calibration"]
    assert calibrated["rows"] == shared_run.rows and calibrated["neighbors"] >= 1
    assert abs(sum(confidence) / len(confidence) - calibrated["mean_confidence"]) < 2e-3
    expected = min(calibrated["agreement"], calibrated["mean_confidence_raw"])  # the temperature only cools
    assert abs(calibrated["mean_confidence"] - expected) < 2e-3
