"""Synthetic img2dataset-layout shards for tests: three visually distinct classes with labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from scaleclust.sources.shard_writer import jpeg_bytes, sample_members, tar_bytes

CLASSES = ("red disk", "green square", "blue stripes")
BASE_LABELS = (0, 1, 2)  # what shards hold unless told
NEW_CONCEPT = 3          # a white checkerboard: the class a test plants as new data
CAPTIONS = CLASSES + ("white checkerboard",)


def synthetic_image(label: int, rng: np.random.Generator) -> Image.Image:
    """A noisy picture whose class is obvious: a red disk, a green square or blue stripes."""
    size = int(rng.integers(48, 120))
    base = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(base)
    draw = ImageDraw.Draw(image)
    lo, hi = int(size * 0.2), int(size * 0.8)
    if label == 0:
        draw.ellipse((lo, lo, hi, hi), fill=(230, 30, 30))
    elif label == 1:
        draw.rectangle((lo, lo, hi, hi), fill=(30, 220, 40))
    elif label == 2:
        for x in range(0, size, 8):
            draw.rectangle((x, 0, x + 3, size), fill=(40, 60, 230))
    else:
        cell = max(4, size // 6)
        for y in range(0, size, cell):
            for x in range((y // cell % 2) * cell, size, 2 * cell):
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=(240, 230, 250))
    return image


def synthetic_samples(shard: int, per_shard: int, seed: int,
                      labels: tuple[int, ...] = BASE_LABELS) -> list[tuple[str, dict[str, bytes]]]:
    rng = np.random.default_rng(seed * 1000 + shard)
    samples = []
    for i in range(per_shard):
        label = labels[int(rng.integers(0, len(labels)))]
        key = f"{shard:05d}{i:04d}"
        image = jpeg_bytes(synthetic_image(label, rng))
        samples.append((key, sample_members(key, image, f"a {CAPTIONS[label]}",
                                            {"url": f"http://example.invalid/{key}.jpg", "label": label})))
    return samples


def write_synthetic_shards(folder: Path, n_shards: int = 2, per_shard: int = 16, seed: int = 0, first: int = 0,
                           labels: tuple[int, ...] = BASE_LABELS) -> list[str]:
    """Write tar shards first..first+n_shards-1 of per_shard samples with labels drawn from `labels`;
    returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(first, first + n_shards):
        path = folder / f"{shard:05d}.tar"
        path.write_bytes(tar_bytes(synthetic_samples(shard, per_shard, seed, labels)))
        paths.append(str(path))
    return paths


PLANTED = 3  # write_duplicate_shard's originals, each with one near-duplicate copy


def write_duplicate_shard(folder: Path) -> list[tuple[str, str]]:
    """folder/dups.tar: PLANTED images and, for each, a resized and re-encoded JPEG copy; each original also as
    folder/origN.jpg. Returns the (original, copy) keys."""
    rng = np.random.default_rng(7)
    samples, pairs = [], []
    for i in range(PLANTED):
        image = synthetic_image(i % 3, rng)
        copy = image.resize((int(image.width * 0.8), int(image.height * 0.8)), Image.BILINEAR)
        for key, picture, quality in ((f"orig{i}", image, 90), (f"copy{i}", copy, 60)):
            samples.append((key, sample_members(key, jpeg_bytes(picture, quality), "x", {"label": i % 3})))
        (folder / f"orig{i}.jpg").write_bytes(jpeg_bytes(image, 90))
        pairs.append((f"orig{i}", f"copy{i}"))
    (folder / "dups.tar").write_bytes(tar_bytes(samples))
    return pairs


def bad_samples() -> list[tuple[str, dict[str, bytes]]]:
    """Good samples interleaved with: corrupt JPEG bytes, a non-image member, a sample with no image."""
    good = synthetic_samples(8, 4, seed=1)
    rng = np.random.default_rng(0)
    truncated_jpeg = jpeg_bytes(synthetic_image(0, rng))[:200]
    return [
        good[0],
        ("corrupt", sample_members("corrupt", b"\xff\xd8\xff\xe0 this is not a jpeg", "x", {"label": 0})),
        good[1],
        ("truncjpg", sample_members("truncjpg", truncated_jpeg, "x", {"label": 0})),
        ("textfile", sample_members("textfile", b"hello, I am text", None, None, image_ext="png")),
        ("noimage", sample_members("noimage", None, "caption only", {"label": 1})),
        good[2],
        good[3],
    ]


BAD_KEYS = {"corrupt", "truncjpg", "textfile", "noimage"}


def write_bad_shards(folder: Path) -> list[str]:
    """Two shards of bad input: one with bad samples among good ones, one tar cut short."""
    folder.mkdir(parents=True, exist_ok=True)
    mixed, cut = folder / "bad-mixed.tar", folder / "bad-cut.tar"
    mixed.write_bytes(tar_bytes(bad_samples()))
    whole = tar_bytes(synthetic_samples(9, 6, seed=4))
    cut.write_bytes(whole[: int(len(whole) * 0.6)])
    return [str(mixed), str(cut)]
