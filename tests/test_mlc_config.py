"""`cluster.mlc` is typed: a bad value fails at the command line with exit 2 before Ray starts, naming
the field; the typed section is the config the method is built with; operational Train settings are not
part of the fit's identity."""
from __future__ import annotations

from pathlib import Path

import pytest

from scaleclust.cluster.settings import MLCConfig
from scaleclust.config import ClusterConfig, ConfigError, from_dict
from scaleclust.methods import build_mlc, fit_params
from tests.conftest import rejected_before_ray


def test_the_typed_section_builds_the_method() -> None:
    built = build_mlc(ClusterConfig(method="mlc", mlc={"hidden": 64, "lr": 0.01})).config
    assert built == MLCConfig(hidden=64, lr=0.01)


@pytest.mark.parametrize("field, value, hint", [
    ("lr", "fast", "valid number"),
    ("steps", -5, "greater than 0"),
    ("batch_size", 0, "greater than or equal to 2"),
])
@pytest.mark.subprocess
@pytest.mark.timeout(60)
def test_bad_mlc_field_fails_before_ray(tmp_path: Path, field: str, value, hint: str) -> None:
    data = {"run_dir": str(tmp_path / "run"), "input": {"shards": str(tmp_path / "*.tar")},
            "cluster": {"method": "mlc", "k": 3, "mlc": {field: value}}}
    stderr = rejected_before_ray(tmp_path, data, timeout=50)
    naming = [line for line in stderr.splitlines() if f"cluster.mlc.{field}" in line]
    assert len(naming) == 1 and hint in naming[0], stderr


@pytest.mark.parametrize("field, value, hint", [
    ("momentum", 1.5, "less than 1"),
    ("eta", 0, "greater than 0"),
    ("hiden", 64, "Did you mean 'hidden'"),
    ("warmup_steps", 300, "leaves no step of clustering"),
])
def test_more_bad_mlc_fields_name_the_field(field: str, value, hint: str) -> None:
    data = {"run_dir": "run", "input": {"shards": "x.tar"}, "cluster": {"method": "mlc", "mlc": {field: value}}}
    with pytest.raises(ConfigError) as err:
        from_dict(data)
    naming = [line for line in str(err.value).splitlines() if f"cluster.mlc.{field}" in line]
    assert len(naming) == 1 and hint in naming[0], str(err.value)


def test_identity_ignores_operational_train_settings() -> None:
    base = ClusterConfig(method="mlc")
    knobs = ClusterConfig(method="mlc", train={"checkpoint_every": 7, "max_failures": 9, "cpus_per_worker": 3})
    assert fit_params(knobs) == fit_params(base)
    for changed in ({"train": {"workers": 3}}, {"mlc": {"steps": 301}}, {"seed": 1}):
        assert fit_params(ClusterConfig(method="mlc", **changed)) != fit_params(base), changed
