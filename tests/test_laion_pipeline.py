"""A LAION embedding dump goes through the whole pipeline without the encoder, and comes back out in
the same layout with its clusters."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from scaleclust.pipeline import run_all
from scaleclust.verify import verify
from tests.test_laion import BAD, ROWS, write_dump

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.subprocess, pytest.mark.timeout(300)]


def test_laion_dump_through_the_pipeline(tmp_path: Path, make_config) -> None:
    write_dump(tmp_path / "dump", np.float16)
    cfg = make_config(str(tmp_path / "run"), str(tmp_path / "dump"), input={"format": "laion_embeddings"})
    metrics = run_all(cfg)
    assert metrics["counts"]["embedded"] == sum(ROWS) - len(BAD)
    assert metrics["counts"]["errors"] == len(BAD)
    assert metrics["counts"]["assigned"] == sum(ROWS) - len(BAD)
    assert verify(cfg.run_dir, deep=True) == []

    out = tmp_path / "export"
    done = subprocess.run([sys.executable, "-m", "scaleclust.cli", "export", cfg.run_dir, str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    for n, rows in enumerate(ROWS):
        meta = pq.read_table(out / "metadata" / f"metadata_{n}.parquet")
        bad = sum(1 for part, _ in BAD if part == n)
        assert len(meta) == rows - bad == len(np.load(out / "img_emb" / f"img_emb_{n}.npy"))
        assert meta["cluster"].null_count == 0 and set(meta["cluster"].to_pylist()) <= {0, 1, 2}
