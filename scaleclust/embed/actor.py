"""The encoder as a Ray Data actor: uint8 images in, fp16 L2-normalised embeddings (and each feature
vector's norm before normalisation) out.

Images travel as uint8 NHWC (4x smaller than float); conversion and normalisation happen on the
actor's device. Rows that failed to decode pass through with a zero embedding and their error.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

import numpy as np
import torch

from scaleclust.config import EmbedConfig, StorageConfig
from scaleclust.embed.encoders import load_encoder

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


class EncodeBatch:
    """Callable class for `Dataset.map_batches(..., compute=ActorPoolStrategy(...))`."""

    def __init__(self, embed: EmbedConfig, storage: StorageConfig) -> None:
        self.device = "cuda" if torch.cuda.is_available() and embed.gpus_per_actor > 0 else "cpu"
        self.encoder = load_encoder(embed.model, storage, self.device)
        prep = self.encoder.preprocess
        self.mean = torch.tensor(prep.mean, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(prep.std, device=self.device).view(1, 3, 1, 1) * 255
        self.precision = embed.precision
        self.chunk = embed.batch_size
        self.text = embed.text

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device == "cuda" and self.precision in AUTOCAST:
            return torch.autocast("cuda", dtype=AUTOCAST[self.precision])
        return contextlib.nullcontext()

    @torch.inference_mode()
    def _chunked(self, items: Any, encode: Callable[[Any], torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """Run `encode` over `items` in chunks of `batch_size`: fp16 L2-normalised (n, dim) and the
        float32 norms (n,) the features had before (a classifier's logits need them: see semantic/)."""
        out, norms = [], []
        for start in range(0, len(items), self.chunk):
            with self._autocast():
                feats = encode(items[start : start + self.chunk]).float()
            norms.append(feats.norm(dim=-1).cpu().numpy())
            out.append(torch.nn.functional.normalize(feats, dim=-1).half().cpu().numpy())
        if not out:
            return np.zeros((0, self.encoder.dim), np.float16), np.zeros(0, np.float32)
        return np.concatenate(out), np.concatenate(norms).astype(np.float32)

    def _images(self, chunk: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(chunk).to(self.device, non_blocking=True)
        return self.encoder.encode((x.permute(0, 3, 1, 2).float() - self.mean) / self.std)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Encode uint8 NHWC images; returns fp16 (n, dim)."""
        return self._chunked(images, self._images)[0]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        images = batch.pop("image")
        ok = batch["error"] == ""
        batch["embedding"] = np.zeros((len(images), self.encoder.dim), np.float16)
        batch["embedding_norm"] = np.zeros(len(images), np.float32)
        if ok.any():
            batch["embedding"][ok], batch["embedding_norm"][ok] = self._chunked(images[ok], self._images)
        if self.text:
            has_text = ok & np.asarray([isinstance(c, str) and c != "" for c in batch["caption"]])
            batch["text_embedding"] = np.zeros_like(batch["embedding"])
            if has_text.any():
                batch["text_embedding"][has_text] = self._chunked(list(batch["caption"][has_text]),
                                                                  self.encoder.encode_text)[0]
            batch["has_text"] = has_text
        batch["busy"] = batch["busy"] + (time.perf_counter() - started) / max(len(images), 1)
        return batch
