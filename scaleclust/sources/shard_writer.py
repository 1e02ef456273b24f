"""Write img2dataset-layout WebDataset shards (KEY.jpg, KEY.txt, KEY.json): for the demo and tests."""
from __future__ import annotations

import io
import json
import tarfile
from typing import Any, Iterable

from PIL import Image


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def sample_members(key: str, image: bytes | None, caption: str | None, meta: dict[str, Any] | None,
                   image_ext: str = "jpg") -> dict[str, bytes]:
    """The members of one sample, by extension."""
    members: dict[str, bytes] = {}
    if image is not None:
        members[image_ext] = image
    if caption is not None:
        members["txt"] = caption.encode()
    if meta is not None:
        members["json"] = json.dumps({"key": key, **meta}).encode()
    return members


def tar_bytes(samples: Iterable[tuple[str, dict[str, bytes]]]) -> bytes:
    """A tar holding each sample's members as KEY.EXT, in order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext, payload in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                info.mtime = 0
                tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()
