"""Rehearsal of every production job (jobs/*.yaml but the demo, which runs in test_submit.py) as written.

Each job file is submitted verbatim with `scaleclust submit` to one local `ray start --head` (conftest.ray_head),
its run directory and its input shards in the job's own buckets on the session's S3 server. Only the model (the
tiny random-weight one), the sizes (rows, steps, actor and worker counts, GPUs) and the naming vocabulary
(tests/nouns.txt) are overridden. Then the job's nightly command, read from the nightly manifests under
infra/k8s/components, is submitted the same way, with the same overrides, after two new shards arrived. The
run directory must pass `verify`, and its model, index and names must be the job's method, index kind and
naming. A job file that no longer loads or runs fails here.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from scaleclust.cli import main
from scaleclust.cluster.naming import UNNAMED
from scaleclust.config import Config, StorageConfig, load
from scaleclust.index.manifest import load_manifest
from scaleclust.rundir import RunDir
from scaleclust.semantic import wordnet
from scaleclust.semantic.space import TEXT, space_nouns
from scaleclust.semantic.vocab import load_vocabulary
from scaleclust.stage import recorded
from scaleclust.stages.index import choose
from scaleclust.verify import verify
from scaleclust.versions import Versions
from tests.conftest import NOUNS
from tests.shards import write_synthetic_shards

REPO = Path(__file__).resolve().parents[1]
JOBS = sorted(path.name for path in (REPO / "jobs").glob("*.yaml") if path.name != "demo.yaml")
PER_SHARD = 12  # rows per shard: 2 shards for the job, 2 more for its night
STEPS = {"steps": 8, "self_label_steps": 4, "warmup_steps": 2, "batch_size": 16, "select_steps": 4}


def rehearsal_sets(job: Config) -> list[str]:
    """The --set overrides that shrink `job` to the tiny model and these few rows on 2 CPUs: the model, rows,
    steps, actor and worker counts, GPUs, and the test vocabulary. Nothing else of the job changes."""
    method = getattr(job.cluster, job.cluster.method, None)
    steps = [f"cluster.{job.cluster.method}.{name}={value}" for name, value in STEPS.items()
             if method is not None and name in type(method).model_fields]
    return ["embed.model={kind: open_clip, arch: scaleclust-tiny, pretrained: null}",
            "embed.min_actors=1", "embed.max_actors=1", "embed.gpus_per_actor=0", "embed.cpus_per_actor=0.5",
            "cluster.k=3", "cluster.sample_size=1000", *steps, "cluster.train.workers=1",
            "cluster.train.use_gpu=false", "cluster.train.cpus_per_worker=0.5", "index.train_gpus=0",
            "update.refit_steps=4", f"label.vocabulary={NOUNS}"]


def nightly_command(job: str) -> list[str]:
    """The command the nightly manifests under infra/k8s/components run for jobs/`job`, as argv; for a job that
    none of them runs, `scaleclust update jobs/JOB` (what a job's header promises for its nights)."""
    found = set()
    for path in (REPO / "infra" / "k8s" / "components").rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            for entrypoint in _values(doc, "entrypoint"):
                if f"jobs/{job}" in shlex.split(entrypoint):
                    found.add(entrypoint)
    assert len(found) <= 1, f"the nightly manifests run jobs/{job} differently: {sorted(found)}"
    return shlex.split(found.pop()) if found else ["scaleclust", "update", f"jobs/{job}"]


def _values(node: Any, key: str) -> list[Any]:
    """Every value under `key` anywhere in a YAML document."""
    if isinstance(node, dict):
        return [v for k, value in node.items() for v in ([value] if k == key else []) + _values(value, key)]
    if isinstance(node, list):
        return [v for value in node for v in _values(value, key)]
    return []


def make_buckets(job: Config, endpoint: str) -> None:
    """The job's buckets (its run directory's and its shards'), as a team has them before the first run."""
    client = boto3.client("s3", endpoint_url=endpoint)
    shards = [job.input.shards] if isinstance(job.input.shards, str) else job.input.shards
    for url in (job.run_dir, *shards):
        assert url.startswith("s3://"), f"{url}: a production job reads and writes an object store"
    existing = {b["Name"] for b in client.list_buckets()["Buckets"]}
    for bucket in {url.removeprefix("s3://").partition("/")[0] for url in (job.run_dir, *shards)} - existing:
        client.create_bucket(Bucket=bucket)


def upload_shards(job: Config, folder: Path, first: int, endpoint: str) -> None:
    """Two synthetic shards (first, first + 1) where the job's shard pattern finds them."""
    pattern = job.input.shards if isinstance(job.input.shards, str) else job.input.shards[0]
    bucket, _, prefix = pattern.removeprefix("s3://").partition("/")
    client = boto3.client("s3", endpoint_url=endpoint)
    for path in write_synthetic_shards(folder, n_shards=2, per_shard=PER_SHARD, first=first):
        name = Path(path).name
        assert re.fullmatch(prefix.rpartition("/")[2].replace(".", r"\.").replace("*", ".*"), name), \
            f"input.shards of the job ({pattern}) would not find the shard {name}"
        client.upload_file(path, bucket, f"{prefix.rpartition('/')[0]}/{name}")


def submit(address: str, argv: list[str], sets: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """`scaleclust submit` of a command line `scaleclust COMMAND CONFIG [--set ...]` with extra `sets`: its job id
    and output, after asserting that the job succeeded."""
    assert argv[0] == "scaleclust" and len(argv) >= 3, f"not a scaleclust command: {shlex.join(argv)}"
    command, config, extra = argv[1], argv[2], argv[3:]
    job_id = f"rehearsal-{Path(config).stem}-{command}"
    code = main(["submit", str(REPO / config), "--command", command, "--address", address, "--working-dir", str(REPO),
                 "--job-id", job_id, *extra, *[arg for value in sets for arg in ("--set", value)]])
    out, err = capsys.readouterr()
    assert code == 0, f"{shlex.join(argv)} failed:\n{out[-4000:]}\n{err[-3000:]}"
    assert f"job {job_id}: SUCCEEDED" in out, out[-2000:]
    return job_id, out


@pytest.fixture(scope="module")
def shards_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("job-shards")


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", JOBS)
def test_job_runs_as_written_then_its_night(name: str, ray_head: tuple[str, dict[str, str]], s3_endpoint: str,
                                           shards_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    address, _ = ray_head
    job = load(str(REPO / "jobs" / name))
    sets = rehearsal_sets(job)
    make_buckets(job, s3_endpoint)
    upload_shards(job, shards_home / name, 0, s3_endpoint)
    job_id, out = submit(address, ["scaleclust", "run", f"jobs/{name}"], sets, capsys)
    streamed = f"rows {2 * PER_SHARD}: embedded {2 * PER_SHARD}, skipped 0"  # the job's own output
    assert streamed in out
    assert main(["status", job_id, "--address", address]) == 0 and "SUCCEEDED" in capsys.readouterr().out
    assert main(["logs", job_id, "--address", address]) == 0 and streamed in capsys.readouterr().out

    storage = job.storage.model_copy(update={"endpoint_url": s3_endpoint})
    run = RunDir(job.run_dir, storage)
    model, embedded = run.marker(run.model("model.json"))["model_id"], run.committed("embeddings")

    upload_shards(job, shards_home / name, 2, s3_endpoint)
    _, out = submit(address, nightly_command(name), sets, capsys)
    latest = Versions(run).latest()
    assert latest is not None and latest["rows"] == 4 * PER_SHARD, out[-3000:]
    assert latest["model"] == model  # the night assigned its shards with the run's model
    after = run.committed("embeddings")
    assert sorted(after) == ["00000", "00001", "00002", "00003"] and {s: after[s] for s in embedded} == embedded
    assert verify(job.run_dir, storage, deep=True) == []
    rehearsed = load(str(REPO / "jobs" / name), sets)
    assert recorded(job.run_dir, storage).cfg == rehearsed  # the job file as written, with only the overrides
    ran_as_written(job, rehearsed, run, storage)


def ran_as_written(job: Config, rehearsed: Config, run: RunDir, storage: StorageConfig) -> None:
    """The run directory holds the job's method, its index (when it configures one, or its method needs one),
    and names from the job's naming: CLIP text over the vocabulary, for an open_clip model."""
    assert job.embed.model.kind == "open_clip", "a classifier job names with its own classes, which the tiny CLIP " \
        "model of the rehearsal cannot show: rehearse it with a classifier"
    model = run.marker(run.model("model.json"))
    assert model["method"] == job.cluster.method and model["k"] == rehearsed.cluster.k
    if "index" in job.model_fields_set or model.get("neighbors"):
        manifest = load_manifest(run)
        assert sorted(manifest["shards"]) == sorted(run.committed("embeddings"))  # every shard, the night's too
        first = manifest["spec"]
        assert first["kind"] == choose(rehearsed, first["n"], first["d"]).kind  # the job's kind, or its budget's
        if job.index.kind != "auto":
            assert first["kind"] == job.index.kind
        if model.get("neighbors"):
            assert model["neighbors"]["index"] == first["factory"]
    space = run.marker(run.semantic("space.json"))
    assert space["kind"] == TEXT and space["signature"]["vocabulary"] == rehearsed.label.vocabulary
    nouns, ids = space_nouns(run)
    assert set(nouns) <= set(load_vocabulary(rehearsed.label, storage).names)
    clusters = run.read_table(run.clusters, ["name", "name_id"]).to_pylist()
    assert len(clusters) == rehearsed.cluster.k and {c["name"] for c in clusters} != {UNNAMED}, clusters
    tree = wordnet.hierarchy(wordnet.load(rehearsed.label.wordnet_file, storage), nouns, ids)
    for c in clusters:  # NAME, or NAME (NOUN) where two clusters share a name: NAME a noun or a hypernym of one
        if c["name"] != UNNAMED:
            name, noun = re.fullmatch(r"(.+?)(?: \((.+)\))?", c["name"]).groups()
            assert tree.names[tree.ids.index(c["name_id"])] == name and noun in {None, *nouns}, c
