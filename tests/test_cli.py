"""The command line as a user runs it: bad configs fail before Ray starts; a run killed mid-way
(SIGKILL) and run again ends with every key exactly once."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scaleclust.verify import verify
from tests.conftest import NOUNS, kill_when_present, private_ray_env
from tests.shards import write_synthetic_shards

CLI = [sys.executable, "-m", "scaleclust.cli"]
pytestmark = pytest.mark.subprocess


def config_file(tmp_path: Path, shards: str, **extra) -> Path:
    data = {"run_dir": str(tmp_path / "run"), "input": {"shards": shards, "label_field": "label"},
            "embed": {"model": {"arch": "scaleclust-tiny"}, "batch_size": 8, "cpus_per_actor": 0.5,
                      "decode_cpus": 0.5, "decode_batch": 4},
            "cluster": {"method": "kmeans", "k": 3, "sample_size": 1000}, "label": {"vocabulary": NOUNS}, **extra}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("overrides, message", [
    (["--set", "cluster.kk=3"], "cluster.kk: unknown field. Did you mean 'k'?"),
    (["--set", "embed.batch_size=lots"], "embed.batch_size: Input should be a valid integer"),
    (["--set", "input.shards=/nowhere/{00000..00003}.tar"], "input.shards: 4 shard(s)"),
])
def test_bad_config_fails_before_ray_starts(tmp_path: Path, overrides: list[str], message: str) -> None:
    write_synthetic_shards(tmp_path / "shards", 1, 2)
    cfg = config_file(tmp_path, str(tmp_path / "shards" / "*.tar"))
    done = subprocess.run([*CLI, "run", str(cfg), *overrides], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Ray" not in done.stdout + done.stderr  # nothing started
    assert not (tmp_path / "run" / "embeddings").exists()


@pytest.mark.ray  # the CLI's own
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_killed_run_resumes_with_each_key_once(tmp_path: Path) -> None:
    write_synthetic_shards(tmp_path / "shards", n_shards=6, per_shard=24)
    cfg = config_file(tmp_path, str(tmp_path / "shards" / "*.tar"), ray={"num_cpus": 2})
    embeddings = tmp_path / "run" / "embeddings"
    with private_ray_env() as env:
        proc = subprocess.Popen([*CLI, "run", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, env=env)
        kill_when_present(proc, embeddings, "*.done.json", timeout=240)
    committed = len(list(embeddings.glob("*.done.json")))
    assert 1 <= committed < 6, "kill must land mid-embed"
    done = subprocess.run([*CLI, "run", str(cfg)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = int(re.search(r"(\d+) already committed", done.stdout).group(1))
    assert committed <= resumed < 6  # a commit task already running when the driver died may finish
    assert "scaleclust: done" in done.stdout
    assert "against 'label'" in done.stdout
    assert verify(str(tmp_path / "run"), deep=True) == []
    check = subprocess.run([*CLI, "verify", str(tmp_path / "run"), "--deep"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0 and "verify: ok" in check.stdout
    scored = subprocess.run([*CLI, "eval", str(tmp_path / "run"), "--labels", "label"], capture_output=True,
                            text=True, timeout=120)
    assert scored.returncode == 0, scored.stderr[-2000:]
    got = json.loads(scored.stdout[scored.stdout.index("{"):])
    want = json.loads((tmp_path / "run" / "metrics.json").read_text())["labels"]
    assert got["n"] == want["n"] == 6 * 24
    assert abs(got["acc"] - want["acc"]) < 1e-9 and abs(got["nmi"] - want["nmi"]) < 1e-9
