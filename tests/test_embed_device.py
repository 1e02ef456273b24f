"""The GPU paths of the embed stage, run on the CPU: JPEG decode on the encoder's device (torchvision
decode_jpeg) with its fallback to the CPU decode, weights in bf16, models built on the meta device, and
the chunk pipeline that overlaps copies with compute."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scaleclust.config import EmbedConfig, InputConfig, ModelConfig, StorageConfig
from scaleclust.embed.actor import EncodeBatch
from scaleclust.embed.device_decode import decode_batch, device_decodable
from scaleclust.embed.encoders import load_encoder, resolve_precision
from scaleclust.sources.decode import decode_shard
from scaleclust.sources.webdataset import Sample
from tests.shards import bad_samples, synthetic_image
from tests.test_decode_bounds import huge_png

TINY = ModelConfig(arch="scaleclust-tiny")
EFFNET = ModelConfig(kind="timm", arch="efficientnet_lite0", pretrained="package:efficientnet_lite0")


def encoded(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def odd_samples() -> list[Sample]:
    """The suite's bad samples plus images the device decoder must hand to the CPU path, or take."""
    rng = np.random.default_rng(3)
    pictures = [synthetic_image(i % 3, rng) for i in range(6)]
    odd = {
        "cmyk": {"jpg": encoded(pictures[0].convert("CMYK"))},
        "progressive": {"jpg": encoded(pictures[1], progressive=True, quality=90)},
        "grey": {"jpg": encoded(pictures[2].convert("L"))},
        "png": {"png": encoded(pictures[3], "PNG")},
        "wide": {"jpg": encoded(pictures[4].resize((150, 40)))},
        "bomb": {"png": huge_png(3000, 3000)},
        "trailing": {"jpg": encoded(pictures[5])[:-2]},  # no end-of-image marker
    }
    samples = [Sample(key, members) for key, members in bad_samples()]
    return samples + [Sample(key, members) for key, members in odd.items()]


def columns(batches) -> dict[str, list]:
    out: dict[str, list] = {}
    for batch in batches:
        for name, values in batch.items():
            out.setdefault(name, []).extend(list(values))
    return out


def test_device_decode_gives_the_rows_and_errors_of_the_cpu_decode() -> None:
    samples, cfg = odd_samples(), InputConfig(shards=["s"], label_field="label")
    cpu = columns(decode_shard("s", samples, 64, 1.0, cfg, 5, max_pixels=4_000_000))
    raw = columns(decode_shard("s", samples, 64, 1.0, cfg, 5, max_pixels=4_000_000, encoded=True))
    assert "image" not in raw and raw["key"] == cpu["key"] and raw["caption"] == cpu["caption"]
    todo = [i for i, e in enumerate(raw["error"]) if not e]
    images, widths, heights, errors, _ = decode_batch([raw["data"][i] for i in todo], [raw["member"][i] for i in todo],
                                                   64, 1.0, 4_000_000, torch.device("cpu"))
    device_errors = list(raw["error"])
    for i, err in zip(todo, errors):
        device_errors[i] = err
    assert device_errors == cpu["error"]
    errors_by_key = dict(zip(cpu["key"], cpu["error"]))
    assert errors_by_key["bomb"].startswith("ImageTooLarge") and errors_by_key["truncjpg"].startswith("ImageDecodeError")
    assert widths.tolist() == [cpu["width"][i] for i in todo] and heights.tolist() == [cpu["height"][i] for i in todo]
    decoded = {raw["key"][i]: images[j].permute(1, 2, 0).numpy() for j, i in enumerate(todo)}
    for i, key in enumerate(cpu["key"]):
        if cpu["error"][i]:
            assert key not in decoded or not decoded[key].any()
            continue
        diff = np.abs(decoded[key].astype(int) - cpu["image"][i].astype(int))
        assert diff.mean() < 3, (key, diff.mean())  # the same picture: resampling differs, not content
    on_device = {k for k, s in zip(cpu["key"], samples) if "jpg" in s.members and device_decodable(s.members["jpg"], 10**8)}
    assert {"grey", "wide", "000080000"} <= on_device and not {"cmyk", "progressive", "trailing", "truncjpg"} & on_device


def test_actor_decodes_bytes_on_its_device_like_the_cpu_path() -> None:
    samples, cfg = odd_samples(), InputConfig(shards=["s"], label_field="label")
    actor = EncodeBatch(EmbedConfig(model=TINY, batch_size=3), StorageConfig())
    cpu = next(decode_shard("s", samples, 64, 1.0, cfg, 64))
    raw = next(decode_shard("s", samples, 64, 1.0, cfg, 64, encoded=True))
    for batch in (cpu, raw):
        batch["busy"] = np.zeros(len(batch["key"]))
    want, got = actor(dict(cpu)), actor(dict(raw))
    assert list(got["error"]) == list(want["error"]) and got["width"].tolist() == want["width"].tolist()
    assert "data" not in got and "image" not in got
    ok = np.asarray([e == "" for e in want["error"]])
    a, b = want["embedding"][ok].astype(np.float32), got["embedding"][ok].astype(np.float32)
    assert ok.sum() == 10 and (np.sum(a * b, axis=1) > 0.99).all()
    assert not got["embedding"][~ok].any()


def test_bf16_weights_agree_with_fp32_on_real_weights() -> None:
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(Image.fromarray(p).resize((224, 224))) for p in load_sample_images().images]
    crops = np.stack(photos + [p[::-1] for p in photos] + [p[:, ::-1] for p in photos])
    fp32 = EncodeBatch(EmbedConfig(model=EFFNET, batch_size=4, precision="fp32"), StorageConfig())
    bf16 = EncodeBatch(EmbedConfig(model=EFFNET, batch_size=4, precision="bf16"), StorageConfig())
    assert next(bf16.encoder.model.parameters()).dtype == torch.bfloat16
    a, b = fp32.embed(crops).astype(np.float32), bf16.embed(crops).astype(np.float32)
    cosines = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosines.min() > 0.999, cosines


@pytest.mark.parametrize("avx512_bf16, amx, want", [(False, False, "fp32"), (True, False, "bf16"), (False, True, "bf16")])
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool,
                                                               amx: bool, want: str) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert resolve_precision("auto", "cpu") == want
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    encoder = load_encoder(TINY, StorageConfig(), "cpu", "auto")
    assert next(encoder.model.parameters()).dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[want]


def test_checkpoints_load_onto_the_meta_device_without_a_random_init(tmp_path: Path) -> None:
    """No random init: building from a checkpoint leaves torch's RNG untouched, and the weights are the
    checkpoint's, in the asked dtype; the text tower's causal mask (not in the checkpoint) is rebuilt."""
    reference = load_encoder(TINY, StorageConfig(), "cpu")
    torch.save({k: v * 2 for k, v in reference.model.state_dict().items()}, tmp_path / "tiny.pt")
    rng = torch.random.get_rng_state()
    loaded = load_encoder(ModelConfig(arch="scaleclust-tiny", pretrained=str(tmp_path / "tiny.pt")), StorageConfig(),
                          "cpu", "bf16")
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(torch.equal(v, (reference.model.state_dict()[k] * 2).to(v.dtype)) for k, v in loaded.model.state_dict().items())
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert torch.equal(loaded.model.attn_mask, reference.model.attn_mask)
    rng = torch.random.get_rng_state()
    effnet = load_encoder(EFFNET, StorageConfig(), "cpu")
    assert torch.equal(torch.random.get_rng_state(), rng) and not any(p.is_meta for p in effnet.model.parameters())


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_chunk_pipeline_gives_the_one_batch_result(chunk: int) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (10, 64, 64, 3), dtype=np.uint8)
    whole = EncodeBatch(EmbedConfig(model=TINY, batch_size=64), StorageConfig())
    piped = EncodeBatch(EmbedConfig(model=TINY, batch_size=chunk), StorageConfig())
    emb, norms = piped.encode_uint8(pixels)
    want, want_norms = whole.encode_uint8(pixels)
    assert emb.shape == (10, 64) and np.abs(emb.astype(np.float32) - want).max() < 2e-3
    assert np.allclose(norms, want_norms, rtol=1e-4)
    nchw, _ = piped.encode_uint8(torch.from_numpy(pixels).permute(0, 3, 1, 2), nchw=True)
    assert np.abs(nchw.astype(np.float32) - want).max() < 2e-3


@pytest.mark.usefixtures("ray_local")
@pytest.mark.timeout(300)
def test_stage_with_device_decode_commits_what_the_cpu_decode_commits(tmp_path: Path, make_config) -> None:
    """The embed stage on Ray with embed.decode=device (decode tasks only read bytes) commits the same keys,
    errors and (nearly) the same embeddings as with embed.decode=cpu."""
    import pyarrow.parquet as pq

    from scaleclust.stages import embed as stage
    from scaleclust.tables import embedding_matrix
    from scaleclust.pipeline import prepare
    from tests.shards import write_bad_shards

    inputs = write_bad_shards(tmp_path / "bad")[:1]  # good samples among corrupt, truncated, non-image ones
    out = {}
    for decode in ("cpu", "device"):
        cfg = make_config(str(tmp_path / decode), inputs, embed={"decode": decode})
        ctx = prepare(cfg)
        run, shards = ctx.run, ctx.shards
        stage.run(cfg, run, shards)
        tables = {name: pq.read_table(run.embeddings(name)) for name in shards}
        errors = {name: sorted((r["key"], r["error"]) for r in pq.read_table(run.errors(name)).to_pylist())
                  for name in shards if Path(run.errors(name)).exists()}
        out[decode] = tables, errors
    (cpu, cpu_errors), (dev, dev_errors) = out["cpu"], out["device"]
    assert dev_errors == cpu_errors and {k for k, _ in cpu_errors["bad-mixed"]} >= {"corrupt", "truncjpg", "textfile"}
    for name, table in cpu.items():
        other = dev[name]
        assert other["key"].to_pylist() == table["key"].to_pylist()
        assert other["width"].to_pylist() == table["width"].to_pylist()
        cos = np.sum(embedding_matrix(table["embedding"]) * embedding_matrix(other["embedding"]), axis=1)
        assert (cos > 0.99).all(), (name, cos.min())
