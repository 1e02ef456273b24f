"""Config: typed, strict, overridable, and every error names the field and the fix."""
from __future__ import annotations

from pathlib import Path

import pytest

from scaleclust.config import ConfigError, load

GOOD = """
run_dir: runs/x
input:
  shards: data/{00000..00003}.tar
cluster:
  k: 7
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_loads_defaults_and_overrides(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, GOOD), ["cluster.k=20", "embed.model.arch=ViT-L-14", "ray.address=null"])
    assert cfg.cluster.k == 20
    assert cfg.embed.model.arch == "ViT-L-14"
    assert cfg.ray.address is None
    assert cfg.input.shards == [str(Path("data/{00000..00003}.tar").resolve())]
    assert Path(cfg.run_dir).is_absolute()


@pytest.mark.parametrize("text, field, hint", [
    (GOOD + "  kk: 3\n", "cluster.kk", "Did you mean 'k'?"),
    (GOOD.replace("k: 7", "k: many"), "cluster.k", "valid integer"),
    ("run_dir: x\n", "input", "required"),
    (GOOD + "embed:\n  batch_size: 0\n", "embed.batch_size", "greater than 0"),
    (GOOD + "bogus_section: {}\n", "bogus_section", "unknown field"),
    (GOOD + "embed:\n  min_actors: 8\n  max_actors: 4\n", "embed", "min_actors: 8 exceeds max_actors 4"),
])
def test_errors_name_the_field(tmp_path: Path, text: str, field: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text))
    assert f"{field}:" in str(err.value)
    assert hint in str(err.value)


def test_k_auto_is_valid_for_every_method(tmp_path: Path) -> None:
    from scaleclust import methods
    from scaleclust.config import K_CANDIDATES

    assert load(write(tmp_path, GOOD.replace("k: 7", "k: auto"))).cluster.method == "scan"  # the default method
    for method in methods.REGISTRY:
        cfg = load(write(tmp_path, GOOD.replace("k: 7", f"k: auto\n  method: {method}")))
        assert cfg.cluster.k == "auto" and cfg.cluster.largest_k() == max(K_CANDIDATES)


def test_bad_override_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected FIELD=VALUE"):
        load(write(tmp_path, GOOD), ["cluster.k"])
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.yaml")


@pytest.mark.parametrize("job", sorted(p.name for p in (Path(__file__).parents[1] / "jobs").glob("*.yaml")))
def test_shipped_job_configs_are_valid(job: str) -> None:
    from scaleclust.stages import fit

    cfg = load(Path(__file__).parents[1] / "jobs" / job)
    fit.check(cfg)  # method parameters too (cluster.mlc is checked against MLCConfig)
    assert cfg.input.shards and cfg.run_dir
