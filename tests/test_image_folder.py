"""Image folders as input: files grouped by key into shards, labels from the parent folder, sidecar
captions, bad files recorded, and the same invariants as WebDataset input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from scaleclust.config import StorageConfig
from scaleclust.pipeline import run_all
from scaleclust.rundir import RunDir
from scaleclust.sources import plan
from scaleclust.verify import verify
from tests.shards import CLASSES, synthetic_image


def write_folder(root: Path, per_class: int = 7) -> None:
    rng = np.random.default_rng(3)
    for label, name in enumerate(CLASSES):
        folder = root / name.replace(" ", "_")
        folder.mkdir(parents=True)
        for i in range(per_class):
            synthetic_image(label, rng).save(folder / f"{i:03d}.png")
        (folder / "000.txt").write_text(f"the first {name}")
    (root / "blue_stripes" / "broken.jpg").write_bytes(b"not an image at all")


def test_plan_groups_files_by_key(tmp_path: Path, make_config) -> None:
    write_folder(tmp_path / "photos")
    cfg = make_config(str(tmp_path / "run"), str(tmp_path / "photos"), input={"format": "image_folder",
                      "files_per_shard": 5, "label_field": "folder"})
    shards = plan(cfg.input, StorageConfig())
    assert list(shards) == [f"photos-{i:05d}" for i in range(5)]  # 22 keys in shards of 5
    first = shards["photos-00000"]
    assert first.root == str(tmp_path / "photos")
    assert [str(Path(u).relative_to(first.root)) for u in first.urls][:3] == [
        "blue_stripes/000.png", "blue_stripes/000.txt", "blue_stripes/001.png"]  # a key's files stay together


@pytest.mark.usefixtures("ray_local")
@pytest.mark.timeout(300)
def test_image_folder_end_to_end(tmp_path: Path, make_config) -> None:
    write_folder(tmp_path / "photos")
    cfg = make_config(str(tmp_path / "run"), str(tmp_path / "photos"), input={"format": "image_folder",
                      "files_per_shard": 8, "label_field": "folder"}, embed={"text": True})
    metrics = run_all(cfg)
    assert verify(cfg.run_dir, deep=True) == []
    assert metrics["counts"]["embedded"] == 21 and metrics["counts"]["errors"] == 1
    run = RunDir(cfg.run_dir, cfg.storage)
    rows = {r["key"]: r for s in run.committed("embeddings") for r in pq.read_table(run.embeddings(s)).to_pylist()}
    assert rows["red_disk/000"]["caption"] == "the first red disk"
    assert rows["green_square/003"]["label"] == "green_square"
    with_text = sorted(k for k, r in rows.items() if r["text_embedding"] is not None)
    assert with_text == ["blue_stripes/000", "green_square/000", "red_disk/000"]  # only these have captions
    errors = [e for s in run.committed("embeddings") if run.exists(run.errors(s))
              for e in pq.read_table(run.errors(s)).to_pylist()]
    assert [e["key"] for e in errors] == ["blue_stripes/broken"]
    assert metrics["labels"]["acc"] > 0.6
