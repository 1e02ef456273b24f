"""`scaleclust plan CONFIG`: what a run will do and need, before it starts (no Ray, no embedding).

Shards come from the input patterns as the run expands them. Rows are exact where something already
counted them (embeddings markers of an earlier run, LAION parts' .npy headers, image-folder listings) and
otherwise estimated from shard sizes: a small read of a few shards (their tar headers) gives bytes per
sample. Memory per worker and disk in the run directory follow from the rows, the embedding dimension
and the settings; the index's size is the one scaleclust.index.choose picks. GPU-hours use the images/s
measured for the model (MEASURED_RATES, each with its source), or the run's own markers' rate.
"""
from __future__ import annotations

import io
import math
import os
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import Any

from scaleclust.config import Config, ConfigError
from scaleclust.methods import needs_index
from scaleclust.pipeline import STAGES
from scaleclust.price import Rate
from scaleclust.rundir import RunDir
from scaleclust.sources import ShardSpec, plan as plan_shards
from scaleclust.sources.laion import CHUNK, npy_rows
from scaleclust.sources.webdataset import split_member
from scaleclust.stage import Context
from scaleclust.storage import filesystem

GIB = 1 << 30
PROBE_SHARDS = 3  # shards whose headers are read to measure bytes per sample (first, middle, last)
PROBE_BYTES = 8 << 20  # at most this much of each probed shard is read
KEY_BYTES = 16  # assumed key length when no shard was probed
SHARD_ROWS = 10_000  # rows per shard where none is listed (plan --rows): img2dataset's default


_H200 = ("scaleclust embed stage on one H200 with 16 CPUs, bf16 weights, batch 256, 72k photos, one encoder "
         "actor, rate after the actor was ready (2026-11-29)")
_CPU = "scaleclust embed stage on 2 CPUs, one encoder actor (docs/measurements.md, 2026-11-25)"
# images per second of one encoder actor: per GPU (gpus_per_actor >= 1) or on CPU
MEASURED_RATES: dict[tuple[str, str, str], Rate] = {
    ("open_clip", "ViT-B-32", "gpu"): Rate(3000, _H200),
    ("open_clip", "ViT-L-14", "gpu"): Rate(1486, _H200),
    ("open_clip", "ViT-B-32", "cpu"): Rate(15, "ViT-B-32 on a 2-CPU machine (2026-11)"),
    ("open_clip", "scaleclust-tiny", "cpu"): Rate(500.7, _CPU),
    ("timm", "efficientnet_lite0", "cpu"): Rate(27.9, _CPU),
}
REFERENCE = ("open_clip", "ViT-L-14", "gpu")  # unmeasured GPU models: scaled from it by encoder parameters
REFERENCE_PARAMS = 303_966_208  # ViT-L-14's image tower
DECODE_BOUND = 3000  # ViT-B-32's stage rate on 16 CPUs: decoding, not the GPU, bounds small models


@dataclass
class Rows:
    """How many rows the input holds, and how that is known."""

    total: int
    exact: bool
    how: str
    largest_shard_rows: int
    largest_shard_bytes: int = 0
    key_bytes: float = KEY_BYTES
    to_embed: int = 0


@dataclass
class Encoder:
    dim: int | None
    params: int | None = None
    image_size: int | None = None
    note: str = ""


@dataclass
class Stage:
    name: str
    what: str
    memory_bytes: int  # per worker (task, actor or Train worker)
    disk_bytes: int = 0  # added to the run directory
    notes: list[str] = field(default_factory=list)


def shard_sizes(urls: list[str], cfg: Config) -> dict[str, int]:
    """Byte size of every shard, from one listing per folder (not one request per shard)."""
    sizes: dict[str, int] = {}
    by_folder: dict[str, list[str]] = {}
    for url in urls:
        by_folder.setdefault(posixpath.dirname(url), []).append(url)
    for folder, members in by_folder.items():
        fs, path = filesystem(folder, cfg.storage)
        listed = {fs._strip_protocol(e["name"]): int(e.get("size") or 0) for e in fs.ls(path, detail=True)}
        for url in members:
            sizes[url] = listed.get(fs._strip_protocol(url), 0)
    return sizes


def probe_tar(url: str, size: int, cfg: Config) -> tuple[int, int, float]:
    """(samples, bytes they take, mean key length) from the tar headers in the first PROBE_BYTES of a
    shard. A shard read whole counts exactly; a cut one counts the samples before the last key seen."""
    fs, path = filesystem(url, cfg.storage)
    whole = size <= PROBE_BYTES
    data = fs.cat_file(path) if whole else fs.cat_file(path, start=0, end=PROBE_BYTES)
    starts: dict[str, int] = {}
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
    except (tarfile.TarError, EOFError, OSError):  # not a tar: no sample here (the caller names the shards)
        return 0, 0, KEY_BYTES
    with tar:
        while True:
            try:
                info = tar.next()
            except (tarfile.TarError, EOFError, OSError):
                break
            if info is None:
                break
            key, ext = split_member(info.name)
            if info.isfile() and ext and not key.rsplit("/", 1)[-1].startswith(("_", ".")):
                starts.setdefault(key, info.offset)
    if whole:
        return len(starts), size, _mean_len(starts)
    last = max(starts, key=starts.__getitem__, default=None)
    if last is None:
        return 0, 0, KEY_BYTES
    return len(starts) - 1, starts.pop(last), _mean_len(starts)


def _mean_len(keys: dict[str, int]) -> float:
    return sum(len(k) for k in keys) / len(keys) if keys else KEY_BYTES


def count_rows(cfg: Config, shards: dict[str, ShardSpec], committed: dict[str, dict[str, Any]]) -> Rows:
    """Rows of the input: exact from markers, .npy headers or listings; else estimated from shard sizes."""
    done = {name: committed[name]["rows"] for name in shards if name in committed}
    todo = {name: spec for name, spec in shards.items() if name not in committed}
    known = sum(done.values())
    largest = max(done.values(), default=0)
    how = f"{len(done)} shard(s) counted by this run's markers" if done else ""
    if not todo:
        return Rows(known, True, how, largest)
    if cfg.input.format == "laion_embeddings":
        counts = [npy_rows(spec.urls[0], cfg.storage) for spec in todo.values()]
        return Rows(known + sum(counts), True, _join(how, f"{len(counts)} part(s) from .npy headers"),
                    max([largest, *counts]), to_embed=0)
    if cfg.input.format == "image_folder":
        exts = set(cfg.input.image_extensions)
        counts = [sum(split_member(u)[1] in exts for u in spec.urls) for spec in todo.values()]
        return Rows(known + sum(counts), True, _join(how, f"{len(counts)} shard(s) listed"),
                    max([largest, *counts]), to_embed=sum(counts))
    urls = {spec.urls[0]: name for name, spec in todo.items()}
    sizes = shard_sizes(list(urls), cfg)
    ordered = list(urls)
    picks = sorted({ordered[0], ordered[len(ordered) // 2], ordered[-1]})[:PROBE_SHARDS]
    probed = {url: probe_tar(url, sizes[url], cfg) for url in picks}
    samples = sum(p[0] for p in probed.values())
    nbytes = sum(p[1] for p in probed.values())
    if not samples:
        raise ValueError(f"input.shards: no sample found in the first {PROBE_BYTES >> 20} MiB of "
                         f"{', '.join(picks)}; are these WebDataset tars?")
    per_sample = nbytes / samples
    exact = all(sizes[u] <= PROBE_BYTES for u in probed) and len(probed) == len(urls)
    estimate = round(sum(sizes.values()) / per_sample) if not exact else samples
    key_bytes = sum(p[2] * p[0] for p in probed.values()) / samples
    note = (f"{len(urls)} shard(s): {samples} samples read from {len(probed)} shard(s)" if exact else
            f"{len(urls)} shard(s) estimated from their sizes at {per_sample:,.0f} bytes per sample "
            f"(tar headers of {len(probed)} shard(s))")
    return Rows(known + estimate, exact, _join(how, note),
                max(largest, round(max(sizes.values()) / per_sample)), max(sizes.values()), key_bytes, estimate)


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def encoder_facts(cfg: Config, shards: dict[str, ShardSpec], committed: dict[str, dict[str, Any]]) -> Encoder:
    """Embedding dimension (and the image tower's parameters and input size) without loading weights."""
    if cfg.input.format == "laion_embeddings":
        spec = next(iter(shards.values()))
        return Encoder(_npy_dim(spec.urls[0], cfg), note="from the first part's .npy header")
    model = cfg.embed.model
    if model.arch.startswith(("hf-hub:", "local-dir:")):
        dim = next((m["dim"] for m in committed.values() if "dim" in m), None)
        return Encoder(dim, note=f"{model.arch}: its config is not read by plan" + ("" if dim else "; dim unknown"))
    import torch

    from scaleclust.embed.encoders import preprocess_for, register_packaged_configs

    size = preprocess_for(model).image_size
    if model.kind == "timm":
        import timm

        with torch.device("meta"):
            net = timm.create_model(model.arch, pretrained=False, num_classes=0)
        return Encoder(int(net.num_features), sum(p.numel() for p in net.parameters()), size)
    import open_clip

    register_packaged_configs()
    net = open_clip.create_model(model.arch, device="meta")
    return Encoder(int(open_clip.get_model_config(model.arch)["embed_dim"]),
                   sum(p.numel() for p in net.visual.parameters()), size)


def _npy_dim(url: str, cfg: Config) -> int:
    import numpy as np

    fs, path = filesystem(url, cfg.storage)
    with fs.open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = read(handle)
    return int(shape[1])


def encode_rate(cfg: Config, encoder: Encoder, committed: dict[str, dict[str, Any]]) -> Rate | None:
    """Images/s of one encoder actor: this run's own markers, else the measured table, else (GPU) the
    reference model's rate scaled by image-tower parameters."""
    rates = [m["images_per_second"] for m in committed.values() if m.get("images_per_second")]
    if rates:
        return Rate(sum(rates) / len(rates), f"this run's {len(rates)} committed shard(s)")
    model = cfg.embed.model
    device = "gpu" if cfg.embed.gpus_per_actor > 0 else "cpu"
    rate = MEASURED_RATES.get((model.kind, model.arch, device))
    if rate and device == "gpu" and cfg.embed.precision not in ("bf16", "auto"):  # auto is bf16 on GPUs
        return Rate(rate.per_second, rate.source + f"; measured at bf16, not {cfg.embed.precision}", False)
    if rate or device == "cpu" or not encoder.params:
        return rate
    scaled = min(DECODE_BOUND, MEASURED_RATES[REFERENCE].per_second * REFERENCE_PARAMS / encoder.params)
    return Rate(scaled, f"{REFERENCE[1]}'s measured rate scaled by image-tower parameters "
                f"({encoder.params / 1e6:.0f}M against {REFERENCE_PARAMS / 1e6:.0f}M), at most {DECODE_BOUND}", False)


def embed_needs(cfg: Config, rows: Rows, enc: Encoder, n_shards: int, warnings: list[str]) -> list[Stage]:
    """The embed stage (or a LAION dump's ingest): memory per worker and the embeddings it adds."""
    d = enc.dim or 0
    if cfg.input.format == "laion_embeddings":
        return [Stage("ingest", "one task per part, normalised in chunks", CHUNK * d * 4,
                      rows.total * (d * 2 + int(rows.key_bytes) + 8))]
    batch = cfg.embed.decode_batch * 3 * (enc.image_size or 224) ** 2
    weights = (enc.params or 0) * 4 + cfg.embed.batch_size * 3 * (enc.image_size or 224) ** 2 * 4
    vectors = rows.total * (d * 2 * (2 if cfg.embed.text else 1) + int(rows.key_bytes) + 8)
    return [Stage("embed: decode", "one task per shard: the shard read whole, decoded blocks",
                  rows.largest_shard_bytes + batch * 4),
            Stage("embed: encode", f"{cfg.embed.min_actors}..{cfg.embed.max_actors} actor(s)", weights, vectors,
                  ["weights + one input batch; activations not counted"])]


def fit_needs(cfg: Config, rows: Rows, enc: Encoder, n_shards: int, warnings: list[str]) -> list[Stage]:
    """The fit stage: its task or Train workers (with neighbours), and MLC's assigner task."""
    d, c = enc.dim or 0, cfg.cluster
    sample = min(c.sample_size, rows.total)
    out: list[Stage] = []
    if c.method == "kmeans":
        out.append(Stage("fit (kmeans)", "one task: the sample, float32", sample * d * 4 + c.largest_k() * d * 4))
    else:
        share = -(-sample // c.train.workers)
        neighbors = getattr(c, c.method).neighbors if needs_index(c) else 0  # every method trained on neighbours
        per_row = d * 4 + neighbors * d * 2
        out.append(Stage(f"fit ({c.method})", f"{c.train.workers} Train worker(s): each its share of the "
                         f"sample{' with its neighbours' if neighbors else ''}", share * per_row))
    if c.method == "mlc":
        from scaleclust.cluster.mlc import DENSE_MAX_ROWS
        from scaleclust.methods import assign_memory

        n = min(c.assign_sample, rows.total)
        graph = f"dense {n:,} x {n:,} membership" if n <= DENSE_MAX_ROWS else f"sparse kNN membership ({c.assign_neighbors} per row)"
        out.append(Stage("fit: mlc assigner", f"one task: spectral clustering of {n:,} rows, {graph}",
                         assign_memory(c, n, d)))
    return out


def assign_needs(cfg: Config, rows: Rows, enc: Encoder, n_shards: int, warnings: list[str]) -> list[Stage]:
    """The assign stage: one shard's rows per task, and the assignments it adds."""
    return [Stage("assign", "one task per shard", rows.largest_shard_rows * (enc.dim or 0) * 4,
                  rows.total * (int(rows.key_bytes) + 12))]


def index_needs(cfg: Config, rows: Rows, enc: Encoder, n_shards: int, warnings: list[str]) -> list[Stage]:
    """The index the index stage would choose for these rows, its build and its search actors."""
    from scaleclust.index.coarse import quantizer_factory
    from scaleclust.stages.index import choose

    d = enc.dim or 0
    try:
        spec = choose(cfg, rows.total, d)
    except ValueError as err:
        warnings.append(f"index: {err}")
        return []
    per_shard = rows.largest_shard_rows * spec.bytes_per_vector
    queries = min(cfg.index.queries, rows.total)
    return [
        Stage("index: train", f"{spec.factory}: {spec.small_rows:,} rows held, {spec.train_rows:,} streamed",
              spec.train_memory_bytes(math.ceil(rows.largest_shard_rows * spec.train_rows / max(rows.total, 1))),
              spec.total_bytes + rows.total * spec.stored_bytes_per_vector,
              [f"{spec.bytes_per_vector} bytes per vector; whole index {spec.total_bytes / GIB:.2f} GiB"]
              + ([f"training spills {spec.train_rows * d * 2 / GIB:.2f} GiB (fp16) to the task's local disk"]
                 if quantizer_factory(spec.nlist) else [])
              + ([f"re-ranking: {spec.stored_bytes_per_vector} bytes per vector of fp16 copies on disk (memory-mapped)"]
                 if spec.stored_bytes_per_vector else [])),
        Stage("index: search", f"actors holding up to {cfg.index.shards_per_searcher} shard indexes each "
              "and the quantizer they share",
              min(cfg.index.shards_per_searcher, n_shards) * per_shard + spec.fixed_bytes),
        Stage("neighbors", f"kNN graph of {queries:,} rows, searched by those actors", 0,
              queries * cfg.index.k * (int(rows.key_bytes) + 4)),
    ]


def memory_warnings(cfg: Config, found: list[Stage], rows: Rows, dim: int, memory: int) -> list[str]:
    """Settings that cannot fit: a stage's worker over `memory`, MLC's spectral step over its task's request."""
    warnings = [f"{s.name}: needs about {s.memory_bytes / GIB:.1f} GiB per worker, more than the "
                f"{memory / GIB:.1f} GiB of a worker" for s in found if s.memory_bytes > memory]
    c = cfg.cluster
    if c.method == "mlc":
        from scaleclust.methods import check_assign_memory

        try:
            check_assign_memory(c, min(c.assign_sample, rows.total), dim)
        except ConfigError as err:
            warnings.append(str(err))
    if isinstance(c.k, int) and rows.total < c.k:
        warnings.append(f"cluster.k: {c.k} clusters exceed the {rows.total:,} rows of the input")
    return warnings


# What the plan estimates, per stage of the registry (scaleclust.pipeline.STAGES) that a run would run.
NEEDS = {"embed": embed_needs, "index": index_needs, "fit": fit_needs, "assign": assign_needs}


def given_rows(cfg: Config, rows: int) -> tuple[dict[str, ShardSpec], Rows]:
    """A job of `rows` images, its input not listed (a size to price before the data exists): shards of
    SHARD_ROWS rows each, by name only."""
    if cfg.input.format == "laion_embeddings":
        raise ConfigError("plan --rows: a laion_embeddings dump's dimension comes from its files; plan it as it is")
    shards = {f"{i:06d}": ShardSpec(()) for i in range(-(-rows // SHARD_ROWS))}
    return shards, Rows(rows, False, f"given (--rows), in shards of {SHARD_ROWS:,} rows", SHARD_ROWS,
                        to_embed=rows)


def make_plan(cfg: Config, memory_bytes: int | None = None, rows_given: int | None = None) -> dict[str, Any]:
    """The plan as a dict: shards, rows, encoder, rate and GPU-hours, stages, totals, warnings. With
    `rows_given` the input is not read: the job is sized at that many rows (given_rows)."""
    memory = memory_bytes or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    committed = {} if rows_given else RunDir(cfg.run_dir, cfg.storage).committed("embeddings")
    if rows_given:
        shards, rows = given_rows(cfg, rows_given)
    else:
        shards = plan_shards(cfg.input, cfg.storage)
        rows = count_rows(cfg, shards, committed)
    enc = encoder_facts(cfg, shards, committed)
    warnings: list[str] = []
    ctx = Context(cfg, RunDir(cfg.run_dir, cfg.storage), shards)
    found = [need for stage in STAGES if stage.name in NEEDS and stage.when(ctx)
             for need in NEEDS[stage.name](cfg, rows, enc, len(shards), warnings)]
    warnings = memory_warnings(cfg, found, rows, enc.dim or 0, memory) + warnings
    embed: dict[str, Any] = {"rows": rows.to_embed}
    rate = encode_rate(cfg, enc, committed) if cfg.input.format != "laion_embeddings" else None
    if rate:
        hours = rows.to_embed / rate.per_second / 3600
        gpus = cfg.embed.gpus_per_actor
        embed |= {"images_per_second": rate.per_second, "source": rate.source, "estimate": not rate.measured,
                  "gpu_hours": hours * gpus if gpus else 0.0, "actor_hours": hours,
                  "wall_hours_at_max_actors": hours / cfg.embed.max_actors}
    elif cfg.input.format != "laion_embeddings":
        embed["source"] = f"no measured rate for {cfg.embed.model.arch}"
    return {"shards": len(shards), "committed_shards": len(committed), "rows": rows.total,
            "rows_exact": rows.exact, "rows_how": rows.how, "dim": enc.dim, "encoder_note": enc.note,
            "embed": embed, "memory_per_worker_limit": memory,
            "stages": [vars(s) for s in found], "disk_bytes": sum(s.disk_bytes for s in found), "warnings": warnings}


def format_plan(cfg: Config, plan: dict[str, Any]) -> str:
    """The plan as the few lines `scaleclust plan` prints."""
    lines = [f"plan for {cfg.run_dir}",
             f"shards  {plan['shards']:,} ({plan['committed_shards']:,} already embedded)",
             f"rows    {'' if plan['rows_exact'] else '~'}{plan['rows']:,} ({plan['rows_how']})",
             f"dim     {plan['dim'] or '?'}" + (f" ({plan['encoder_note']})" if plan["encoder_note"] else "")]
    e = plan["embed"]
    if "images_per_second" in e:
        unit = "GPU-hours" if cfg.embed.gpus_per_actor else "CPU actor-hours"
        lines.append(f"embed   {e['rows']:,} rows at {e['images_per_second']:,.0f} images/s per actor"
                     f"{' (estimate)' if e['estimate'] else ''}: {e['gpu_hours'] or e['actor_hours']:,.2f} {unit}, "
                     f"{e['wall_hours_at_max_actors']:,.2f} h at {cfg.embed.max_actors} actor(s)")
        lines.append(f"        rate: {e['source']}")
    elif "source" in e:
        lines.append(f"embed   {e['rows']:,} rows; {e['source']}")
    lines.append(f"{'stage':<20} {'memory/worker':>13} {'disk':>10}  what")
    for s in plan["stages"]:
        note = f" ({'; '.join(s['notes'])})" if s["notes"] else ""
        lines.append(f"{s['name']:<20} {_size(s['memory_bytes']):>13} {_size(s['disk_bytes']):>10}  {s['what']}{note}")
    lines.append(f"run directory: about {_size(plan['disk_bytes'])} (embeddings fp16, index, assignments, "
                 f"neighbours); worker memory checked against {_size(plan['memory_per_worker_limit'])}")
    lines += [f"warning: {w}" for w in plan["warnings"]]
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} B" if n else "-"
