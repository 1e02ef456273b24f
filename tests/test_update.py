"""Nightly updates on a local Ray with the run directory on a real S3 server, and a killed update.

Three nights: the first builds version 1; on the second, two updates start together (one writes the
version, the other is refused by the lease); on the third, a planted new concept arrives, is reported as
novel, triggers a refit, and gets a new cluster id while the old clusters keep theirs. Only new shards
are embedded each night. Then an update killed mid-way (SIGKILL) and re-run leaves a verified new version
and the old version's files byte for byte as they were.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from scaleclust.cli import main
from scaleclust.cluster.drift import Novelty
from scaleclust.tables import embedding_matrix
from scaleclust.lease import LeaseHeld, holder_alive
from scaleclust.rundir import RunDir
from scaleclust.stages.summary import reduce_run
from scaleclust.update import update
from scaleclust.verify import verify
from scaleclust.versions import Versions
from tests.conftest import kill_when_present, private_ray_env
from tests.shards import NEW_CONCEPT, write_synthetic_shards

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.timeout(900)]


def labels_by_key(run: RunDir, shards: list[str]) -> dict[str, int]:
    found = {}
    for shard in shards:
        table = run.read_table(run.embeddings(shard), ["key", "label"])
        found.update(zip(table["key"].to_pylist(), (int(v) for v in table["label"].to_pylist())))
    return found


def clusters_by_key(run: RunDir, manifest: dict, shards: list[str]) -> dict[str, int]:
    found = {}
    for shard in shards:
        table = run.read_table(run.path("assignments", manifest["shards"][shard]["file"]), ["key", "cluster"])
        found.update(zip(table["key"].to_pylist(), table["cluster"].to_pylist()))
    return found


def assert_new_concept_got_a_new_id(run: RunDir, before: dict, after: dict, old_shards: list[str],
                                    new_shards: list[str], planted: set[str] | list[str]) -> None:
    """After a refit (version `after` of `before`): every old cluster kept its id, none retired, one new id;
    >= 0.95 of the old shards' rows keep their cluster id, and >= 0.8 of the planted rows are in the
    new id's cluster, the largest share of them."""
    id_map = run.marker(Versions(run).path(after["version"], "id_map.json"))
    old_ids = {int(c) for c in before["sizes"]}
    assert {m["id"] for m in id_map["matched"]} == old_ids and id_map["retired"] == []
    new_id = max(old_ids) + 1
    assert [n["id"] for n in id_map["new"]] == [new_id]
    was, now = clusters_by_key(run, before, old_shards), clusters_by_key(run, after, old_shards)
    assert sum(was[k] == now[k] for k in was) >= 0.95 * len(was)
    planted_ids = Counter(clusters_by_key(run, after, new_shards)[k] for k in planted)
    assert planted_ids.most_common(1)[0][0] == new_id and planted_ids[new_id] >= 0.8 * len(planted)


def arrivals(endpoint: str, bucket: str) -> Callable[[list[str]], list[str]]:
    """A new bucket on the S3 server, and a function that uploads shard files under shards/ (a night's
    arrivals) and returns their shard names."""
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=bucket)

    def arrive(paths: list[str]) -> list[str]:
        for path in paths:
            client.upload_file(path, bucket, f"shards/{Path(path).name}")
        return [Path(p).stem for p in paths]

    return arrive


@pytest.mark.slow
def test_three_nights_on_s3(tmp_path: Path, s3_endpoint: str, make_config) -> None:
    arrive = arrivals(s3_endpoint, "nightly")

    local = tmp_path / "shards"
    cfg = make_config("s3://nightly/run", "s3://nightly/shards/*.tar", storage={"endpoint_url": s3_endpoint},
                      update={"max_new_clusters": 1, "min_new_cluster_rows": 5})
    run = RunDir(cfg.run_dir, cfg.storage)

    # Night 1: version 1 from three shards.
    night1 = arrive(write_synthetic_shards(local, 3, 12))
    first = update(cfg)
    assert first["version"].startswith("00001-") and first["new_shards"] == night1 and first["rows"] == 36
    commits = {s: m["commit"] for s, m in run.committed("embeddings").items()}

    # Night 2: one new shard; two updates start together: one writes version 2, the other is refused.
    night2 = arrive(write_synthetic_shards(local, 1, 12, first=3))
    gate, outcomes = threading.Barrier(2), []

    def racer() -> None:
        gate.wait()
        try:
            outcomes.append(update(cfg)["version"])
        except LeaseHeld as err:
            outcomes.append(err)

    racers = [threading.Thread(target=racer) for _ in range(2)]
    for t in racers:
        t.start()
    for t in racers:
        t.join()
    refused = [o for o in outcomes if isinstance(o, LeaseHeld)]
    assert len(refused) == 1 and "is held by" in str(refused[0]), outcomes
    second = Versions(run).latest()
    assert [o for o in outcomes if isinstance(o, str)] == [second["version"]]
    assert second["new_shards"] == night2 and second["new_rows"] == 12 and second["rows"] == 48
    assert not second["refit"] and second["drift"]["status"] != "refit" and second["drift"]["novel_rows"] <= 1
    assert second["model"] == first["model"]
    # Only the new shard was embedded; the old shards' assignment files are referenced, not rewritten.
    assert all(run.committed("embeddings")[s]["commit"] == c for s, c in commits.items())
    assert {s: second["shards"][s] for s in night1} == first["shards"]
    # Night 2's summary merged the new shard into night 1's partial: the same as a summary of all shards.
    full = reduce_run(run, cfg.summary.exemplars, "label")
    merged = run.read_table(Versions(run).path(second["version"], "clusters.parquet")).to_pylist()
    assert [c["size"] for c in merged] == full.sizes.tolist()
    assert [c["exemplar_keys"] for c in merged] == [[key for _, key in ex] for ex in full.exemplars]
    assert update(cfg)["version"] == second["version"]  # nothing new: no version written twice
    assert [m["version"] for m in Versions(run).complete()] == [first["version"], second["version"]]

    # Night 3: two shards, half of their rows a concept never seen before.
    night3 = arrive(write_synthetic_shards(local, 2, 12, first=4, labels=(0, 1, 2) + (NEW_CONCEPT,) * 3))
    third = update(cfg)
    assert third["new_shards"] == night3 and third["rows"] == 72
    assert all(run.committed("embeddings")[s]["commit"] == c for s, c in commits.items())
    labels = labels_by_key(run, night3)
    planted = {k for k, v in labels.items() if v == NEW_CONCEPT}
    assert len(planted) >= 6
    # Reported as novel: the drift report counts the rows that the old clusters' novelty test rejects,
    # and those are the planted ones.
    drift = run.marker(Versions(run).path(third["version"], "drift.json"))
    novelty = Novelty.from_bytes(run.read_bytes(run.path("models", second["model"], "novelty.npz")))
    novel = set()
    for shard in night3:
        table = run.read_table(run.embeddings(shard), ["key", "embedding"])
        novel |= {k for k, n in zip(table["key"].to_pylist(), novelty.novel(embedding_matrix(table["embedding"]))) if n}
    assert drift["novel_rows"] == len(novel) and set(drift["novel_examples"]) <= novel
    # (novelty is calibrated on 36 rows here, so its 1% quantile is each cluster's farthest row)
    assert len(novel & planted) >= 0.8 * len(planted) and len(novel - planted) <= 0.25 * (len(labels) - len(planted))
    assert third["refit"] and third["drift"]["status"] == "refit" and third["model"] != second["model"]
    assert_new_concept_got_a_new_id(run, second, third, night1 + night2, night3, planted)
    assert verify(cfg.run_dir, cfg.storage) == []
    for version in (first, second):  # older versions stay readable and whole
        assert verify(cfg.run_dir, cfg.storage, version=version["version"]) == []


def version_files(run_dir: Path, manifest: dict) -> dict[str, str]:
    """Every file a version names or holds, with the sha256 of its bytes."""
    names = [f"versions/{manifest['version']}/{p.name}" for p in (run_dir / "versions" / manifest["version"]).iterdir()]
    names += [f"assignments/{e['file']}" for e in manifest["shards"].values()]
    names += [f"{manifest['model_dir']}/{p.name}" for p in (run_dir / manifest["model_dir"]).iterdir()]
    names += [f"embeddings/{s}.parquet" for s in manifest["shards"]]
    return {n: hashlib.sha256((run_dir / n).read_bytes()).hexdigest() for n in names}


@pytest.mark.subprocess
def test_killed_update_resumes_and_leaves_the_old_version_untouched(tmp_path: Path, make_config, capsys) -> None:
    shards = tmp_path / "shards"
    write_synthetic_shards(shards, 2, 10)
    cfg = make_config(str(tmp_path / "run"), str(shards / "*.tar"),
                      update={"refit": "every_n", "every_n": 1, "lease_seconds": 15})
    first = update(cfg)
    run_dir = Path(cfg.run_dir)
    before = version_files(run_dir, first)
    write_synthetic_shards(shards, 2, 10, first=2)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    with private_ray_env() as env:
        proc = subprocess.Popen([sys.executable, "-m", "scaleclust.cli", "update", str(path)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        # Kill once the refit's model is recorded (decision.json names it, after id_map.json): new model
        # written, shards not yet re-assigned.
        kill_when_present(proc, run_dir, "versions/*/decision.json",
                          until=lambda found: json.loads(found[0].read_text()).get("model"))
    history = Versions(RunDir(cfg.run_dir, cfg.storage))
    assert history.latest()["version"] == first["version"]  # the pointer never moved
    assert len(history.names()) == 2  # an unfinished version folder is left behind
    recorded = json.loads((run_dir / "versions" / history.names()[-1] / "decision.json").read_text())
    assert recorded["refit"] and recorded["model"]
    stale = json.loads((run_dir / "lease.json").read_text())  # the killed run's lease, not yet expired
    assert stale["expires"] > time.time() and holder_alive(stale["owner"]) is False
    second = update(cfg)  # takes the dead holder's lease over at once; resumes the recorded refit, not redone
    assert second["version"] == history.names()[-1] and second["parent"] == first["version"]
    assert second["refit"] and second["model"] == recorded["model"] != first["model"] and second["rows"] == 40
    assert verify(cfg.run_dir, version=second["version"]) == []
    assert verify(cfg.run_dir) == []
    assert version_files(run_dir, first) == before  # the old version, byte for byte
    assert verify(cfg.run_dir, version=first["version"]) == []
    assert not (run_dir / "lease.json").exists()
    capsys.readouterr()
    assert main(["versions", cfg.run_dir]) == 0
    listed = [line.split()[:2] for line in capsys.readouterr().out.splitlines()[1:3]]
    assert listed == [[first["version"], "20"], [second["version"], "*"]]
    # Pruning: a night with update.keep_versions 1 keeps only the version it writes, and removes the
    # assignment files and the model that only the pruned versions referenced (here: the first model's).
    write_synthetic_shards(shards, 1, 10, first=4)
    pruning = make_config(str(tmp_path / "run"), str(shards / "*.tar"),
                          update={"refit": "never", "keep_versions": 1, "lease_seconds": 15})
    third = update(pruning)
    assert [m["version"] for m in history.complete()] == history.names() == [third["version"]]
    assert history.latest()["version"] == third["version"] and third["model"] == second["model"]
    assert sorted(p.name for p in (run_dir / "assignments").glob("*.parquet")) == \
        sorted(e["file"] for e in third["shards"].values())
    assert [p.name for p in (run_dir / "models").iterdir()] == [third["model"]]
    assert {s: third["shards"][s] for s in second["shards"]} == second["shards"]  # shared files kept
    assert verify(cfg.run_dir) == [] and verify(cfg.run_dir, version=third["version"]) == []


def record_sample_tasks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int, str]]:
    """The update's sample tasks as they are made: (function, rows, dim, the setting that sizes them)."""
    from scaleclust import update as module

    made, real = [], module.sample_task

    def sample_task(cfg, fn, rows, dim, field):
        made.append((fn.__name__, rows, dim, field))
        return real(cfg, fn, rows, dim, field)

    monkeypatch.setattr(module, "sample_task", sample_task)
    return made


def test_mlc_warm_refit_keeps_ids(tmp_path: Path, make_config, monkeypatch: pytest.MonkeyPatch) -> None:
    """An MLC run refits warm: the head is kept, the subspaces are refitted from the old ones on a fresh
    sample (plus one seeded among the planted concept's novel rows), and unchanged clusters keep their ids."""
    from tests.test_fit_mlc import MLC, TRAIN

    made = record_sample_tasks(monkeypatch)

    shards = tmp_path / "shards"
    old = [Path(p).stem for p in write_synthetic_shards(shards, 3, 12)]
    cfg = make_config(str(tmp_path / "run"), str(shards / "*.tar"),
                      cluster={"method": "mlc", "assign_sample": 500, "mlc": MLC, "train": TRAIN},
                      update={"refit": "every_n", "every_n": 1, "max_new_clusters": 1, "min_new_cluster_rows": 5})
    first = update(cfg)
    new = [Path(p).stem for p in write_synthetic_shards(shards, 2, 12, first=3, labels=(0, 1, 2) + (NEW_CONCEPT,) * 3)]
    second = update(cfg)
    run = RunDir(cfg.run_dir, cfg.storage)
    model = run.marker(run.path(second["model_dir"], "model.json"))
    assert second["refit"] and second["method"] == "mlc" and model["warm_from"] == first["model"]
    assert run.read_bytes(run.path(second["model_dir"], "head.pt")) == \
        run.read_bytes(run.path(first["model_dir"], "head.pt"))  # warm: the trained head is kept
    id_map = run.marker(Versions(run).path(second["version"], "id_map.json"))
    old_ids = {int(c) for c in first["sizes"]}
    assert {m["id"] for m in id_map["matched"]} | set(id_map["retired"]) == old_ids
    assert len(id_map["matched"]) >= 2 and all(m["cosine"] >= cfg.update.match_floor for m in id_map["matched"])
    before, after = clusters_by_key(run, first, old), clusters_by_key(run, second, old)
    kept = [k for k in before if before[k] in {m["id"] for m in id_map["matched"]}]
    assert sum(before[k] == after[k] for k in kept) >= 0.9 * len(kept)
    assert second["new_shards"] == new and second["rows"] == 60 and verify(cfg.run_dir) == []
    # the tasks that hold a sample request memory for the rows they read: version 1's calibration all 36
    # rows, the refit all 60 (fewer than assign_sample's 500)
    assert made == [("_calibrate", 36, model["dim"], "update.calibration_rows"),
                    ("refit_model", 60, model["dim"], "cluster.assign_sample")]


def write_part(dump: Path, part: int, x: np.ndarray) -> list[str]:
    """Rows x as part `part` of a precomputed-embedding dump (keys PART-ROW); returns the keys."""
    for folder in ("img_emb", "metadata"):
        (dump / folder).mkdir(parents=True, exist_ok=True)
    keys = [f"{part}-{i:04d}" for i in range(len(x))]
    np.save(dump / "img_emb" / f"img_emb_{part}.npy", x.astype(np.float16))
    pq.write_table(pa.table({"key": keys}), dump / "metadata" / f"metadata_{part}.parquet")
    return keys


@pytest.mark.slow
def test_a_concept_inside_an_old_clusters_reach_is_fresh_and_gets_a_new_id(tmp_path: Path, make_config) -> None:
    """A night whose new concept lies within cluster 0's reach: few of its rows are novel and the shares
    move too little to refit, but its rows' neighbourhoods hold only new rows. The drift reports them as
    fresh, the update refits, and the concept gets its own new id while the old clusters keep theirs."""
    rng = np.random.default_rng(3)

    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    def blobs(centres: np.ndarray, n: int, noise: float) -> np.ndarray:
        return unit(centres[rng.integers(0, len(centres), n)] + noise * rng.standard_normal((n, centres.shape[1])))

    centres = unit(rng.standard_normal((3, 16)))
    near = unit(centres[0] + 0.35 * unit(rng.standard_normal(16)))
    dump = tmp_path / "dump"
    for part in range(3):
        write_part(dump, part, blobs(centres, 300, 0.08))
    cfg = make_config(str(tmp_path / "run"), str(dump), input={"format": "laion_embeddings"},
                      cluster={"sample_size": 2000})
    first = update(cfg)
    write_part(dump, 3, blobs(centres, 240, 0.08))
    planted = write_part(dump, 4, blobs(near[None], 60, 0.04))
    second = update(cfg)
    run = RunDir(cfg.run_dir, cfg.storage)
    drift = run.marker(Versions(run).path(second["version"], "drift.json"))
    assert drift["novel_share"] < 0.1 and drift["grown_excess"] < cfg.update.grown_refit  # novelty alone: no refit
    assert drift["total_variation"] + drift["novel_share"] < cfg.update.drift_refit
    assert 0.15 <= drift["fresh_share"] <= 0.21  # the planted fifth of the night, less its novel rows
    assert second["refit"] and drift["status"] == "refit"
    model = run.marker(run.path(second["model_dir"], "model.json"))
    assert model["seeded_new"] == 1 and model["k"] == 4
    assert_new_concept_got_a_new_id(run, first, second, sorted(first["shards"]), second["new_shards"], planted)
    assert verify(cfg.run_dir, cfg.storage) == []


def test_names_and_their_synset_ids_are_carried_by_cluster_id(tmp_path: Path) -> None:
    """A night without a refit keeps each cluster's name (name_id too) from the parent version's clusters
    with the same id; a parent written before name_id existed still gives its names."""
    from scaleclust.config import StorageConfig
    from scaleclust.update import carry_names

    run = RunDir(str(tmp_path / "run"), StorageConfig())
    empty = {"cluster": [0, 1, 2], "name": [None] * 3, "name_id": [None] * 3, "name_score": [None] * 3,
             "top_names": [[]] * 3}
    schema = pa.schema([("cluster", pa.int64()), ("name", pa.string()), ("name_id", pa.string()),
                        ("name_score", pa.float32()), ("top_names", pa.list_(pa.string()))])
    parents = {"new": {"cluster": [0, 2], "name": ["cat", "dog"], "name_id": ["n02121620", "n02084071"],
                       "name_score": [0.5, 0.25], "top_names": [["tabby"], ["beagle"]]}}
    parents["old"] = {k: v for k, v in parents["new"].items() if k != "name_id"}
    for version, parent in parents.items():
        run.write_table(run.clusters, pa.table(empty, schema=schema))
        run.write_table(f"{run.url}/{version}.parquet", pa.table(parent))
        carry_names(run, f"{run.url}/{version}.parquet")
        got = run.read_table(run.clusters).to_pydict()
        assert got["name"] == ["cat", None, "dog"] and got["top_names"] == [["tabby"], [], ["beagle"]]
        assert got["name_id"] == (["n02121620", None, "n02084071"] if version == "new" else [None] * 3)


def _resources() -> dict[str, float]:
    import ray

    return ray.get_runtime_context().get_assigned_resources()


def test_a_sample_task_requests_its_rows_memory_and_one_no_node_holds_is_refused(tmp_path: Path, make_config,
                                                                                   capsys) -> None:
    import ray

    from scaleclust.config import ConfigError
    from scaleclust.ray_setup import GIB
    from scaleclust.update import sample_task

    cfg = make_config(str(tmp_path / "run"), str(tmp_path / "shards" / "*.tar"))
    got = ray.get(sample_task(cfg, _resources, 10_000, 512, "cluster.sample_size").remote())
    assert got["CPU"] == 1 and got["memory"] == 2 * 10_000 * 512 * 4 + GIB  # twice the rows, plus the process
    largest = max(node["Resources"]["memory"] for node in ray.nodes() if node["Alive"])
    rows = int(largest // (8 * 768)) + 1  # twice its float32 rows alone outgrow the largest node
    with pytest.raises(ConfigError, match=rf"cluster\.sample_size: a sample of {rows:,} rows x 768 needs .* "
                                          r"could never start"):
        sample_task(cfg, _resources, rows, 768, "cluster.sample_size")
    local = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"address": "local"})})
    with pytest.raises(ConfigError, match="could never start"):
        sample_task(local, _resources, rows, 768, "cluster.sample_size")
    # a joined cluster may grow a node that holds it (its autoscaler): a warning, and the task waits
    joined = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"address": "auto"})})
    sample_task(joined, _resources, rows, 768, "cluster.sample_size")
    assert "warning: cluster.sample_size" in capsys.readouterr().out
