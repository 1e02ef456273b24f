"""The whole pipeline reading shards from and writing the run to a real S3 server on 127.0.0.1."""
from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from scaleclust.pipeline import run_all
from scaleclust.rundir import RunDir
from scaleclust.storage import listdir
from scaleclust.verify import verify
from tests.shards import BAD_KEYS, write_bad_shards

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.timeout(300)]


def test_pipeline_on_s3(tmp_path: Path, shards: list[str], s3_endpoint: str, make_config) -> None:
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="corpus")
    for path in shards + write_bad_shards(tmp_path / "bad")[:1]:
        client.upload_file(path, "corpus", f"shards/{Path(path).name}")
    cfg = make_config("s3://corpus/runs/one", ["s3://corpus/shards/{00000..00002}.tar", "s3://corpus/shards/bad-*.tar"],
                      storage={"endpoint_url": s3_endpoint})
    metrics = run_all(cfg)
    assert metrics["counts"]["embedded"] == 36 + 4
    assert metrics["counts"]["errors"] == len(BAD_KEYS)
    assert verify(cfg.run_dir, cfg.storage, deep=True) == []
    run = RunDir(cfg.run_dir, cfg.storage)
    assert listdir(run.path("embeddings"), cfg.storage) == sorted(
        [f"{n}.parquet" for n in ("00000", "00001", "00002", "bad-mixed")]
        + [f"{n}.done.json" for n in ("00000", "00001", "00002", "bad-mixed")])
    assert sorted(run.read_table(run.errors("bad-mixed"))["key"].to_pylist()) == sorted(BAD_KEYS)
    keys = client.list_objects_v2(Bucket="corpus", Prefix="runs/one/")["Contents"]
    assert not [k["Key"] for k in keys if "/.tmp-" in k["Key"] or "_parts" in k["Key"]]
    # A second run on S3 finds everything committed and redoes nothing.
    before = run.committed("assignments")
    run_all(cfg)
    assert run.committed("assignments") == before
