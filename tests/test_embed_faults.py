"""An encoder actor killed mid-run (SIGKILL to its process) loses nothing: Ray Data restarts it, the
lost batches are redone, and every key ends up exactly once with the same embedding as a clean run."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import boto3
import numpy as np
import pytest

from scaleclust.tables import embedding_matrix
from scaleclust.pipeline import prepare, run_all, run_stage
from scaleclust.rundir import RunDir
from scaleclust.verify import verify
from tests.shards import write_synthetic_shards

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.timeout(400)]


def parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def descends_from_us(pid: int) -> bool:
    """True for processes of this test's own Ray (started in-process), never another job's on the machine."""
    while pid > 1:
        if pid == os.getpid():
            return True
        pid = parent(pid)
    return False


def encoder_pids() -> list[int]:
    """This test's encoder actor processes: Ray titles them after the actor class (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"EncodeBatch" in (entry / "cmdline").read_bytes() \
                    and descends_from_us(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_encoder_after_first_part(client, bucket: str, prefix: str, killed: list[int]) -> None:
    """Wait until the encoders have written their first part, then SIGKILL one encoder process."""
    deadline = time.time() + 120
    while time.time() < deadline:
        listing = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/embeddings/_parts/")
        pids = encoder_pids()
        if listing.get("KeyCount", 0) and pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
            return
        time.sleep(0.05)


def embeddings_by_key(run: RunDir) -> dict[str, np.ndarray]:
    out = {}
    for shard in run.committed("embeddings"):
        table = run.read_table(run.embeddings(shard), ["key", "embedding"])
        out.update(zip(table["key"].to_pylist(), embedding_matrix(table["embedding"])))
    return out


def test_killed_encoder_actor_loses_nothing(tmp_path: Path, s3_endpoint: str, make_config) -> None:
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="faults")
    for path in write_synthetic_shards(tmp_path / "shards", n_shards=6, per_shard=24, seed=7):
        client.upload_file(path, "faults", f"shards/{Path(path).name}")
    embed = {"batch_size": 4, "decode_batch": 4}
    storage = {"endpoint_url": s3_endpoint}
    clean = make_config("s3://faults/clean", "s3://faults/shards/*.tar", embed=embed, storage=storage)
    faulty = make_config("s3://faults/faulty", "s3://faults/shards/*.tar", embed=embed, storage=storage)
    ctx = prepare(clean)
    run_stage("embed", ctx)  # the reference embeddings; the faulty run goes through every stage

    killed: list[int] = []
    killer = threading.Thread(target=kill_encoder_after_first_part, args=(client, "faults", "faulty", killed))
    killer.start()
    run_all(faulty)
    killer.join()
    assert killed, "the encoder actor was never killed"
    assert killed[0] not in encoder_pids()

    assert verify(faulty.run_dir, faulty.storage, deep=True) == []
    want = embeddings_by_key(RunDir(clean.run_dir, clean.storage))
    got = embeddings_by_key(RunDir(faulty.run_dir, faulty.storage))
    assert sorted(got) == sorted(want) and len(got) == 6 * 24
    diff = max(float(np.abs(got[k] - want[k]).max()) for k in want)
    assert diff <= 2e-3  # fp16 storage of the same computation
