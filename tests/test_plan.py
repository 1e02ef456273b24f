"""`scaleclust plan`: shards, rows, memory, disk and GPU-hours before a run starts, with warnings for
settings that cannot fit; nothing is embedded and the run directory is not created."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from scaleclust import plan as planner
from scaleclust.cli import main
from scaleclust.plan import GIB, make_plan
from tests.conftest import tiny_config
from tests.shards import write_synthetic_shards


def test_tiny_config(tmp_path: Path, shards: list[str]) -> None:
    cfg = tiny_config(str(tmp_path / "run"), shards)
    plan = make_plan(cfg, 8 * GIB)
    assert (plan["shards"], plan["rows"], plan["rows_exact"], plan["dim"]) == (3, 36, True, 64)
    assert plan["embed"]["images_per_second"] == planner.MEASURED_RATES[("open_clip", "scaleclust-tiny", "cpu")].per_second
    assert plan["embed"]["gpu_hours"] == 0 and not plan["embed"]["estimate"]
    names = [s["name"] for s in plan["stages"]]
    assert names == ["embed: decode", "embed: encode", "fit (kmeans)", "assign"]  # k-means needs no index
    scan = make_plan(cfg.model_copy(update={"cluster": cfg.cluster.model_copy(update={"method": "scan"})}), 8 * GIB)
    assert [s["name"] for s in scan["stages"]][2:5] == ["index: train", "index: search", "neighbors"]
    encode = plan["stages"][1]
    assert encode["disk_bytes"] >= 36 * 64 * 2  # fp16 embeddings
    assert plan["warnings"] == []
    assert not (tmp_path / "run").exists()


def test_laion_layout_rows_estimated_from_shard_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """img2dataset shards of different lengths, probed by a small read of three of them (cut mid-shard
    here): the row estimate is within 20% of the truth, and says it is an estimate."""
    counts = [40, 90, 25, 70, 55, 110, 30, 80]
    folder = tmp_path / "laion"
    for i, n in enumerate(counts):
        write_synthetic_shards(folder, n_shards=1, per_shard=n, first=i, seed=3)
    (folder / "00000.parquet").write_bytes(b"img2dataset sidecar")  # the glob below leaves these out
    (folder / "00000_stats.json").write_text("{}")
    monkeypatch.setattr(planner, "PROBE_BYTES", 64 << 10)
    cfg = tiny_config(str(tmp_path / "run"), str(folder / "*.tar"))
    plan = make_plan(cfg, 8 * GIB)
    assert plan["shards"] == len(counts) and not plan["rows_exact"]
    assert abs(plan["rows"] - sum(counts)) <= 0.2 * sum(counts), plan["rows"]
    assert "estimated from their sizes" in plan["rows_how"]


def laion_dump(root: Path, rows: int, dim: int = 4) -> None:
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    np.save(root / "img_emb" / "img_emb_0.npy", np.ones((rows, dim), np.float16))
    pq.write_table(pa.table({"key": [str(i) for i in range(rows)]}), root / "metadata" / "metadata_0.parquet")


def laion_job(tmp_path: Path, rows: int, **sections: dict) -> Path:
    """A config over a `rows`-row LAION-layout dump with the tiny model, plus `sections`."""
    laion_dump(tmp_path / "dump", rows)
    config = tmp_path / "laion.yaml"
    config.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"),
        "input": {"format": "laion_embeddings", "shards": str(tmp_path / "dump")},
        "embed": {"model": {"arch": "scaleclust-tiny"}}, **sections}))
    return config


def test_cli_warns_when_mlc_assigner_or_index_cannot_fit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """LAION's job settings on a 100,000-row dump: assign_sample=100,000 is spectral-clustered on a
    sparse kNN graph within the task's memory request, a request below its estimate is named, and a
    tiny index budget fits no index: it is named."""
    config = laion_job(tmp_path, 100_000, cluster={"method": "mlc", "k": 10, "assign_sample": 100_000},
                       index={"memory_budget_gb": 0.0001})
    assert main(["plan", str(config), "--memory-gb", "16"]) == 0
    out = capsys.readouterr().out
    assert "rows    100,000 (1 part(s) from .npy headers)" in out
    assert "spectral clustering of 100,000 rows, sparse kNN membership" in out
    assert "warning: cluster.assign_memory_gb" not in out
    assert "warning: index: index.memory_budget" in out
    assert main(["plan", str(config), "--set", "cluster.assign_memory_gb=0.05"]) == 0
    assert "warning: cluster.assign_memory_gb: spectral clustering 100,000 rows" in capsys.readouterr().out
    assert main(["plan", str(config), "--memory-gb", "16", "--set", "cluster.assign_sample=1000",
                 "--set", "index.memory_budget_gb=1"]) == 0
    assert "warning" not in capsys.readouterr().out
    assert main(["plan", str(config), "--set", "cluster.mlc.lr=fast"]) == 2
    assert not (tmp_path / "run").exists()


def test_s3_shards_listed_and_probed(tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards on a real S3 server: one listing gives their sizes, ranged reads of three give bytes per
    sample, and the plan's row estimate is within 20%."""
    import boto3

    counts = [30, 60, 45, 90]
    local = tmp_path / "shards"
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="plan")
    for i, n in enumerate(counts):
        path = write_synthetic_shards(local, n_shards=1, per_shard=n, first=i, seed=5)[0]
        client.upload_file(path, "plan", f"laion/{Path(path).name}")
    monkeypatch.setattr(planner, "PROBE_BYTES", 64 << 10)
    cfg = tiny_config("s3://plan/run", "s3://plan/laion/*.tar", storage={"endpoint_url": s3_endpoint})
    plan = make_plan(cfg, 8 * GIB)
    assert plan["shards"] == len(counts) and not plan["rows_exact"]
    assert abs(plan["rows"] - sum(counts)) <= 0.2 * sum(counts), plan["rows"]
    assert "Contents" not in client.list_objects_v2(Bucket="plan", Prefix="run/")


def test_shards_that_are_not_tars_are_named(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for i in range(2):
        (tmp_path / "in" / f"{i:05d}.tar").write_bytes(b"not a tar at all" * 100)
    cfg = tiny_config(str(tmp_path / "run"), str(tmp_path / "in" / "*.tar"))
    with pytest.raises(ValueError, match=r"no sample found .*00000\.tar.*00001\.tar; are these WebDataset tars"):
        make_plan(cfg, 8 * GIB)


def test_reranking_copies_counted_on_disk(tmp_path: Path) -> None:
    """IVF-PQ with re-ranking keeps an fp16 copy of every vector on disk: the plan's index disk grows by
    rows x 2d bytes with refine_factor on, and not at all with it off."""
    from scaleclust.config import load
    from scaleclust.plan import make_plan

    config = laion_job(tmp_path, 20_000, index={"kind": "ivf_pq", "pq_m": 2})

    def index_disk(refine: int) -> int:
        plan = make_plan(load(str(config), [f"index.refine_factor={refine}"]), 16 << 30)
        return next(s["disk_bytes"] for s in plan["stages"] if s["name"] == "index: train")

    assert index_disk(20) - index_disk(0) == 20_000 * 2 * 4


def test_a_job_priced_on_a_gpu_cluster(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--rows sizes the job without its input; --gpu prices each stage: the embed stage at the measured
    images/s per GPU over every GPU; twice the nodes, half the wall time and the same GPU-hours (but the
    fit, whose Train workers are fixed)."""
    from scaleclust.price import GpuCluster, RATES, price

    cfg = tiny_config(str(tmp_path / "run"), str(tmp_path / "none" / "*.tar"), embed={
        "model": {"arch": "ViT-B-32"}, "gpus_per_actor": 1, "precision": "bf16"}, cluster={"method": "scan", "k": 100},
        index={"kind": "ivf_flat"})
    plan = make_plan(cfg, rows_given=10_000_000)
    assert plan["rows"] == 10_000_000 and plan["shards"] == 1000 and plan["dim"] == 512
    small, large = (price(cfg, plan, GpuCluster("H200", 8, nodes)) for nodes in (2, 4))
    stages = {line["stage"]: line for line in small["stages"]}
    assert list(stages) == ["embed", "index", "neighbors", "fit", "assign"]
    assert stages["embed"]["wall_hours"] == pytest.approx(10_000_000 / (3000 * 16) / 3600)
    assert stages["embed"]["measured"] and not stages["fit"]["measured"] and stages["assign"]["measured"]
    for a, b in zip(small["stages"], large["stages"]):  # the fit has its own Train workers: idle GPUs cost
        if a["stage"] == "fit":
            assert b["wall_hours"] == pytest.approx(a["wall_hours"]) and b["gpu_hours"] == pytest.approx(2 * a["gpu_hours"])
        else:
            assert b["wall_hours"] == pytest.approx(a["wall_hours"] / 2) and b["gpu_hours"] == pytest.approx(a["gpu_hours"])
    fit_steps = cfg.cluster.scan.steps + cfg.cluster.scan.self_label_steps
    assert stages["fit"]["wall_hours"] == pytest.approx(fit_steps / RATES["fit"].per_second / 3600)
    h100 = {line["stage"]: line for line in price(cfg, plan, GpuCluster("H100", 8, 2))["stages"]}
    assert not h100["embed"]["measured"] and "assumed the same on H100" in h100["embed"]["rate"]
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["plan", str(tmp_path / "job.yaml"), "--rows", "1e7", "--gpu", "H200", "--nodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "on 2 node(s) x 8 H200 (16 GPUs" in out and out.splitlines()[-1].startswith("total")
    assert main(["plan", str(tmp_path / "job.yaml"), "--rows", "1e7", "--gpu", "H200",
                 "--set", "embed.gpus_per_actor=0"]) == 2
    assert "embed.gpus_per_actor is 0" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["scan", "spice", "sic", "scl"])
def test_every_method_trained_on_neighbours_counts_them_in_its_workers_memory(method: str) -> None:
    from scaleclust.config import from_dict

    cluster = {"method": method, "sample_size": 1000, "train": {"workers": 2}, method: {"neighbors": 7}}
    cfg = from_dict({"run_dir": "run", "input": {"shards": "shards/*.tar"}, "cluster": cluster})
    rows = planner.Rows(total=5000, exact=True, how="counted", largest_shard_rows=1000)
    [stage] = planner.fit_needs(cfg, rows, planner.Encoder(dim=64), 5, [])
    assert stage.memory_bytes == 500 * (64 * 4 + 7 * 64 * 2) and "with its neighbours" in stage.what
