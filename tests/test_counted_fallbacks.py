"""Fallbacks that keep rows but take another path are counted, never silent: JPEGs the device had no
memory for (decoded on the CPU instead) in the shard's marker, report thumbnails that did not decode in
the report's marker; `scaleclust info` shows both."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.io
import yaml

from scaleclust.cli import main
from scaleclust.config import EmbedConfig, InputConfig, ModelConfig, StorageConfig
from scaleclust.embed.actor import EncodeBatch
from scaleclust.embed.writer import commit_shard, write_parts
from scaleclust.pipeline import run_stage
from scaleclust.report.thumbs import read_thumbnails
from scaleclust.rundir import RunDir
from scaleclust.sources import ShardSpec
from scaleclust.sources.decode import decode_shard
from scaleclust.sources.shard_writer import tar_bytes
from scaleclust.sources.webdataset import Sample
from scaleclust.stage import recorded
from tests.conftest import tiny_config
from tests.shards import bad_samples, synthetic_samples

LOCAL = StorageConfig()


def test_device_out_of_memory_falls_back_to_the_cpu_and_is_counted(tmp_path: Path, monkeypatch, capsys) -> None:
    samples = [Sample(key, members) for key, members in bad_samples()]  # 4 good JPEGs, 2 corrupt, 2 without
    cfg = InputConfig(shards=["s"], label_field="label")
    actor = EncodeBatch(EmbedConfig(model=ModelConfig(arch="scaleclust-tiny"), batch_size=4), LOCAL)
    cpu = next(decode_shard("s", samples, 64, 1.0, cfg, 64))
    raw = next(decode_shard("s", samples, 64, 1.0, cfg, 64, encoded=True))
    for batch in (cpu, raw):
        batch["busy"] = np.zeros(len(batch["key"]))
    want = actor(dict(cpu))

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", out_of_memory)  # device_decode imports it per call
    got = actor(dict(raw))
    good = np.asarray([e == "" for e in want["error"]])
    assert good.sum() == 4 and list(got["error"]) == list(want["error"])
    assert np.array_equal(got["embedding"], want["embedding"])  # the CPU path's rows, exactly
    # the four good JPEGs went to the device first; the corrupt and cut ones never did
    assert got["decode_fallback"].tolist() == good.tolist()

    run = RunDir(str(tmp_path / "run"), LOCAL)
    for part in write_parts(got, run)["rows"]:
        assert part == len(samples)
    marker = commit_shard(run, "s", "s.tar", len(samples), 0.0, "tiny")
    assert marker["decode_fallbacks"] == 4 and marker["embedded"] == 4
    cfg = tiny_config(run.url, str(tmp_path / "in" / "s.tar"))
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(
        {"config": cfg.model_dump(mode="json"), "shards": {"s": {"urls": ["s.tar"], "root": "", "kind": "tar"}}}))
    assert main(["info", run.url]) == 0
    assert "fallbacks: 4 rows decoded on the CPU (the device was out of memory), 0 report thumbnails failed" \
        in capsys.readouterr().out


def test_a_thumbnail_that_does_not_decode_is_counted(tmp_path: Path) -> None:
    shard = tmp_path / "mixed.tar"
    shard.write_bytes(tar_bytes(bad_samples()))
    good = [key for key, _ in synthetic_samples(8, 4, seed=1)[:2]]
    wanted = {"mixed": {*good, "corrupt", "truncjpg"}}
    found, failed = read_thumbnails(wanted, {"mixed": ShardSpec((str(shard),))}, InputConfig(shards=[str(shard)]),
                                    LOCAL, 32)
    assert sorted(found) == sorted(good) and failed == 2


@pytest.mark.timeout(300)
def test_the_report_counts_its_failed_thumbnails_and_info_shows_them(shared_run, tmp_path: Path, capsys) -> None:
    """The shards rewritten after embedding with every image cut short: the report leaves their thumbnails
    out and says how many it left out."""
    ctx = recorded(str(shared_run.copy(tmp_path) / "run"))  # kmeans, k 3
    for stage in ("fit", "assign", "summary"):
        run_stage(stage, ctx)
    for shard in range(4):
        samples = synthetic_samples(shard, 30, seed=0)
        (tmp_path / "shards" / f"{shard:05d}.tar").write_bytes(
            tar_bytes([(key, {**members, "jpg": members["jpg"][:300]}) for key, members in samples]))
    result = run_stage("report", ctx)
    assert result["thumbnails_failed"] > 0
    assert ctx.run.marker(ctx.run.report_marker)["thumbnails_failed"] == result["thumbnails_failed"]
    assert main(["info", ctx.run.url]) == 0
    assert f"{result['thumbnails_failed']} report thumbnails failed" in capsys.readouterr().out
