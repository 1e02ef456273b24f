"""The semantic space clusters are named in (and that SIC trains against): nouns as vectors in the
image-embedding space, so that an image's logits over the nouns are one matrix product.

- CLIP models (open_clip): every noun of the vocabulary through the text tower with a prompt ("a photo
  of a {}"), L2-normalised; SIC's generic nouns dropped; scale = the model's logit scale (exp of its
  learnt temperature), bias = its logit bias (SigLIP) or 0. logits = scale * x @ vectors.T + bias.
- Classifier encoders (timm): the model's own classifier. Its classes name the space (ImageNet-1k
  classes are WordNet noun synsets), its weight rows are the vectors and its bias the bias. The stored
  embeddings are L2-normalised pooled features, so the embed stage keeps each row's norm
  (`embedding_norm`), and logits = norm * (x @ vectors.T) + bias are the classifier's own logits (up to
  the float16 rounding of the stored embedding).

Built once per run (one model per run directory) and committed under RUN/semantic/: vectors.npy,
bias.npy, names.parquet (id, name), and space.json written last; a later build with the same model and
vocabulary settings reuses it.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from scaleclust.cluster.naming import generic_mask
from scaleclust.config import Config, ConfigError
from scaleclust.embed.encoders import classifier_head, load_encoder, model_id
from scaleclust.failures import NotReady
from scaleclust.rundir import RunDir
from scaleclust.semantic.vocab import imagenet_classes, load_vocabulary
from scaleclust.storage import remove

TEXT = "text"
CLASSIFIER = "classifier"


@dataclass
class SemanticSpace:
    """Nouns (names, ids) as vectors (V, d) float32 in the image-embedding space, with a bias (V,)
    float32 and a logit scale. kind 'text': CLIP text-tower embeddings (unit vectors); 'classifier': a
    classifier's weight rows (not unit vectors), whose logits need each row's feature norm."""

    names: list[str]
    ids: list[str]
    vectors: np.ndarray
    bias: np.ndarray
    scale: float
    kind: str = TEXT

    def logits(self, x: np.ndarray, norms: np.ndarray | None = None) -> np.ndarray:
        """(n, V) logits of L2-normalised image embeddings x (n, d). A classifier space needs `norms`
        (n,), the rows' feature norms before normalisation, to give the classifier's exact logits."""
        if self.kind == CLASSIFIER and norms is None:
            raise ValueError("a classifier's logits need the embeddings' norms (embedding_norm)")
        scale = self.scale if norms is None else self.scale * np.asarray(norms, np.float32)[:, None]
        return scale * (np.asarray(x, np.float32) @ self.vectors.T) + self.bias


def signature(cfg: Config) -> dict[str, Any]:
    """What a space depends on: the model, and for CLIP models the vocabulary settings."""
    sig: dict[str, Any] = {"model": model_id(cfg.embed.model)}
    if cfg.embed.model.kind == "open_clip":
        label = cfg.label
        sig.update(vocabulary=label.vocabulary, prompt=label.prompt, generic_gamma=label.generic_gamma)
        if label.vocabulary == "wordnet":
            sig["wordnet_file"] = label.wordnet_file
    return sig


def is_current(cfg: Config, run: RunDir) -> bool:
    """Whether RUN/semantic/ holds a space built with this config's model and vocabulary settings."""
    marker = run.marker(run.semantic("space.json"))
    return marker is not None and marker["signature"] == signature(cfg)


def build_space(cfg: Config, run: RunDir, device: str | None = None) -> SemanticSpace:
    """The run's semantic space: the committed one when it was built with the same settings, else built
    now (on `device`, default CUDA when available) and committed under RUN/semantic/, marker last."""
    if is_current(cfg, run):
        return load_space(run)
    sig = signature(cfg)
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    started = time.time()
    if cfg.embed.model.kind == "timm":
        space, extra = _classifier_space(cfg), {}
    else:
        space, extra = _text_space(cfg, device)
    remove(run.semantic("space.json"), run.storage)  # files below change before the new marker exists
    _save_npy(run, "vectors.npy", space.vectors)
    _save_npy(run, "bias.npy", space.bias)
    run.write_table(run.semantic("names.parquet"), pa.table({"id": space.ids, "name": space.names}))
    space_id = hashlib.sha1(json.dumps(sig, sort_keys=True).encode() + str(started).encode()).hexdigest()[:12]
    run.write_marker(run.semantic("space.json"), {
        "signature": sig, "kind": space.kind, "scale": space.scale, "nouns": len(space.names),
        "dim": int(space.vectors.shape[1]), "space_id": space_id, "seconds": round(time.time() - started, 2),
        **extra})
    return space


def load_space(run: RunDir) -> SemanticSpace:
    """The committed semantic space of a run; raises when none is committed."""
    marker = run.marker(run.semantic("space.json"))
    if marker is None:
        raise NotReady(f"{run.semantic('space.json')}: no semantic space committed; run the label stage")
    table = run.read_table(run.semantic("names.parquet"))
    vectors = np.load(io.BytesIO(run.read_bytes(run.semantic("vectors.npy"))))
    bias = np.load(io.BytesIO(run.read_bytes(run.semantic("bias.npy"))))
    return SemanticSpace(table["name"].to_pylist(), table["id"].to_pylist(), vectors, bias,
                         float(marker["scale"]), marker["kind"])


def space_nouns(run: RunDir) -> tuple[list[str], list[str]]:
    """The committed space's noun names and their ids, without loading its vectors."""
    table = run.read_table(run.semantic("names.parquet"), ["name", "id"])
    return table["name"].to_pylist(), table["id"].to_pylist()


def _save_npy(run: RunDir, name: str, array: np.ndarray) -> None:
    sink = io.BytesIO()
    np.save(sink, np.ascontiguousarray(array, np.float32))
    run.write_bytes(run.semantic(name), sink.getvalue())


def _classifier_space(cfg: Config) -> SemanticSpace:
    weight, bias, subset = classifier_head(cfg.embed.model, cfg.storage)
    if subset is None:
        raise ConfigError(f"embed.model: timm cannot tell the label set of {cfg.embed.model.arch}'s classifier, "
                          f"so its classes have no names to name clusters with")
    vocab = imagenet_classes(subset, weight.shape[0])
    return SemanticSpace(vocab.names, vocab.ids, weight.numpy(), bias.numpy(), 1.0, CLASSIFIER)


def _text_space(cfg: Config, device: str) -> tuple[SemanticSpace, dict[str, Any]]:
    import torch

    vocab = load_vocabulary(cfg.label, cfg.storage)
    encoder = load_encoder(cfg.embed.model, cfg.storage, device)
    if encoder.encode_text is None:
        raise ConfigError(f"embed.model: {cfg.embed.model.arch} has no text tower to embed the vocabulary with")
    batch = cfg.label.text_batch
    print(f"label: embedding {len(vocab.names)} nouns with the text tower of {model_id(cfg.embed.model)} "
          f"on {device}", flush=True)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(vocab.names), batch):
            prompts = [cfg.label.prompt.format(noun) for noun in vocab.names[start : start + batch]]
            chunks.append(encoder.encode_text(prompts).float().cpu().numpy())
    vectors = np.concatenate(chunks)
    generic = generic_mask(vectors, cfg.label.generic_gamma) if cfg.label.generic_gamma > 0 else \
        np.zeros(len(vectors), bool)
    if generic.all():
        raise ConfigError(f"label.generic_gamma: {cfg.label.generic_gamma} marks all {len(vectors)} nouns as "
                          f"generic (the text tower puts every prompt near their mean); lower it, or 0 keeps all")
    keep = np.flatnonzero(~generic)
    model = encoder.model
    scale = float(model.logit_scale.detach().exp()) if getattr(model, "logit_scale", None) is not None else 1.0
    logit_bias = float(model.logit_bias.detach()) if getattr(model, "logit_bias", None) is not None else 0.0
    space = SemanticSpace([vocab.names[i] for i in keep], [vocab.ids[i] for i in keep], vectors[keep],
                          np.full(len(keep), logit_bias, np.float32), scale, TEXT)
    dropped = [vocab.names[i] for i in np.flatnonzero(generic)]
    return space, {"generic_dropped": len(dropped), "generic_examples": dropped[:20]}
