"""docs/architecture.md's stage table is the registry's (they cannot drift apart), and the import
contract of pyproject.toml (layers that point down, independent stages, cluster/ without Ray or storage)
holds."""
from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from scaleclust.pipeline import STAGES

ROOT = Path(__file__).parent.parent
BEGIN = "<!-- stage table: checked against scaleclust.pipeline.STAGES by tests/test_architecture.py -->"
END = "<!-- end of the stage table -->"


def registry_rows() -> list[str]:
    """One table row per registered stage, in order, as docs/architecture.md must show it."""
    rows = []
    for stage in STAGES:
        module = inspect.getmodule(stage.status).__name__.replace(".", "/") + ".py"
        rows.append(f"| {stage.name} | `{module}` | {', '.join(stage.reads)} | {', '.join(stage.commits)} | "
                    f"{stage.resources} | {stage.when.__name__} |")
    return rows


def test_the_stage_table_is_the_registry() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = text.split(BEGIN, 1)[1].split(END, 1)[0].strip().splitlines()[2:]  # below the header rows
    assert table == registry_rows(), "docs/architecture.md's stage table differs from scaleclust.pipeline.STAGES"


def test_every_stage_module_registers_one_stage_with_its_own_command() -> None:
    modules = sorted(p.stem for p in (ROOT / "scaleclust" / "stages").glob("*.py") if p.stem != "__init__")
    assert sorted(stage.name for stage in STAGES) == modules
    from scaleclust.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001 (argparse keeps them there)
    assert all(stage.name in commands for stage in STAGES)


@pytest.mark.subprocess
def test_the_import_contract_holds() -> None:
    linter = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(linter)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
