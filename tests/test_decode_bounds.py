"""Decoding is bounded by embed.max_image_pixels whatever a shard holds: a 420 KB PNG declaring
20000 x 20000 pixels is refused from its header (an errors/ row, nothing decoded), and a large JPEG is
decoded in draft mode (DCT-domain downscale). Stated bound: decoding both raises the peak RSS of a fresh
process by less than 64 MiB; a full decode would need 1.2 GB (the PNG) and 144 MB (the JPEG) as RGB."""
from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scaleclust.config import EmbedConfig
from scaleclust.sources.decode import resize_center_crop

REPO = Path(__file__).resolve().parents[1]
BOUND_MIB = 64


def huge_png(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG of all-zero rows, compressed as it is written (never held whole)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def large_jpeg(width: int, height: int) -> bytes:
    """A smooth photo-like JPEG (gradients and a disk), so it is large in pixels but small in bytes."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 255 * x / width
    green = 255 * y / height
    blue = np.where((x - width / 2) ** 2 + (y - height / 2) ** 2 < (height / 3) ** 2, 220, 40)
    image = Image.fromarray(np.stack([red, green, blue], -1).astype(np.uint8))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


PROBE = """
import json, resource, sys
from scaleclust.config import InputConfig
from scaleclust.sources.decode import decode_shard
from scaleclust.sources.webdataset import Sample
members = {name: open(path, "rb").read() for name, path in zip(("png", "jpg"), sys.argv[1:3])}
samples = [Sample("bomb", {"png": members["png"]}), Sample("photo", {"jpg": members["jpg"]})]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rows = next(decode_shard("s", samples, 224, 1.0, InputConfig(shards=["x"]), 8, int(sys.argv[3])))
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
sys.stdout.write(json.dumps({"errors": list(rows["error"]), "width": rows["width"].tolist(),
                             "height": rows["height"].tolist(), "grown_kib": grown}) + "\\n")
rows["image"][1].tofile(sys.argv[4])
"""


@pytest.mark.subprocess
def test_huge_png_refused_and_large_jpeg_drafted_within_bound(tmp_path: Path) -> None:
    png, jpeg = tmp_path / "bomb.png", tmp_path / "photo.jpg"
    png.write_bytes(huge_png(20000, 20000))
    jpeg.write_bytes(large_jpeg(8000, 6000))
    assert png.stat().st_size < 1_000_000  # tiny file, 4e8 pixels
    limit = EmbedConfig().max_image_pixels
    assert limit == 64_000_000 and 8000 * 6000 < limit

    done = subprocess.run([sys.executable, "-c", PROBE, str(png), str(jpeg), str(limit), str(tmp_path / "crop.u8")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["errors"] == ["ImageTooLarge: bomb.png: 20000x20000 = 400000000 pixels, over the limit of "
                                "64000000 (embed.max_image_pixels)", ""]
    assert result["width"] == [-1, 8000] and result["height"] == [-1, 6000]  # the original size is recorded
    assert result["grown_kib"] < BOUND_MIB * 1024, result

    # The draft decode gives the same picture as a full decode (within JPEG's own rounding).
    crop = np.fromfile(tmp_path / "crop.u8", np.uint8).reshape(224, 224, 3).astype(np.float32)
    with Image.open(jpeg) as full:
        reference = resize_center_crop(full.convert("RGB"), 224).astype(np.float32)
    assert np.abs(crop - reference).mean() < 3.0
