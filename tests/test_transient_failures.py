"""Shard objects that vanish from the S3 server during a run and come back: the run records them as
failures that may pass, says so, and the next run embeds them; a corrupt shard is recorded once and is
not retried."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from scaleclust.pipeline import prepare, run_all, run_stage
from scaleclust.rundir import RunDir
from scaleclust.verify import verify
from tests.shards import write_bad_shards, write_synthetic_shards

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.subprocess, pytest.mark.slow,
              pytest.mark.timeout(600)]
CLI = [sys.executable, "-m", "scaleclust.cli"]


def test_vanished_shards_are_retried_and_a_corrupt_one_is_not(tmp_path: Path, s3_endpoint: str, make_config,
                                                               capsys) -> None:
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="flaky")
    paths = write_synthetic_shards(tmp_path / "shards", n_shards=4, per_shard=6, seed=3)
    paths.append(write_bad_shards(tmp_path / "bad")[1])  # bad-cut.tar: a tar cut short, a fact about the data
    for path in paths:
        client.upload_file(path, "flaky", f"shards/{Path(path).name}")
    cfg = make_config("s3://flaky/run", "s3://flaky/shards/*.tar", storage={"endpoint_url": s3_endpoint})
    ctx = prepare(cfg)
    run = ctx.run  # the shard list is fixed here; then two objects vanish before they are read
    vanished = ["00001", "00002"]
    for name in vanished:
        client.delete_object(Bucket="flaky", Key=f"shards/{name}.tar")
    stats = run_stage("embed", ctx)
    summary = capsys.readouterr().out
    assert stats["retryable"] == 2 and stats["embedded"] < 4 * 6
    assert "embed: 2 shard(s) still fail for reasons that may pass, 2 row(s): 00001: ReadFailed: FileNotFoundError" \
        in summary and "run again to retry them" in summary
    first = run.committed("embeddings")
    assert sorted(n for n, m in first.items() if m["retryable"]) == vanished
    assert first["bad-cut"]["errors"] >= 1 and first["bad-cut"]["retryable"] == 0
    problems = verify(cfg.run_dir, cfg.storage)
    retry = [p for p in problems if "may pass" in p]
    assert [p.split(":")[0] for p in retry] == ["shard 00001", "shard 00002"]
    assert all("ReadFailed: FileNotFoundError" in p and "run the embed stage again" in p for p in retry)
    assert not [p for p in problems if "bad-cut" in p and "may pass" in p]  # data errors are not problems

    for path in paths:  # the objects come back
        if Path(path).stem in vanished:
            client.upload_file(path, "flaky", f"shards/{Path(path).name}")
    metrics = run_all(cfg)
    assert "embed: 5 shards, 3 already committed, 2 to do (2 to retry after failures that may pass)" \
        in capsys.readouterr().out
    after = RunDir(cfg.run_dir, cfg.storage).committed("embeddings")
    assert metrics["counts"]["retryable"] == 0
    assert metrics["counts"]["embedded"] == 4 * 6 + after["bad-cut"]["embedded"]
    assert after["bad-cut"]["commit"] == first["bad-cut"]["commit"]  # recorded once, not retried
    assert after["00000"]["commit"] == first["00000"]["commit"]
    assert not run.exists(run.errors("00001")) and not run.exists(run.errors("00002"))
    assert verify(cfg.run_dir, cfg.storage, deep=True) == []

    # The CLI reaches an S3 run with --endpoint-url alone (no AWS_ENDPOINT_URL in the environment).
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    done = subprocess.run([*CLI, "verify", cfg.run_dir, "--deep", "--endpoint-url", s3_endpoint], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "verify: ok", done.stdout + done.stderr[-2000:]
