"""benchmarks/embed_gpu.py runs on the CPU with the tiny model: every side embeds every photo and the
ratios table is printed (a smoke test of the script; its figures are not checked, being timings)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.usefixtures("ray_local")
@pytest.mark.timeout(300)
def test_embed_gpu_benchmark_runs_on_cpu(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import embed_gpu
        from _embed_bench import write_photo_shards
    finally:
        sys.path.remove(str(BENCHMARKS))
    shards = write_photo_shards(tmp_path / "shards", 2, 12)
    args = argparse.Namespace(device="cpu", batch=8, precision="fp32", set=["embed.cpus_per_actor=0.5"],
                              ray_cpus=None, repeats=1, workers=1, ceiling_seconds=0.2)
    out = embed_gpu.bench("tiny", shards, tmp_path, args)
    assert out["ceiling"]["images_per_s"] > 0
    assert out["loader"][0]["rows"] == 24 and out["stage"][0]["rows"] == 24
    lines = embed_gpu.table({"tiny": out}).splitlines()
    assert len(lines) == 2 and lines[1].startswith("tiny") and "stage/loader" in lines[0]
