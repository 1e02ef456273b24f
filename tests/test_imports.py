"""What a Ray worker pays to start: importing the package's stages and nightly update must not load the
libraries that only a few functions use (scikit-learn, torchvision, scipy.optimize, matplotlib); each is
imported where it is used (scaleclust/cluster/__init__.py). Every task and actor worker imports these
modules, so one top-level import of them costs the suite and a production run a second per worker."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("sklearn", "torchvision", "scipy.optimize", "matplotlib")


@pytest.mark.subprocess
def test_the_stages_import_without_the_libraries_few_functions_use() -> None:
    code = ("import json, sys; import scaleclust.update, scaleclust.pipeline, scaleclust.methods; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []
