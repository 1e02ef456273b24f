"""A small committed run directory written with the project's own writers, without Ray or an encoder:
for tests of commands that only read a run (verify)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from scaleclust.tables import embedding_array, write_commit
from scaleclust.pipeline import prepare
from scaleclust.rundir import assignments_file
from scaleclust.sources import describe, shard_keys
from tests.conftest import tiny_config
from tests.shards import write_synthetic_shards


def committed_run(folder: Path, n_shards: int = 2, per_shard: int = 4) -> str:
    """Shards under folder/shards, a run at folder/run with every key embedded and assigned once."""
    write_synthetic_shards(folder / "shards", n_shards, per_shard)
    cfg = tiny_config(str(folder / "run"), str(folder / "shards" / "*.tar"))
    ctx = prepare(cfg)
    run, shards = ctx.run, ctx.shards
    rng = np.random.default_rng(0)
    for name, spec in shards.items():
        keys = shard_keys(name, spec, cfg.input, cfg.storage)
        embedded = pa.table({"key": pa.array(keys, pa.string()),
                             "embedding": embedding_array(rng.standard_normal((len(keys), 8)))})
        write_commit(run, name, describe(spec), embedded, pa.table({"key": pa.array([], pa.string()),
                                                                     "error": pa.array([], pa.string())}),
                     "embed", time.time(), "test")
        run.write_table(run.assignments(name, "m0", "c0"), pa.table({"key": pa.array(keys, pa.string()),
                                                                     "cluster": pa.array([0] * len(keys), pa.int32())}))
        run.write_marker(run.assignments_marker(name), {"shard": name, "rows": len(keys),
                                                        "file": assignments_file(name, "m0", "c0")})
    return cfg.run_dir
