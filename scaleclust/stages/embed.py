"""Embed stage: shards -> decode (CPU tasks) -> encode (actor pool) -> per-shard Parquet + marker.

Exactly once per shard: committed shards (marker present) are skipped; a pending shard's leftover
parts from a killed run are deleted before it is redone. A shard committed with failures that may pass
(scaleclust.failures) is uncommitted and redone whole.
"""
from __future__ import annotations

import time
from typing import Any

import ray
import yaml

from scaleclust.config import Config, StorageConfig
from scaleclust.embed.actor import EncodeBatch
from scaleclust.embed.dedupe import resolve_duplicates
from scaleclust.embed.encoders import model_id, preprocess_for
from scaleclust.embed.writer import commit_shard, write_parts
from scaleclust.failures import UserError, needs_retry, retryable_rows
from scaleclust.progress import Progress
from scaleclust.rundir import RunDir
from scaleclust.parallel import map_shards
from scaleclust.sources import ShardSpec, describe, laion_part, read_samples
from scaleclust.sources.laion import ingest_part
from scaleclust.sources.decode import decode_shard
from scaleclust.storage import remove
from scaleclust.stage import Stage


def _decode(batch: dict[str, Any], storage: StorageConfig, **kwargs: Any):
    for shard, urls, root, kind in zip(batch["shard"], batch["urls"], batch["root"], batch["kind"]):
        started = time.time()
        samples = read_samples(str(shard), ShardSpec(tuple(urls), str(root), str(kind)), storage)
        yield from decode_shard(str(shard), samples, started=started, **kwargs)


def _to_retry(run: RunDir, shard: str, marker: dict[str, Any]) -> bool:
    """Whether a committed shard holds failures that may pass; markers of older versions lack the count,
    so their errors/ rows are read."""
    if "retryable" not in marker and marker.get("errors"):
        return any(retryable_rows(run.read_table(run.errors(shard))))
    return needs_retry(marker)


def run(cfg: Config, run: RunDir, shards: dict[str, ShardSpec]) -> dict[str, Any]:
    """Embed every shard in `shards` (name -> spec) that is not committed yet."""
    started = time.time()
    done = run.committed("embeddings")
    retry = sorted(name for name in shards if name in done and _to_retry(run, name, done[name]))
    pending = {name: spec for name, spec in shards.items() if name not in done or name in retry}
    print(f"embed: {len(shards)} shards, {len(shards) - len(pending)} already committed, {len(pending)} to do"
          + (f" ({len(retry)} to retry after failures that may pass)" if retry else ""))
    for name in retry:  # uncommit first: a kill during the redo leaves the shard pending, never half-old
        remove(run.embeddings_marker(name), run.storage)
    if pending:
        if cfg.input.format == "laion_embeddings":
            _ingest(cfg, run, pending)
        else:
            _embed(cfg, run, pending)
        if cfg.input.key == "member":  # shard_member keys cannot collide across shards
            moved = resolve_duplicates(run)
            if moved:
                print(f"embed: {moved} rows had keys already embedded from another shard; see errors/")
    markers = run.committed("embeddings")
    stats = {
        "shards": len(shards),
        "rows": sum(markers[n]["rows"] for n in shards if n in markers),
        "embedded": sum(markers[n]["embedded"] for n in shards if n in markers),
        "errors": sum(markers[n]["errors"] for n in shards if n in markers),
        "retryable": sum(markers[n].get("retryable", 0) for n in shards if n in markers),
        "seconds": round(time.time() - started, 2),
    }
    stats["rows_per_second"] = round(stats["rows"] / stats["seconds"], 1) if pending else None
    print(f"embed: {stats['embedded']} embedded, {stats['errors']} skipped (see errors/), {stats['seconds']} s"
          + (f", {stats['rows_per_second']} rows/s" if pending else ""))
    failing = {n: markers[n] for n in shards if n in markers and needs_retry(markers[n])}
    if failing:
        print(f"embed: {len(failing)} shard(s) still fail for reasons that may pass, "
              f"{stats['retryable']} row(s): " + "; ".join(f"{n}: {m['retry_reasons']}" for n, m in sorted(failing.items())[:5])
              + "; run again to retry them")
    return stats


def _ingest_one(item: dict[str, Any], run: RunDir, key_column: str | None, model: str) -> dict[str, Any]:
    """Commit one LAION part; a part whose files disagree is reported, not allowed to stop the others."""
    try:
        return ingest_part(run, laion_part(item["shard"], ShardSpec(tuple(item["urls"]), kind="laion")), key_column, model)
    except (ValueError, OSError) as err:
        return {"shard": item["shard"], "failed": f"{type(err).__name__}: {err}"}


def _ingest(cfg: Config, run: RunDir, pending: dict[str, ShardSpec]) -> None:
    """LAION embedding dumps: each part becomes a committed shard without the encoder."""
    items = [{"shard": name, "urls": list(spec.urls)} for name, spec in pending.items()]
    progress = Progress("embed", total=len(items), unit="parts")
    failed = []
    for marker in map_shards(_ingest_one, items, num_cpus=1, run=run, key_column=cfg.input.key_column,
                             model=model_id(cfg.embed.model)):
        if "failed" in marker:
            failed.append(f"{marker['shard']}: {marker['failed']}")
            print(f"embed: part {failed[-1]}")
        else:
            progress.update(1)
    progress.close()
    if failed:
        raise UserError(f"embed: {len(failed)} part(s) could not be read (the others are committed): "
                        + "; ".join(failed))


def _embed(cfg: Config, run: RunDir, pending: dict[str, ShardSpec]) -> None:
    for name in pending:
        remove(run.embedding_parts(name), run.storage, recursive=True)
    prep = preprocess_for(cfg.embed.model)
    model = model_id(cfg.embed.model)
    source = {name: describe(spec) for name, spec in pending.items()}
    items = [{"shard": name, "urls": list(spec.urls), "root": spec.root, "kind": spec.kind}
             for name, spec in pending.items()]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # Decode runs in its own CPU tasks, sized apart from the encoder pool. Ray Data fuses a task op into
    # the next actor op when their remote args match (decode_cpus == cpus_per_actor would put decoding
    # inside the encoder actors, serially); max_calls=0 (Ray's default for CPU tasks: reuse workers) is
    # a task-only arg the actors never have, so the two always differ.
    ds = ds.map_batches(_decode, batch_size=1, num_cpus=cfg.embed.decode_cpus, max_calls=0, fn_kwargs={
        "image_size": prep.image_size, "crop_pct": prep.crop_pct, "input_cfg": cfg.input,
        "storage": cfg.storage, "batch_rows": cfg.embed.decode_batch,
        "max_pixels": cfg.embed.max_image_pixels, "encoded": cfg.embed.decodes_on_device()})
    # An actor call takes at least two encoder batches, so its chunk pipeline has a next chunk to copy
    # while one computes.
    ds = ds.map_batches(
        EncodeBatch, batch_size=max(2 * cfg.embed.batch_size, cfg.embed.decode_batch), fn_constructor_kwargs={"embed": cfg.embed, "storage": cfg.storage},
        compute=ray.data.ActorPoolStrategy(min_size=cfg.embed.min_actors, max_size=cfg.embed.max_actors),
        num_gpus=cfg.embed.gpus_per_actor or None, num_cpus=cfg.embed.cpus_per_actor)
    ds = ds.map_batches(write_parts, batch_size=None, num_cpus=0.25, fn_kwargs={"run": run})

    commit = ray.remote(num_cpus=0.25)(commit_shard)
    tally: dict[str, int] = {}
    busy: dict[str, float] = {}  # decode + encode seconds per shard
    expected: dict[str, tuple[int, float]] = {}  # shard -> (rows, start time), from the decode task
    inflight: dict[str, ray.ObjectRef] = {}
    committed: set[str] = set()
    progress = Progress("embed", total=None, unit="rows")

    def harvest(block: bool) -> None:
        refs = list(inflight.values())
        ready, _ = ray.wait(refs, num_returns=len(refs) if block else 1, timeout=None if block else 0)
        for shard, ref in list(inflight.items()):
            if ref in ready:
                del inflight[shard]
                marker = ray.get(ref)
                if marker is not None:
                    committed.add(shard)
                    progress.note(f"{len(committed)}/{len(pending)} shards committed")

    for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for shard, rows, total, t0, seconds in zip(out["shard"], out["rows"], out["shard_rows"], out["t0"], out["busy"]):
            shard = str(shard)
            tally[shard] = tally.get(shard, 0) + int(rows)
            busy[shard] = busy.get(shard, 0.0) + float(seconds)
            if shard not in expected:
                expected[shard] = (int(total), float(t0))
                seen = sum(rows for rows, _ in expected.values())  # shards not started yet: their mean
                progress.set_total(seen + (len(pending) - len(expected)) * seen // len(expected))
            progress.update(int(rows))
            if tally[shard] >= expected[shard][0] and shard not in inflight and shard not in committed:
                inflight[shard] = commit.remote(run, shard, source[shard], *expected[shard], model, busy[shard])
        if inflight:
            harvest(block=False)
    while inflight:
        harvest(block=True)
    progress.close()
    for shard in pending:
        if shard not in committed and (shard not in expected or commit_shard(
                run, shard, source[shard], *expected[shard], model, busy.get(shard)) is None):
            raise RuntimeError(f"embed: shard {shard} ({source[shard]}) lost rows: got {tally.get(shard, 0)} of "
                               f"{expected.get(shard, ('?',))[0]}; re-run to redo it")
        remove(run.embedding_parts(shard), run.storage, recursive=True)  # parts a late retry wrote


def status(run: RunDir) -> dict[str, Any]:
    """Committed when every planned shard has its marker."""
    planned = len(yaml.safe_load(run.read_bytes(run.config)).get("shards", {}))
    embedded = run.committed("embeddings")
    return {"done": len(embedded) == planned and planned > 0, "shards": f"{len(embedded)}/{planned}"}


STAGE = Stage("embed", reads=("input shards (input.shards)",),
              commits=("embeddings/SHARD.parquet", "errors/SHARD.parquet", "embeddings/SHARD.done.json"),
              resources="decode tasks of embed.decode_cpus CPU; embed.min_actors..embed.max_actors encoder actors of embed.cpus_per_actor CPU and embed.gpus_per_actor GPU",
              run=lambda ctx: run(ctx.cfg, ctx.run, ctx.shards), status=status)
