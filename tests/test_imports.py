"""What a Ray worker pays to start: importing the package's stages and nightly update must not load the
libraries that only a few functions use (scikit-learn, torchvision, scipy.optimize, matplotlib); each is
imported where it is used (scaleclust/cluster/__init__.py). Every task and actor worker imports these
modules, so one top-level import of them costs the suite and a production run a second per worker. The
config and the stages that never run a model (summary, report, sampling, commits) must not load torch
either: the methods' config sections live apart from their torch code (scaleclust/cluster/settings.py)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("sklearn", "torchvision", "scipy.optimize", "matplotlib")
MODEL_FREE = ("scaleclust.config", "scaleclust.stages.summary", "scaleclust.stages.report", "scaleclust.sample",
              "scaleclust.tables", "scaleclust.verify")


def loaded(modules: tuple[str, ...], libraries: tuple[str, ...]) -> list[str]:
    """Which of `libraries` importing `modules` loads, in a fresh interpreter."""
    code = (f"import json, sys; import {', '.join(modules)}; "
            f"print(json.dumps([m for m in {libraries!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.subprocess
def test_the_stages_import_without_the_libraries_few_functions_use() -> None:
    assert loaded(("scaleclust.update", "scaleclust.pipeline", "scaleclust.methods"), HEAVY) == []


@pytest.mark.subprocess
def test_the_config_and_the_stages_without_a_model_import_without_torch() -> None:
    assert loaded(MODEL_FREE, ("torch",)) == []
