"""Decode JPEG bytes on the encoder's device: batched torchvision.io.decode_jpeg (nvJPEG on a GPU, libjpeg
on the CPU), then resize and center-crop there to the model's preprocessing.

Only baseline JPEGs with 1 or 3 channels that end where a JPEG ends go to the device. Everything else
(PNG, WebP, CMYK, progressive, truncated, a batch or image the device decoder rejects, a header over
`embed.max_image_pixels`) is decoded by the CPU path (scaleclust.sources.decode.decode_member), so
those rows, and their errors, are exactly what the CPU decode gives. A batch the device has no memory
for goes to the CPU path too, and its rows are counted (`decode_fallbacks` in the shard's marker).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from scaleclust.sources.decode import decode_member

BASELINE_SOF = (0xC0, 0xC1)  # baseline and extended sequential Huffman: what nvJPEG's batched decode takes
OTHER_SOF = {0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # progressive, lossless, arithmetic
STANDALONE = {0x01, *range(0xD0, 0xD9)}  # markers without a length field


@dataclass(frozen=True)
class JpegHeader:
    """A JPEG's frame header: its SOF marker, size and channel count."""

    sof: int
    width: int
    height: int
    channels: int


def jpeg_header(data: bytes) -> JpegHeader | None:
    """The frame header of JPEG bytes, read by walking the marker segments; None when `data` is not a
    JPEG or its header cannot be read."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in STANDALONE:
            i += 2
            continue
        if marker in BASELINE_SOF or marker in OTHER_SOF:
            if i + 10 > len(data):
                return None
            return JpegHeader(marker, int.from_bytes(data[i + 7 : i + 9], "big"),
                              int.from_bytes(data[i + 5 : i + 7], "big"), data[i + 9])
        if marker == 0xDA:  # a scan before any frame header
            return None
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def device_decodable(data: bytes, max_pixels: int) -> JpegHeader | None:
    """The header of a JPEG the device decoder takes (baseline, grey or YCbCr, complete, within the pixel
    limit); None sends the image to the CPU path."""
    head = jpeg_header(data)
    if (head is None or head.sof not in BASELINE_SOF or head.channels not in (1, 3)
            or not 0 < head.width * head.height <= max_pixels or not data.rstrip(b"\x00").endswith(b"\xff\xd9")):
        return None
    return head


def resize_center_crop_tensor(image: torch.Tensor, size: int, crop_pct: float = 1.0) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, size, size): shorter side to size/crop_pct (antialiased bicubic, as PIL),
    then the center crop; the geometry of scaleclust.sources.decode.resize_center_crop."""
    scale_to = int(size / crop_pct) if crop_pct != 1.0 else size
    _, height, width = image.shape
    if width <= height:
        new_w, new_h = scale_to, int(scale_to * height / width)
    else:
        new_w, new_h = int(scale_to * width / height), scale_to
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    resized = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bicubic", antialias=True,
                            align_corners=False)[0]
    return resized[:, top : top + size, left : left + size].round_().clamp_(0, 255).to(torch.uint8)


def _decode_jpegs(datas: list[bytes], device: torch.device) -> tuple[list[torch.Tensor | None], list[bool]]:
    """Decode a batch in one call; when the batch fails, image by image (None: this one failed). Also, per
    image, whether it failed because the device ran out of memory (after a batch did, none is tried again
    here: the CPU path takes them all)."""
    # imported here: torchvision's package costs a second of CPU, paid otherwise by every Ray worker that
    # imports the stages (this module comes in with the embed stage)
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:
        return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)), [False] * len(datas)
    except torch.OutOfMemoryError:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return [None] * len(datas), [True] * len(datas)
    except (RuntimeError, ValueError):
        out: list[torch.Tensor | None] = []
        out_of_memory: list[bool] = []
        for tensor in tensors:
            try:
                out.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device))
            except (RuntimeError, ValueError) as err:
                out.append(None)
                out_of_memory.append(isinstance(err, torch.OutOfMemoryError))
                continue
            out_of_memory.append(False)
        return out, out_of_memory


def decode_batch(datas: list[bytes], members: list[str], size: int, crop_pct: float, max_pixels: int,
                 device: torch.device) -> tuple[torch.Tensor, np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Decode image members to uint8 (n, 3, size, size) on `device`, with each one's original width, height
    and error ("" when decoded; a failed row's image is zero), and which rows the device should have
    decoded but the CPU did because the device ran out of memory (counted in the shard's marker as
    `decode_fallbacks`). `members` (KEY.EXT) name them in errors."""
    n = len(datas)
    images = torch.zeros((n, 3, size, size), dtype=torch.uint8, device=device)
    widths, heights = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    errors = [""] * n
    out_of_memory = np.zeros(n, bool)
    on_device = {i: head for i, data in enumerate(datas) if (head := device_decodable(data, max_pixels))}
    picked = list(on_device)
    decoded, short = _decode_jpegs([datas[i] for i in picked], device) if picked else ([], [])
    out_of_memory[picked] = short
    fallback = [i for i in range(n) if i not in on_device]
    for i, image in zip(picked, decoded):
        if image is None:
            fallback.append(i)
            continue
        images[i] = resize_center_crop_tensor(image, size, crop_pct)
        widths[i], heights[i] = on_device[i].width, on_device[i].height
    for i in fallback:
        image, widths[i], heights[i], errors[i] = decode_member(datas[i], members[i], size, crop_pct, max_pixels)
        if image is not None:
            images[i] = torch.from_numpy(image.copy()).permute(2, 0, 1).to(device)
    return images, widths, heights, errors, out_of_memory
