"""Turn a shard's samples into rows for the encoder: every sample yields exactly one row, either a
decoded, resized image or an error that says why not."""
from __future__ import annotations

import io
import json
import re
import time
from typing import Any, Iterator

import numpy as np
from PIL import Image

from scaleclust.config import InputConfig
from scaleclust.failures import BAD_IMAGE_ERRORS, BadData
from scaleclust.sources.webdataset import Sample

Image.MAX_IMAGE_PIXELS = 200_000_000  # PIL's own bomb check; decode_image applies the (lower) configured limit
MAX_PIXELS = 64_000_000  # default embed.max_image_pixels: above any web photo, ~200 MB as RGB


BUFFER_NAME = re.compile(r"<_io\.BytesIO object at 0x[0-9a-f]+>")


class ImageTooLarge(BadData, ValueError):
    """An image whose header declares more pixels than the configured limit: refused before decoding."""


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


def decode_image(data: bytes, size: int, crop_pct: float, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, int, int]:
    """Decode image bytes fully (truncation raises here, not later) to RGB, resized and cropped; returns
    the image and its original width and height.

    Memory is bounded by `max_pixels` whatever the bytes claim: the size is read from the header and an
    image over the limit raises ImageTooLarge before any pixel is decoded (a small PNG can declare
    20000 x 20000). A JPEG is decoded in draft mode, scaled by 1/2, 1/4 or 1/8 in the DCT domain to no
    less than the resize target, so a large photo never exists at full size in memory.
    """
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(f"{width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
                                "(embed.max_image_pixels)")
        if image.format == "JPEG":
            target = int(size / crop_pct) if crop_pct != 1.0 else size
            image.draft("RGB", (target, target))
        image.load()
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
    if label_field == "folder":  # image folders: the class is the parent folder (cats/001 -> cats)
        label = sample.key.rpartition("/")[0] or None
    else:
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


ROW_COLUMNS = ("key", "shard", "idx", "shard_rows", "t0", "busy", "image", "caption", "url", "width", "height", "label",
               "error", "retryable")
ENCODED_COLUMNS = tuple(c for c in ROW_COLUMNS if c != "image") + ("data", "member")


def decode_member(data: bytes, label: str, size: int, crop_pct: float,
                  max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray | None, int, int, str]:
    """Decode one image member with PIL: (image or None, width, height, error); `label` (KEY.EXT) names
    the member in the error. Only what corrupt bytes raise is an error row; anything else is a bug and
    propagates."""
    try:
        image, width, height = decode_image(data, size, crop_pct, max_pixels)
        return image, width, height, ""
    except (ImageTooLarge, Image.DecompressionBombError) as err:
        return None, -1, -1, f"ImageTooLarge: {label}: {err}"
    except BAD_IMAGE_ERRORS as err:  # PIL raises several types for bad bytes
        message = BUFFER_NAME.sub("the bytes", str(err))  # an address, different on every run
        return None, -1, -1, f"ImageDecodeError: {label}: {type(err).__name__}: {message}"


def decode_shard(
    shard: str, samples: list[Sample], image_size: int, crop_pct: float, input_cfg: InputConfig, batch_rows: int,
    max_pixels: int = MAX_PIXELS,
    started: float | None = None,
    encoded: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """Read one shard and yield column batches of decoded rows (see ROW_COLUMNS).

    Every sample yields one row; rows that could not be decoded carry a zero image and `error` (and
    `retryable`, true for a read that may pass).
    `shard_rows` (the shard's total row count) lets the writer know when a shard is complete. `busy`
    is each row's share of the seconds spent reading and decoding its batch (from `started`, when the
    shard's read began), so a shard's busy time excludes waiting for the encoder.

    `encoded`: leave images undecoded; rows carry the member's bytes (`data`) and name (`member`,
    KEY.EXT) instead of `image`, for the encoder to decode on its device (scaleclust.embed.device_decode).
    """
    t0 = started or time.time()
    busy_from = t0
    extensions = [e.lower() for e in input_cfg.image_extensions]
    columns = ENCODED_COLUMNS if encoded else ROW_COLUMNS
    rows: list[dict[str, Any]] = []
    for idx, sample in enumerate(samples):
        key = output_key(sample.key, shard, input_cfg)
        row = {"key": key, "shard": shard, "idx": idx, "shard_rows": len(samples), "t0": t0,
               "width": -1, "height": -1, "error": sample.error, "retryable": sample.retryable, "data": b"", "member": "",
               **_metadata(sample, input_cfg.label_field)}
        image = None
        if not row["error"]:
            ext = next((e for e in extensions if e in sample.members), None)
            if ext is None:
                found = ", ".join(sorted(sample.members)) or "nothing"
                row["error"] = f"NoImage: no member with an image extension {extensions} (found: {found})"
            elif encoded:
                row["data"], row["member"] = sample.members[ext], f"{key}.{ext}"
            else:
                image, row["width"], row["height"], row["error"] = decode_member(
                    sample.members[ext], f"{key}.{ext}", image_size, crop_pct, max_pixels)
        if not encoded:
            row["image"] = image if image is not None else np.zeros((image_size, image_size, 3), dtype=np.uint8)
        rows.append(row)
        if len(rows) == batch_rows:
            yield _to_columns(rows, time.time() - busy_from, columns)
            rows = []
            busy_from = time.time()
    if rows:
        yield _to_columns(rows, time.time() - busy_from, columns)


def _to_columns(rows: list[dict[str, Any]], seconds: float, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    columns: dict[str, np.ndarray] = {"busy": np.full(len(rows), seconds / max(len(rows), 1))}
    for name in names:
        if name == "busy":
            continue
        values = [r[name] for r in rows]
        if name == "image":
            columns[name] = np.stack(values)
        elif name in ("idx", "shard_rows", "width", "height"):
            columns[name] = np.asarray(values, dtype=np.int64)
        elif name == "t0":
            columns[name] = np.asarray(values, dtype=np.float64)
        elif name == "retryable":
            columns[name] = np.asarray(values, dtype=bool)
        else:
            columns[name] = np.asarray(values, dtype=object)
    return columns
