"""Nightly updates of a SCAN run (the default method), on a local Ray with tiny SCAN heads: the warm
refit trains from the committed head, a planted concept gets a new cluster id while the unchanged
clusters keep theirs, and a refit killed midway and re-run ends where an unbroken one ends.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scaleclust.config import StorageConfig
from scaleclust.rundir import RunDir
from scaleclust.storage import listdir
from scaleclust.update import update
from scaleclust.verify import verify
from scaleclust.versions import Versions
from tests.conftest import a_state_loads, checkpoint_steps, joined_slow_train_env, kill_when_present
from tests.shards import NEW_CONCEPT, write_synthetic_shards
from tests.test_update import (arrivals, assert_new_concept_got_a_new_id, clusters_by_key, labels_by_key,
                               record_sample_tasks, version_files)

# 1200 s: three or four update runs each; the killed refit took 324 s in a suite run here and over 600 s in one CI run
pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.timeout(1200)]

SCAN = {"heads": 2, "hidden": 16, "steps": 120, "self_label_steps": 30, "batch_size": 16, "neighbors": 4,
        "lr": 0.01, "select_steps": 20}
PLANTED = (0, 1, 2) + (NEW_CONCEPT,) * 3  # half of a night's rows are a concept never seen before


def scan_config(make_config, run_dir: str, shards: str, checkpoint_every: int = 25, scan: dict = SCAN, **sections):
    return make_config(run_dir, shards, index={"nprobe": 4},
                       cluster={"method": "scan", "k": 3, "scan": scan,
                                "train": {"workers": 2, "cpus_per_worker": 0.5, "checkpoint_every": checkpoint_every}},
                       update={"max_new_clusters": 1, "min_new_cluster_rows": 5, "refit_steps": 40,
                               "lease_seconds": 30},
                       **sections)


@pytest.mark.slow
def test_scan_three_nights_on_s3_new_concept_gets_a_new_id(tmp_path: Path, s3_endpoint: str, make_config,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    arrive = arrivals(s3_endpoint, "nightly-scan")
    made = record_sample_tasks(monkeypatch)

    local = tmp_path / "shards"
    cfg = scan_config(make_config, "s3://nightly-scan/run", "s3://nightly-scan/shards/*.tar",
                      storage={"endpoint_url": s3_endpoint})
    assert cfg.update.refit is None  # the default policy, on_drift, refits scan
    run = RunDir(cfg.run_dir, cfg.storage)

    night1 = arrive(write_synthetic_shards(local, 3, 20))
    first = update(cfg)
    assert first["method"] == "scan" and first["rows"] == 60
    night2 = arrive(write_synthetic_shards(local, 1, 20, first=3))
    second = update(cfg)
    assert second["new_shards"] == night2 and not second["refit"] and second["model"] == first["model"]

    night3 = arrive(write_synthetic_shards(local, 2, 20, first=4, labels=PLANTED))
    third = update(cfg)
    assert third["refit"] and third["drift"]["status"] == "refit" and third["model"] != second["model"]
    model = run.marker(run.path(third["model_dir"], "model.json"))
    assert model["warm_from"] == second["model"] and model["seeded_new"] == 1 and model["k"] == 4
    assert model["train"]["steps"] == 40 and model["train"]["name"].startswith("refit-")
    # the refit's checkpoints go once the model is recorded; the cold fit's stay
    assert not [e for e in listdir(run.model("train"), run.storage) if "refit-" in e]
    planted = [k for k, v in labels_by_key(run, night3).items() if v == NEW_CONCEPT]
    assert_new_concept_got_a_new_id(run, second, third, night1 + night2, night3, planted)
    # version 1's calibration holds all 60 rows, the refit's tasks around the training its whole sample (120)
    assert made == [("_calibrate", 60, model["dim"], "update.calibration_rows"),
                    *[(fn, 120, model["dim"], "cluster.sample_size") for fn in ("warm_start", "finish_heads")]]
    assert verify(cfg.run_dir, cfg.storage) == []
    for version in (first, second, third):
        assert verify(cfg.run_dir, cfg.storage, version=version["version"]) == []


def shard_clusters(run_dir: Path, manifest: dict) -> dict[str, int]:
    """key -> cluster over every shard of a version."""
    return clusters_by_key(RunDir(str(run_dir), StorageConfig()), manifest, sorted(manifest["shards"]))


@pytest.mark.subprocess
@pytest.mark.slow
def test_killed_scan_refit_ends_where_an_unbroken_one_ends(tmp_path: Path, make_config) -> None:
    shards = tmp_path / "shards"
    write_synthetic_shards(shards, 3, 20)
    # a shorter cold fit than the other test's: what is compared here is two refits of the same model
    cfg = scan_config(make_config, str(tmp_path / "a"), str(shards / "*.tar"), checkpoint_every=10,
                      scan={**SCAN, "steps": 40, "self_label_steps": 10})
    first = update(cfg)
    write_synthetic_shards(shards, 2, 20, first=3, labels=PLANTED)
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # the same state twice: one refit runs unbroken, one is killed
    unbroken = update(cfg)
    assert unbroken["refit"]

    killed_cfg = cfg.model_copy(update={"run_dir": str(tmp_path / "b")})
    before = version_files(tmp_path / "b", first)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(killed_cfg.model_dump(mode="json")))
    proc = subprocess.Popen([sys.executable, "-m", "scaleclust.cli", "update", str(job)], env=joined_slow_train_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # killed once a whole checkpoint is there: one cut short mid-upload is skipped, and the re-run starts afresh
    kill_when_present(proc, tmp_path / "b" / "model" / "train", "refit-*/checkpoint_*/state.pt", until=a_state_loads)
    newest = checkpoint_steps(tmp_path / "b" / "model" / "train", "refit-*")[-1]
    run = RunDir(str(tmp_path / "b"), StorageConfig())
    history = Versions(run)
    assert history.latest()["version"] == first["version"]  # the pointer never moved
    assert run.marker(history.path(history.names()[-1], "decision.json"))["model"] is None  # killed mid-refit
    resumed = update(killed_cfg)
    assert resumed["refit"] and resumed["k"] == unbroken["k"]
    models = [json.loads((tmp_path / side / m["model_dir"] / "model.json").read_text())
              for side, m in (("a", unbroken), ("b", resumed))]
    assert newest < models[1]["train"]["steps"], f"the kill landed after the last checkpoint (step {newest})"
    assert models[1]["train"]["starts"][0] == 0 and len(models[1]["train"]["starts"]) == 2  # resumed, not redone
    assert models[1]["train"]["starts"][1] > 0
    heads = [hashlib.sha256((tmp_path / side / m["model_dir"] / "head.pt").read_bytes()).hexdigest()
             for side, m in (("a", unbroken), ("b", resumed))]
    assert heads[0] == heads[1]
    assert models[0]["cluster_ids"] == models[1]["cluster_ids"] and models[0]["head"] == models[1]["head"]
    assert shard_clusters(tmp_path / "a", unbroken) == shard_clusters(tmp_path / "b", resumed)
    assert version_files(tmp_path / "b", first) == before  # the previous version, byte for byte
    for side, manifest in (("a", first), ("a", unbroken), ("b", first), ("b", resumed)):
        assert verify(str(tmp_path / side), version=manifest["version"]) == []
