"""Read img2dataset-layout WebDataset shards: KEY.jpg (or .png, .webp), KEY.txt, KEY.json.

A shard is parsed into samples (members grouped by key); every sample becomes exactly one row, either
decoded or carrying an error that says why not. Shard-level failures (unreadable or truncated tar, empty
shard) also become error rows, so each input is accounted for in embeddings ∪ errors.
"""
from __future__ import annotations

import io
import json
import tarfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
from PIL import Image

from scaleclust.config import InputConfig, StorageConfig
from scaleclust.storage import read_bytes

Image.MAX_IMAGE_PIXELS = 200_000_000  # LAION has large images; still refuse decompression bombs


@dataclass
class Sample:
    """One WebDataset sample: its key and member bytes by extension, or why it cannot be read."""

    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    error: str = ""


def split_member(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the path up to the first dot of the basename."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def parse_tar(data: bytes, shard: str) -> list[Sample]:
    """Group a tar's members into samples in file order.

    A truncated or corrupt tar yields the samples read before the damage, the damaged sample with an
    error, and, when the damage hides further members, one error sample `SHARD#tar` saying so.
    """
    samples: dict[str, Sample] = {}
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
    except (tarfile.TarError, EOFError, OSError) as err:
        return [Sample(f"{shard}#tar", error=f"UnreadableShard: {type(err).__name__}: {err}")]
    with tar:
        while True:
            try:
                info = tar.next()
            except (tarfile.TarError, EOFError, OSError) as err:
                samples[f"{shard}#tar"] = Sample(f"{shard}#tar", error=f"TruncatedShard: {type(err).__name__}: {err}")
                break
            if info is None:
                # tarfile reads a cut header, or a cut between members, as the end of the archive;
                # a whole tar ends with a zero block.
                ending = data[tar.offset : tar.offset + tarfile.BLOCKSIZE]
                if len(ending) < tarfile.BLOCKSIZE or ending.strip(b"\0"):
                    samples[f"{shard}#tar"] = Sample(f"{shard}#tar", error=f"TruncatedShard: no end-of-archive "
                                                     f"block at byte {tar.offset} of {len(data)}; later samples lost")
                break
            if not info.isfile():
                continue
            key, ext = split_member(info.name)
            if not ext or key.rsplit("/", 1)[-1].startswith(("_", ".")):
                continue
            sample = samples.setdefault(key, Sample(key))
            if sample.error:
                continue
            if ext in sample.members:
                sample.error = f"DuplicateMember: {info.name} appears twice in the shard"
                continue
            try:
                handle = tar.extractfile(info)
                payload = handle.read() if handle else b""
                if len(payload) != info.size:
                    raise EOFError(f"{info.name}: {len(payload)} of {info.size} bytes")
                sample.members[ext] = payload
            except (tarfile.TarError, EOFError, OSError) as err:
                sample.error = f"TruncatedMember: {type(err).__name__}: {err}"
    if not samples:
        return [Sample(f"{shard}#empty", error="EmptyShard: the shard holds no samples")]
    return list(samples.values())


def resize_center_crop(image: Image.Image, size: int, crop_pct: float = 1.0) -> np.ndarray:
    """Resize the shorter side to size/crop_pct (bicubic), center-crop size x size: uint8 HxWx3.

    Matches torchvision's Resize(int) + CenterCrop used by open_clip and timm eval transforms.
    """
    scale_to = int(size / crop_pct) if crop_pct != 1.0 else size
    width, height = image.size
    if width <= height:
        new_w, new_h = scale_to, int(scale_to * height / width)
    else:
        new_w, new_h = int(scale_to * width / height), scale_to
    image = image.resize((new_w, new_h), Image.BICUBIC)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def decode_image(data: bytes, size: int, crop_pct: float) -> tuple[np.ndarray, int, int]:
    """Decode image bytes fully (truncation raises here, not later) to RGB, resized and cropped."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        width, height = image.size
        rgb = image.convert("RGB")
    return resize_center_crop(rgb, size, crop_pct), width, height


def _metadata(sample: Sample, label_field: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if "json" in sample.members:
        try:
            meta = json.loads(sample.members["json"])
        except (ValueError, UnicodeDecodeError):
            meta = {}
    caption = sample.members.get("txt")
    label = meta.get(label_field) if label_field else None
    if label is None and label_field and "cls" in sample.members:
        label = sample.members["cls"].decode(errors="replace").strip()
    return {
        "caption": caption.decode(errors="replace") if caption is not None else meta.get("caption"),
        "url": meta.get("url"),
        "label": None if label is None else str(label),
    }


def output_key(sample_key: str, shard: str, input_cfg: InputConfig) -> str:
    """The dataset-wide key: the member key, or shard/member when the config asks (shard pseudo-keys
    such as SHARD#tar already name their shard)."""
    if input_cfg.key == "shard_member" and "#" not in sample_key:
        return f"{shard}/{sample_key}"
    return sample_key


ROW_COLUMNS = ("key", "shard", "idx", "shard_rows", "t0", "image", "caption", "url", "width", "height", "label", "error")


def decode_shard(
    url: str, shard: str, image_size: int, crop_pct: float, input_cfg: InputConfig, storage: StorageConfig,
    batch_rows: int,
) -> Iterator[dict[str, np.ndarray]]:
    """Read one shard and yield column batches of decoded rows (see ROW_COLUMNS).

    Every sample yields one row; rows that could not be decoded carry a zero image and `error`.
    `shard_rows` (the shard's total row count) lets the writer know when a shard is complete.
    """
    t0 = time.time()
    try:
        samples = parse_tar(read_bytes(url, storage), shard)
    except Exception as err:  # storage failures after retries: record, never stop the job
        samples = [Sample(f"{shard}#tar", error=f"ReadFailed: {type(err).__name__}: {err}")]
    extensions = [e.lower() for e in input_cfg.image_extensions]
    rows: list[dict[str, Any]] = []
    for idx, sample in enumerate(samples):
        key = output_key(sample.key, shard, input_cfg)
        row = {"key": key, "shard": shard, "idx": idx, "shard_rows": len(samples), "t0": t0,
               "width": -1, "height": -1, "error": sample.error, **_metadata(sample, input_cfg.label_field)}
        image = np.zeros((image_size, image_size, 3), dtype=np.uint8)
        if not row["error"]:
            ext = next((e for e in extensions if e in sample.members), None)
            if ext is None:
                found = ", ".join(sorted(sample.members)) or "nothing"
                row["error"] = f"NoImage: no member with an image extension {extensions} (found: {found})"
            else:
                try:
                    image, row["width"], row["height"] = decode_image(sample.members[ext], image_size, crop_pct)
                except Exception as err:  # PIL raises many types for bad bytes
                    row["error"] = f"ImageDecodeError: {key}.{ext}: {type(err).__name__}: {err}"
        row["image"] = image
        rows.append(row)
        if len(rows) == batch_rows:
            yield _to_columns(rows)
            rows = []
    if rows:
        yield _to_columns(rows)


def _to_columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    columns: dict[str, np.ndarray] = {}
    for name in ROW_COLUMNS:
        values = [r[name] for r in rows]
        if name == "image":
            columns[name] = np.stack(values)
        elif name in ("idx", "shard_rows", "width", "height"):
            columns[name] = np.asarray(values, dtype=np.int64)
        elif name == "t0":
            columns[name] = np.asarray(values, dtype=np.float64)
        else:
            columns[name] = np.asarray(values, dtype=object)
    return columns


def shard_keys(url: str, shard: str, input_cfg: InputConfig, storage: StorageConfig) -> list[str]:
    """The keys a shard contributes (error pseudo-keys included), without decoding images: for verify."""
    return [output_key(s.key, shard, input_cfg) for s in parse_tar(read_bytes(url, storage), shard)]
