"""Semantic spaces: the WordNet nouns that ship with the package, the generic-noun filter, a CLIP text
space built once per run, and EfficientNet-Lite0's own classes naming real photos on real weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from scaleclust.cluster.naming import generic_mask, name_clusters, softmax_top, vote_matrix
from scaleclust.config import LabelConfig, StorageConfig
from scaleclust.embed.actor import EncodeBatch
from scaleclust.embed.encoders import load_encoder
from scaleclust.rundir import RunDir
from scaleclust.semantic import build_space, load_space
from scaleclust.semantic.vocab import load_vocabulary
from scaleclust.sources.decode import decode_image
from scaleclust.sources.shard_writer import jpeg_bytes

CATS = {"n02123045", "n02123159", "n02123394", "n02123597", "n02124075"}  # ImageNet's domestic cats
COFFEE = {"n07920052", "n07929519"}  # espresso, coffee


def test_packaged_wordnet_nouns_load_and_planted_generic_nouns_are_dropped() -> None:
    vocab = load_vocabulary(LabelConfig(), StorageConfig())  # the default: the nouns in the package
    assert len(vocab.names) > 60_000 and len(set(vocab.names)) == len(vocab.names)
    ids = dict(zip(vocab.names, vocab.ids))
    assert ids["tabby"] == "n02123045" and ids["espresso"] == "n07920052" and ids["cat"] == "n02121620"
    assert ids["physical entity"] == "n00001930"  # underscores become spaces
    # Vectors like CLIP prompts (a shared direction + each noun's own), generic nouns planted at the mean.
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(vocab.names), 48)).astype(np.float32) + rng.normal(size=48)
    generic = ["entity", "physical entity", "abstraction", "object", "thing"]
    for name in generic:
        vectors[vocab.names.index(name)] = vectors.mean(0) + rng.normal(size=48) * 0.01
    assert sorted(vocab.names[i] for i in np.flatnonzero(generic_mask(vectors, 0.05))) == sorted(generic)


def tiny(tmp_path: Path, **label):
    from tests.conftest import tiny_config

    return tiny_config(str(tmp_path / "run"), str(tmp_path / "shards" / "x.tar"), label=label)


def test_text_space_is_the_text_tower_over_prompts_and_is_built_once(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, generic_gamma=0.0)
    run = RunDir(cfg.run_dir, cfg.storage)
    space = build_space(cfg, run)
    assert len(space.names) == 60 and space.ids[0] == "n02121620" and space.vectors.shape == (60, 64)
    encoder = load_encoder(cfg.embed.model, cfg.storage, "cpu")
    with torch.no_grad():
        want = encoder.encode_text(["a photo of a cat", "a photo of a newspaper"]).numpy()
    assert np.allclose(space.vectors[[0, -1]], want, atol=1e-5)
    assert np.isclose(space.scale, float(encoder.model.logit_scale.detach().exp()))
    first = run.marker(run.semantic("space.json"))
    again = build_space(cfg, run)  # reused: same marker, same vectors
    assert run.marker(run.semantic("space.json")) == first and np.array_equal(again.vectors, space.vectors)
    loaded = load_space(run)
    assert loaded.names == space.names and np.array_equal(loaded.vectors, space.vectors)
    build_space(tiny(tmp_path, generic_gamma=0.0, prompt="an image of {}"), run)  # other settings: rebuilt
    assert run.marker(run.semantic("space.json"))["space_id"] != first["space_id"]


def crops(image: np.ndarray, n: int, rng: np.random.Generator) -> list[bytes]:
    """n JPEG crops covering 60-100% of the shorter side at random places, some mirrored."""
    h, w = image.shape[:2]
    out = []
    for _ in range(n):
        side = int(min(h, w) * rng.uniform(0.6, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = Image.fromarray(image[y : y + side, x : x + side])
        out.append(jpeg_bytes(crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop))
    return out


def test_efficientnet_classes_name_cat_and_coffee_crops(tmp_path: Path) -> None:
    import skimage.data

    from tests.conftest import tiny_config

    cfg = tiny_config(str(tmp_path / "run"), str(tmp_path / "shards" / "x.tar"), embed={
        "model": {"kind": "timm", "arch": "efficientnet_lite0", "pretrained": "package:efficientnet_lite0"},
        "precision": "fp32"})  # the classifier's logits below are fp32's
    run = RunDir(cfg.run_dir, cfg.storage)
    space = build_space(cfg, run)
    assert space.kind == "classifier" and len(space.names) == 1000 and space.ids[281] == "n02123045"
    actor = EncodeBatch(cfg.embed, cfg.storage)
    rng = np.random.default_rng(0)
    prep = actor.encoder.preprocess
    images = [decode_image(data, prep.image_size, prep.crop_pct)[0]
              for photo in (skimage.data.chelsea(), skimage.data.coffee()) for data in crops(photo, 10, rng)]
    batch = actor({"image": np.stack(images), "error": np.asarray([""] * 20, object), "busy": np.zeros(20)})
    x, norms = batch["embedding"].astype(np.float32), batch["embedding_norm"]
    logits = space.logits(x, norms)
    # The space gives the classifier's own logits (up to the stored embedding's float16 rounding).
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) * 255 for v in (prep.mean, prep.std))
    classifier = build_classifier(cfg)
    with torch.no_grad():
        want = classifier((pixels - mean) / std).numpy()
    assert np.abs(logits - want).max() < 0.05
    assert np.array_equal(np.argsort(-logits, 1)[:, :3], np.argsort(-want, 1)[:, :3])
    clusters = np.repeat([0, 1], 10)
    idx, probs = softmax_top(logits, 5)
    named = name_clusters(vote_matrix(clusters, idx, probs, 2, 1000), np.bincount(clusters), space.names, 0.1)
    cat, coffee = (space.ids[space.names.index(n.top_names[0])] for n in named)
    assert cat in CATS and named[0].score > 0.3, named[0]
    assert coffee in COFFEE and named[1].score > 0.3, named[1]


def build_classifier(cfg) -> torch.nn.Module:
    """The whole timm classifier with the packaged weights, to compare logits against."""
    import timm

    from scaleclust.embed.encoders import _load_weights, _timm_weights_path

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    _load_weights(model, _timm_weights_path(cfg.embed.model.pretrained, cfg.storage))
    return model.eval()
