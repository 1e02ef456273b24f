"""A user's mistakes end in one line that names the field or path, exit 2, and no traceback; the run
directory is left as it was (nothing is embedded when the mistake is known before embedding)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from scaleclust.cli import main
from tests.conftest import free_port
from tests.shards import write_synthetic_shards
from tests.test_laion import write_dump


def config(tmp_path: Path, **data) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), **data}))
    return path


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI in-process; assert exit 2, a single line of ours on stderr (Ray may log its own there)
    and no traceback; return the line."""
    assert main(argv) == 2
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.startswith("scaleclust")]
    assert len(lines) == 1 and "Traceback" not in out.err + out.out, out.err[-3000:]
    return lines[0]


def test_binary_file_as_config(tmp_path: Path, capsys) -> None:
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    assert one_line_error(capsys, ["run", str(binary)]) == (
        f"scaleclust: config error: config file '{binary}' is not a text YAML file (byte 128 is not UTF-8)")


def test_directory_as_config(tmp_path: Path, capsys) -> None:
    assert one_line_error(capsys, ["embed", str(tmp_path)]) == (
        f"scaleclust: config error: config file '{tmp_path}' is a directory; give a YAML file (e.g. jobs/demo.yaml)")


def test_run_dir_inside_the_input_folder(tmp_path: Path, capsys) -> None:
    write_synthetic_shards(tmp_path / "shards", 1, 2)
    cfg = config(tmp_path, input={"shards": str(tmp_path / "shards" / "{00000..00000}.tar")})
    line = one_line_error(capsys, ["run", str(cfg), "--set", f"run_dir={tmp_path / 'shards' / 'run'}"])
    assert line == (f"scaleclust: config error: run_dir: '{tmp_path / 'shards' / 'run'}' is inside the input folder "
                    f"'{tmp_path / 'shards'}' (input.shards '{tmp_path / 'shards' / '{00000..00000}.tar'}'); "
                    "choose a run_dir outside the input")
    photos = tmp_path / "photos"
    photos.mkdir()
    line = one_line_error(capsys, ["run", str(cfg), "--set", "input.format=image_folder",
                                   "--set", f"input.shards={photos}", "--set", f"run_dir={photos}"])
    assert f"run_dir: '{photos}' is inside the input folder '{photos}'" in line
    assert not (tmp_path / "shards" / "run").exists() and list(photos.iterdir()) == []


def test_k_over_the_rows_of_a_laion_dump_fails_before_embedding(tmp_path: Path, capsys) -> None:
    write_dump(tmp_path / "dump", np.float16)  # 20 + 15 + 10 rows
    cfg = config(tmp_path, input={"format": "laion_embeddings", "shards": str(tmp_path / "dump")},
                 cluster={"method": "kmeans", "k": 50, "sample_size": 1000})
    assert one_line_error(capsys, ["run", str(cfg)]) == (
        "scaleclust: config error: cluster.k: 50 clusters exceed the 45 rows in the input; lower cluster.k or add input")
    assert not (tmp_path / "run" / "embeddings").exists()


def test_k_over_the_sample_size(tmp_path: Path, capsys) -> None:
    cfg = config(tmp_path, input={"shards": str(tmp_path / "shards" / "*.tar")}, cluster={"method": "kmeans", "k": 20, "sample_size": 10})
    assert one_line_error(capsys, ["run", str(cfg)]) == (
        "scaleclust: config error: cluster.k: 20 clusters exceed cluster.sample_size=10 rows to fit them on; "
        "lower cluster.k or raise cluster.sample_size")


@pytest.mark.usefixtures("ray_local")
@pytest.mark.timeout(400)
def test_k_over_the_embedded_rows(tmp_path: Path, capsys, make_config) -> None:
    """Tar shards do not say how many images they hold: the check comes right after embedding, and a
    second run (everything committed) fails before any work."""
    write_synthetic_shards(tmp_path / "shards", 2, 3)
    cfg = make_config(str(tmp_path / "run"), str(tmp_path / "shards" / "*.tar"), cluster={"k": 8})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert one_line_error(capsys, ["run", str(path)]) == (
        "scaleclust: config error: cluster.k: 8 clusters exceed the 6 rows embedded; lower cluster.k or add input")
    assert len(list((tmp_path / "run" / "embeddings").glob("*.done.json"))) == 2  # the embedding is kept
    assert one_line_error(capsys, ["run", str(path)]) == (
        "scaleclust: config error: cluster.k: 8 clusters exceed the 6 rows in the input; lower cluster.k or add input")


def test_unreachable_run_directory_names_the_endpoint_option(capsys) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    line = one_line_error(capsys, ["verify", "s3://bucket/runs/x", "--endpoint-url", endpoint])
    assert line.startswith("scaleclust: config error: s3://bucket/runs/x: cannot reach the run directory (")
    assert line.endswith("for an S3-compatible server pass --endpoint-url URL (or set AWS_ENDPOINT_URL)")


def test_dedup_nprobe_out_of_range_fails_before_reading_the_run(tmp_path: Path, capsys) -> None:
    assert one_line_error(capsys, ["dedup", str(tmp_path / "no-run"), "--scope", "all", "--nprobe", "4"]) == (
        "scaleclust: config error: dedup --nprobe 4: a row is compared in 1 to 3 of its nearest lists")
