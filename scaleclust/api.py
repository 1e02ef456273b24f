"""The Python API, for notebooks and other programs: `scaleclust.run(config)` runs the pipeline as
`scaleclust run` does, and `scaleclust.open(run_dir)` reads a finished run directory (local or any fsspec
URL, e.g. s3://) through the same storage layer as the stages. The CLI's read commands (info, eval,
search, versions) are this module's Run, printed.

Reading takes no lease: a run can be read while another process writes it (each file a reader sees is
committed). Only `eval` and `search` start Ray (a local one, or the run's configured cluster for search).
"""
from __future__ import annotations

import copy
import os
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scaleclust.config import Config, ConfigError, StorageConfig, from_dict, load
from scaleclust.failures import READ_ERRORS, SETUP_ERRORS
from scaleclust.rundir import RunDir
from scaleclust.stage import Context, recorded
from scaleclust.storage import exists

__all__ = ["Run", "open", "run"]


def run(config: str | os.PathLike | dict[str, Any] | Config, overrides: list[str] | None = None) -> Run:
    """Run every stage the config needs, as `scaleclust run CONFIG --set ...` does (holding the run
    directory's lease while it writes), and return the finished run. `config` is a YAML file's path, a
    dict of the same fields, or a Config; `overrides` are `--set` strings (FIELD=VALUE)."""
    from scaleclust.pipeline import run_all

    cfg = as_config(config, overrides or [])
    run_all(cfg)
    return open(cfg.run_dir, cfg.storage)


def as_config(config: str | os.PathLike | dict[str, Any] | Config, overrides: list[str]) -> Config:
    """A Config from a path, a dict or a Config, with `--set` overrides applied."""
    if isinstance(config, (str, os.PathLike)):
        return load(config, overrides)
    if isinstance(config, Config):
        data = config.model_dump(mode="json")
    elif isinstance(config, dict):
        data = config
    else:
        raise TypeError(f"config: give a YAML path, a dict or a Config, not {type(config).__name__}")
    if overrides:
        from scaleclust.config import apply_override

        data = copy.deepcopy(data)
        for assignment in overrides:
            apply_override(data, assignment)
    return from_dict(data, "config" if not overrides else "config with overrides")


def open(run_dir: str | os.PathLike, storage: StorageConfig | dict[str, Any] | None = None) -> Run:
    """A finished (or partly written) run directory, to read. `storage`: the settings to reach it
    (StorageConfig or a dict of its fields, e.g. {'endpoint_url': ...}); default: those it was run with."""
    url = str(run_dir).rstrip("/")
    given = StorageConfig(**storage) if isinstance(storage, dict) else storage
    reachable(url, given)
    return Run(recorded(url, given))


def reachable(url: str, storage: StorageConfig | None) -> None:
    """Raise a one-line ConfigError naming `url` and the endpoint option when it cannot be reached."""
    try:
        exists(url, storage or StorageConfig())
    except READ_ERRORS as err:  # an unreachable endpoint: name the run and the fix
        if isinstance(err, SETUP_ERRORS):  # missing credentials: the CLI names them
            raise
        raise ConfigError(f"{url}: cannot reach the run directory ({type(err).__name__}: {err}); for an "
                          "S3-compatible server pass --endpoint-url URL (or set AWS_ENDPOINT_URL)") from None


class Run:
    """One run directory, read-only: its clusters, members, assignments (shard by shard), nearest-key
    search, versions and scores against a label column."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.cfg: Config = ctx.cfg
        self.dir: RunDir = ctx.run
        self.url: str = ctx.run.url

    def __repr__(self) -> str:
        return f"scaleclust.Run({self.url!r})"

    def info(self) -> dict[str, Any]:
        """What `scaleclust info` prints: each stage's status, rows, skipped rows by type, encoder, model."""
        from scaleclust.pipeline import status
        from scaleclust.runinfo import describe

        described = describe(self.dir)
        return {"run_dir": described.pop("run_dir"), "stages": status(self.dir), **described}

    def clusters(self, pandas: bool = False) -> Any:
        """clusters.parquet, largest cluster first: cluster, size, name, name_id, name_score, top_names,
        exemplar_keys, mean_confidence, centroid. A pyarrow Table, or a pandas DataFrame with pandas=True."""
        if not self.dir.exists(self.dir.clusters):
            raise FileNotFoundError(f"{self.dir.clusters}: no clusters yet; run `scaleclust run` on its config")
        table = self.dir.read_table(self.dir.clusters).sort_by([("size", "descending"), ("cluster", "ascending")])
        return table.to_pandas() if pandas else table

    def assignments(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """Each assigned shard's rows (key, cluster, confidence, ...; or `columns`), one table per shard in
        shard order, with a `shard` column: the whole run is never one table."""
        markers = self.dir.committed("assignments")
        if not markers:
            raise FileNotFoundError(f"{self.url}: no assignments committed; run the assign stage")
        for shard, marker in sorted(markers.items()):
            table = self.dir.read_table(self.dir.assigned(shard, marker), columns)
            yield table.append_column("shard", pa.array([shard] * table.num_rows, pa.string()))

    def members(self, cluster_id: int, limit: int = 20) -> pa.Table:
        """The `limit` most confident rows assigned to `cluster_id` (key, confidence, shard), most
        confident first; read shard by shard, holding one shard and `limit` rows at a time."""
        if limit < 1:
            raise ValueError(f"limit: {limit}; give at least 1")
        known = self.clusters()["cluster"].to_pylist()
        if cluster_id not in known:
            raise LookupError(f"cluster {cluster_id}: not a cluster of {self.url} (it has {len(known)}: "
                              f"{min(known)}..{max(known)})")
        best: pa.Table | None = None
        for table in self.assignments(["key", "cluster", "confidence"]):
            rows = table.filter(pc.equal(table["cluster"], cluster_id)).select(["key", "confidence", "shard"])
            best = rows if best is None else pa.concat_tables([best, rows])
            best = best.sort_by([("confidence", "descending"), ("key", "ascending")]).slice(0, limit)
        return best

    def search(self, text: str | None = None, image: str | os.PathLike | bytes | None = None,
               key: str | None = None, k: int = 10, nprobe: int | str | None = None) -> pa.Table:
        """The k nearest keys (rank, key, cosine) of one query over the run's index: a caption through the
        CLIP text tower of the run's model, an image (a path or URL, or its bytes) through its image encoder,
        or a key of the run (its stored embedding). Starts Ray for the index's search actors."""
        from scaleclust.index.actors import search_run
        from scaleclust.ray_setup import ensure_ray

        if sum(q is not None for q in (text, image, key)) != 1:
            raise ValueError("search: give exactly one of text, image or key")
        query = self._query(text, image, key)
        ensure_ray(self.cfg)
        keys, sims = search_run(self.dir, query, k, nprobe or self.cfg.index.nprobe,
                                self.cfg.index.shards_per_searcher)[0]
        return pa.table({"rank": pa.array(range(1, len(keys) + 1), pa.int32()), "key": pa.array(keys, pa.string()),
                         "cosine": pa.array(np.asarray(sims, np.float32))})

    def _query(self, text: str | None, image: str | os.PathLike | bytes | None, key: str | None) -> np.ndarray:
        """The query as one embedding (1, d)."""
        from scaleclust.index.manifest import load_manifest
        from scaleclust.tables import embedding_matrix

        if key is not None:
            for shard in sorted(load_manifest(self.dir)["shards"]):
                table = self.dir.read_table(self.dir.embeddings(shard), ["key", "embedding"])
                hit = table.filter(pc.equal(table["key"], key))
                if hit.num_rows:
                    return embedding_matrix(hit["embedding"])[:1]
            raise ConfigError(f"--key {key!r}: no such key in the index of {self.url}")
        from scaleclust.embed.actor import EncodeBatch

        encoder = EncodeBatch(self.cfg.embed, self.cfg.storage)
        if text is not None:
            if encoder.encoder.encode_text is None:
                model = self.cfg.embed.model
                raise ConfigError(f"--text: the run's model {model.kind}:{model.arch} has no text tower; search "
                                  f"by --key or --image, or use an open_clip (CLIP) model")
            import torch

            with torch.inference_mode():
                return encoder.encoder.encode_text([text]).float().cpu().numpy()
        from scaleclust.sources.decode import decode_image
        from scaleclust.storage import read_bytes

        data = image if isinstance(image, bytes) else read_bytes(os.fspath(image), self.cfg.storage)
        prep = encoder.encoder.preprocess
        pixels, _, _ = decode_image(data, prep.image_size, prep.crop_pct)
        return encoder.embed(pixels[None].copy()).astype(np.float32)

    def versions(self) -> list[dict[str, Any]]:
        """The manifests of the run's complete versions (nightly updates), oldest first, each with
        `latest` (whether versions/LATEST.json names it) and `path` (its folder); empty before the first
        update."""
        from scaleclust.versions import Versions

        history = Versions(self.dir)
        latest = (history.latest() or {}).get("version")
        return [{**m, "latest": m["version"] == latest, "path": history.path(m["version"])}
                for m in history.complete()]

    def eval(self, label_column: str = "label") -> dict[str, Any]:
        """ACC, NMI, ARI (and many-to-one ACC) of the committed assignments against `label_column` of the
        embeddings, in one pass over the shards on a local Ray."""
        import ray

        from scaleclust.cluster.metrics import scores
        from scaleclust.stages.summary import reduce_run

        if self.dir.marker(self.dir.model("model.json")) is None:
            raise ConfigError(f"{self.url}: no committed model to evaluate")
        if not ray.is_initialized():
            ray.init(address="local", include_dashboard=False, num_cpus=4)
        return {"column": label_column, **scores(reduce_run(self.dir, 1, label_column).contingency.matrix())}
