"""The WebDataset reader turns every bad input into an error row with a reason and loses no good row."""
from __future__ import annotations

import numpy as np
import pytest

from scaleclust.config import InputConfig, StorageConfig
from scaleclust.sources.shard_writer import tar_bytes
from scaleclust.sources import ShardSpec, read_samples
from scaleclust.sources.decode import decode_shard, resize_center_crop
from scaleclust.sources.webdataset import parse_tar
from tests.shards import bad_samples, synthetic_image, synthetic_samples


def rows_of(data: bytes, tmp_path, batch_rows: int = 3) -> dict[str, list]:
    path = tmp_path / "00007.tar"
    path.write_bytes(data)
    out: dict[str, list] = {}
    samples = read_samples("00007", ShardSpec((str(path),)), StorageConfig())
    for batch in decode_shard("00007", samples, 32, 1.0, InputConfig(shards=[str(path)], label_field="label"),
                              batch_rows):
        for name, values in batch.items():
            out.setdefault(name, []).extend(list(values))
    return out


def test_each_bad_sample_is_an_error_row_with_a_reason(tmp_path) -> None:
    rows = rows_of(tar_bytes(bad_samples()), tmp_path)
    errors = dict(zip(rows["key"], rows["error"]))
    assert len(rows["key"]) == 8 and set(rows["shard_rows"]) == {8}
    assert errors["corrupt"].startswith("ImageDecodeError: corrupt.jpg")
    assert errors["truncjpg"].startswith("ImageDecodeError")
    assert errors["textfile"].startswith("ImageDecodeError: textfile.png")
    assert errors["noimage"].startswith("NoImage") and "found: json, txt" in errors["noimage"]
    good = [k for k, e in errors.items() if not e]
    assert len(good) == 4
    images = np.stack(rows["image"])
    assert images.shape == (8, 32, 32, 3)
    assert all(images[i].any() for i, k in enumerate(rows["key"]) if k in good)
    assert rows["label"][0] is not None and rows["caption"][0].startswith("a ")


def test_truncated_tar_keeps_what_came_before(tmp_path) -> None:
    data = tar_bytes(synthetic_samples(0, 6, seed=2))
    rows = rows_of(data[: int(len(data) * 0.6)], tmp_path)
    errors = dict(zip(rows["key"], rows["error"]))
    good = [k for k, e in errors.items() if not e]
    assert 1 <= len(good) < 6
    bad = {k: e for k, e in errors.items() if e}
    assert bad, "the cut must be reported"
    assert all(e.startswith(("Truncated", "NoImage")) for e in bad.values())


def test_unreadable_and_empty_shards_are_reported(tmp_path) -> None:
    assert parse_tar(b"definitely not a tar file" * 40, "s")[0].key == "s#tar"
    empty = parse_tar(tar_bytes([]), "s")
    assert [(x.key, x.error.split(":")[0]) for x in empty] == [("s#empty", "EmptyShard")]
    missing = rows_of(b"", tmp_path)  # zero-byte file
    assert missing["key"] == ["00007#tar"] or missing["key"] == ["00007#empty"]


def test_duplicate_member_is_an_error(tmp_path) -> None:
    key, members = synthetic_samples(0, 1, seed=3)[0]
    rows = rows_of(tar_bytes([(key, members), (key, {"jpg": members["jpg"]})]), tmp_path)
    assert rows["key"] == [key] and rows["error"][0].startswith("DuplicateMember")


@pytest.mark.parametrize("size, crop", [(64, 1.0), (224, 0.875)])
def test_resize_matches_torchvision(size: int, crop: float) -> None:
    from torchvision import transforms

    image = synthetic_image(1, np.random.default_rng(5)).resize((97, 61))
    ours = resize_center_crop(image, size, crop)
    theirs = transforms.Compose([transforms.Resize(int(size / crop), interpolation=transforms.InterpolationMode.BICUBIC),
                                 transforms.CenterCrop(size)])(image)
    assert np.abs(ours.astype(int) - np.asarray(theirs).astype(int)).max() <= 1
