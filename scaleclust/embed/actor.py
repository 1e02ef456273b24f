"""The encoder as a Ray Data actor: images in, fp16 L2-normalised embeddings (and each feature vector's
norm before normalisation) out.

Images arrive either decoded (uint8 NHWC, 4x smaller than float) or, with `embed.decode: device`, as
JPEG bytes that the actor decodes on its device (scaleclust.embed.device_decode). Conversion and
normalisation happen on the device, in the weights' dtype (`embed.precision`). A call's rows are
encoded in chunks of `batch_size` through a pipeline that overlaps the next chunk's host-to-device copy
(pinned memory, a copy stream) and the last chunk's device-to-host copy with the current chunk's
compute; on the CPU the same steps run in order. Rows that failed to decode pass through with a zero
embedding and their error.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch

from scaleclust.config import EmbedConfig, StorageConfig
from scaleclust.embed.device_decode import decode_batch
from scaleclust.embed.encoders import load_encoder
from scaleclust.tables import TEXT, texts


def encoder_threads(embed: EmbedConfig, device: str) -> int:
    """Torch threads of a CPU encoder: `embed.torch_threads`, else the cores this process may run on shared
    by the actors (the decode tasks take what the encoder leaves idle), at least `cpus_per_actor`. Ray
    would give the actor floor(cpus_per_actor) threads: one, by default, on a machine of many cores."""
    if embed.torch_threads:
        return embed.torch_threads
    if device != "cpu":
        return max(1, int(embed.cpus_per_actor))
    return max(1, int(embed.cpus_per_actor), len(os.sched_getaffinity(0)) // embed.max_actors)


class ChunkPipeline:
    """Encode chunks with copies and compute overlapped on CUDA: while chunk i computes on the compute
    stream, chunk i+1 is already being copied from pinned memory on the copy stream, and chunk i-1's
    features travel back into pinned memory. On the CPU the streams are absent and the steps run in turn,
    through the same code."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.device = torch.device(device)
        self.copy = torch.cuda.Stream(self.device) if self.cuda else None

    def _on(self, stream: "torch.cuda.Stream | None") -> contextlib.AbstractContextManager:
        return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()

    def stage(self, chunk: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Start moving a host chunk to the device; returns the device tensor and the copy's event."""
        host = torch.from_numpy(chunk) if isinstance(chunk, np.ndarray) else chunk
        if not self.cuda or host.device.type != "cpu":
            return host.to(self.device), None
        with self._on(self.copy):
            moved = host.pin_memory().to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.copy)
        return moved, event

    def run(self, chunks: Iterator[np.ndarray | torch.Tensor],
            encode: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        """encode(device chunk) for every chunk, staged one ahead; returns the features on the host."""
        outputs: list[tuple[torch.Tensor, Any]] = []
        staged = next(chunks, None)
        pending = self.stage(staged) if staged is not None else None
        while pending is not None:
            current, ready = pending
            upcoming = next(chunks, None)
            pending = self.stage(upcoming) if upcoming is not None else None  # prefetch: copies while we compute
            if ready is not None:
                torch.cuda.current_stream(self.device).wait_event(ready)
                current.record_stream(torch.cuda.current_stream(self.device))
            feats = encode(current)
            if self.cuda:
                host = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True)
                host.copy_(feats, non_blocking=True)
                done = torch.cuda.Event()
                done.record()
                outputs.append((host, done))
            else:
                outputs.append((feats, None))
        for _, done in outputs:
            if done is not None:
                done.synchronize()
        return [host for host, _ in outputs]


class EncodeBatch:
    """Callable class for `Dataset.map_batches(..., compute=ActorPoolStrategy(...))`."""

    def __init__(self, embed: EmbedConfig, storage: StorageConfig) -> None:
        self.device = "cuda" if torch.cuda.is_available() and embed.gpus_per_actor > 0 else "cpu"
        if self.device == "cpu":
            torch.set_num_threads(encoder_threads(embed, self.device))
        self.encoder = load_encoder(embed.model, storage, self.device, embed.precision)
        prep = self.encoder.preprocess
        self.mean = torch.tensor(prep.mean, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(prep.std, device=self.device).view(1, 3, 1, 1) * 255
        self.chunk = embed.batch_size
        self.text = embed.text
        self.max_pixels = embed.max_image_pixels
        self.pipeline = ChunkPipeline(self.device)

    def _features(self, feats: torch.Tensor) -> torch.Tensor:
        """(n, dim) features -> (n, dim + 1) float32 on the device: L2-normalised, then the norm before."""
        feats = feats.float()
        norms = feats.norm(dim=-1, keepdim=True)
        return torch.cat([torch.nn.functional.normalize(feats, dim=-1), norms], dim=1)

    def _encode_images(self, nchw: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW on the device -> normalised in the weights' dtype -> features."""
        x = ((nchw.float() - self.mean) / self.std).to(self.encoder.dtype)
        return self._features(self.encoder.encode(x))

    def _split(self, out: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        if not out:
            return np.zeros((0, self.encoder.dim), np.float16), np.zeros(0, np.float32)
        both = torch.cat(out).numpy()
        return both[:, :-1].astype(np.float16), both[:, -1].astype(np.float32)

    @torch.inference_mode()
    def encode_uint8(self, images: np.ndarray | torch.Tensor, nchw: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Encode uint8 images (NHWC numpy on the host, or NCHW anywhere with nchw=True) in chunks of
        `batch_size`: fp16 L2-normalised (n, dim) and the float32 norms (n,) the features had before (a
        classifier's logits need them: see semantic/)."""
        chunks = (images[s : s + self.chunk] for s in range(0, len(images), self.chunk))
        layout = (lambda x: x) if nchw else (lambda x: x.permute(0, 3, 1, 2))
        return self._split(self.pipeline.run(chunks, lambda x: self._encode_images(layout(x))))

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Encode uint8 NHWC images; returns fp16 (n, dim)."""
        return self.encode_uint8(images)[0]

    @torch.inference_mode()
    def _encode_text(self, captions: list[str]) -> np.ndarray:
        out = [self._features(self.encoder.encode_text(captions[s : s + self.chunk])).cpu()
               for s in range(0, len(captions), self.chunk)]
        return self._split(out)[0]

    def _decode(self, batch: dict[str, np.ndarray], ok: np.ndarray) -> torch.Tensor:
        """Rows that carry JPEG bytes: decode on the device; sets width, height, error and decode_fallback
        of those rows."""
        picked = np.flatnonzero(ok)
        images, widths, heights, errors, batch["decode_fallback"][picked] = decode_batch(
            [bytes(batch["data"][i]) for i in picked], [str(batch["member"][i]) for i in picked],
            self.encoder.preprocess.image_size, self.encoder.preprocess.crop_pct, self.max_pixels,
            torch.device(self.device))
        for column, values in (("width", widths), ("height", heights)):
            batch[column] = np.asarray(batch[column], np.int64).copy()
            batch[column][picked] = values
        batch["error"] = np.asarray(batch["error"], object).copy()
        batch["error"][picked] = errors
        good = np.asarray([e == "" for e in errors], bool)
        ok[picked[~good]] = False
        return images[torch.from_numpy(good).to(images.device)]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        ok = np.asarray(batch["error"] == "", bool)
        n = len(ok)
        batch["decode_fallback"] = np.zeros(n, bool)  # decoded on the CPU: the device was out of memory
        batch["embedding"] = np.zeros((n, self.encoder.dim), np.float16)
        batch["embedding_norm"] = np.zeros(n, np.float32)
        if "data" in batch:  # undecoded JPEG bytes: decode here, on the device
            images = self._decode(batch, ok)
            del batch["data"], batch["member"]
            if ok.any():
                batch["embedding"][ok], batch["embedding_norm"][ok] = self.encode_uint8(images, nchw=True)
        else:
            images = batch.pop("image")
            if ok.any():
                batch["embedding"][ok], batch["embedding_norm"][ok] = self.encode_uint8(images[ok])
        if self.text:
            has_text = ok & np.asarray([isinstance(c, str) and c != "" for c in batch["caption"]])
            batch["text_embedding"] = np.zeros_like(batch["embedding"])
            if has_text.any():
                batch["text_embedding"][has_text] = self._encode_text(list(batch["caption"][has_text]))
            batch["has_text"] = has_text
        for column in TEXT:  # typed as strings, so outputs of shards with and without them can merge
            if column in batch:
                batch[column] = texts(batch[column])
        batch["busy"] = batch["busy"] + (time.perf_counter() - started) / n if n else batch["busy"]
        return batch
