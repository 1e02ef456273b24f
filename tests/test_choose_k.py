"""k: auto before training: the silhouette criterion finds planted numbers of clusters among the default
candidates, and the fit records its evidence, keeps k: auto as the model's parameter and reuses the model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scaleclust import methods
from scaleclust.cluster.choose_k import MIN_ROWS_PER_CLUSTER, choose_k, usable
from scaleclust.config import K_CANDIDATES, ConfigError, from_dict
from scaleclust.pipeline import prepare, run_stage
from scaleclust.rundir import RunDir
from scaleclust.stages import fit
from tests.conftest import SharedRun, tiny_config


def planted(k: int, n: int, dim: int, spread: float, seed: int) -> np.ndarray:
    """n rows around k random centres in `dim` dimensions (Gaussian noise of std `spread`), of unequal
    sizes (cluster j holds a share proportional to j + 1), in random order."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim))
    sizes = np.arange(1, k + 1) / np.arange(1, k + 1).sum()
    labels = rng.choice(k, size=n, p=sizes)
    return (centres[labels] + spread * rng.standard_normal((n, dim))).astype(np.float32)


@pytest.mark.parametrize("k", [3, 4, 7, 12, 21])
def test_chooses_the_planted_k_among_the_default_candidates(k: int) -> None:
    x = planted(k, n=2000, dim=96, spread=0.35, seed=k)
    found = choose_k(x, K_CANDIDATES, seed=0)
    assert found["k"] == k, found["values"]
    values = {int(c): v for c, v in found["values"].items()}
    assert sorted(values) == list(K_CANDIDATES) and max(values, key=values.get) == k
    assert found["rows"] == 2000 and "silhouette" in found["criterion"]


def test_candidates_need_rows_and_config_names_the_field() -> None:
    assert usable([3, 10, 50], 300) == [3, 10]  # 50 clusters of 300 rows: fewer than MIN_ROWS_PER_CLUSTER each
    with pytest.raises(ValueError, match="no candidate"):
        choose_k(planted(3, 40, 8, 0.1, 0), [5, 8], seed=0)
    assert 40 // MIN_ROWS_PER_CLUSTER < 5
    with pytest.raises(ConfigError, match="cluster.k_candidates:.*each >= 2"):
        from_dict({"run_dir": "r", "input": {"shards": "s/*.tar"}, "cluster": {"k": "auto", "k_candidates": [1, 4]}})
    cfg = from_dict({"run_dir": "r", "input": {"shards": "s/*.tar"}, "cluster": {"k": "auto", "k_candidates": [5, 8]}})
    with pytest.raises(ConfigError, match="cluster.k_candidates: none fits the 40 sampled rows"):
        methods.resolve_k(cfg, RunDir(cfg.run_dir, cfg.storage), {"00000": {"embedded": 40}})  # before any Ray task


def test_kmeans_fit_chooses_k_records_it_and_reuses_the_model(tmp_path: Path, shared_run: SharedRun,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    shared_run.copy(tmp_path)
    cfg = tiny_config(str(tmp_path / "run"), str(tmp_path / "shards" / "*.tar"),
                      cluster={"k": "auto", "k_candidates": [2, 3, 4, 6]})
    ctx = prepare(cfg)
    meta = run_stage("fit", ctx)
    said = capsys.readouterr().out
    found = meta["k_auto"]
    assert meta["k"] == found["k"] and sorted(int(k) for k in found["values"]) == [2, 3, 4, 6]
    assert meta["params"]["k"] == "auto" and found["rows"] == shared_run.rows
    assert f"fit: k auto chose k={meta['k']} by silhouette" in said
    assert len(methods.read(ctx.run, ctx.run.model("centroids.npy"))) == meta["k"]
    assert fit.run(cfg, RunDir(cfg.run_dir, cfg.storage))["model_id"] == meta["model_id"]  # same config: reused
