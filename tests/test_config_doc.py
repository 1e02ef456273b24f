"""The config reference, docs/config.md, is generated from the pydantic models: it fails here when they differ."""
from __future__ import annotations

from pathlib import Path

import pytest

from scaleclust.config import Config
from scaleclust.config_doc import BEGIN, END, TARGET, main, rows, table, with_table

REPO = Path(__file__).parent.parent
REFERENCE = REPO / TARGET


def test_docs_config_holds_the_generated_reference() -> None:
    assert TARGET == "docs/config.md"
    text = REFERENCE.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, f"{TARGET} lost its BEGIN/END markers"
    generated = text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")
    assert generated == table(), f"{TARGET}'s config reference differs from scaleclust/config.py: run " \
                                 f"`python -m scaleclust.config_doc --write {TARGET}`"
    assert BEGIN not in (REPO / "README.md").read_text(encoding="utf-8"), "the reference lives in docs/config.md only"


def test_every_field_is_described_with_its_default_and_bounds() -> None:
    found = {name.strip("`"): (default, meaning) for name, default, meaning in rows() if name.startswith("`")}
    undescribed = [name for name, (_, meaning) in found.items() if not meaning]
    assert undescribed == [], f"add a Field(description=...) in scaleclust/config.py for {undescribed}"
    assert found["cluster.mlc.momentum"] == ("0.9", "SGD momentum; >= 0, < 1")
    assert found["run_dir"][0] == "required" and found["index.queries"][0] == "100,000"
    assert found["storage.retry_mode"][1].endswith("one of `adaptive`, `standard`")
    assert found["input.image_extensions"][0] == "`jpg`, `jpeg`, `png`, `webp`"
    sections = {name for name, _, _ in rows() if name.startswith("**")}
    assert "**cluster.mlc**" in sections
    leaves = {f"{section}.{name}" for section, info in Config.model_fields.items()
              for name in getattr(info.annotation, "model_fields", {})}
    assert {n for n in leaves if "." in n and n.split(".")[0] in ("storage", "index", "update")} <= set(found)


def test_write_replaces_only_the_marked_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / "page.md"
    page.write_text(f"# title\n\nbefore\n{BEGIN}\n| stale |\n{END}\nafter\n", encoding="utf-8")
    assert main(["--write", str(page)]) == 0
    assert page.read_text(encoding="utf-8") == f"# title\n\nbefore\n{BEGIN}\n{table()}\n{END}\nafter\n"
    # --write without a file writes docs/config.md, relative to the working directory (the repository root)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / TARGET).write_text(f"intro\n{BEGIN}\n{END}\n", encoding="utf-8")
    assert main(["--write"]) == 0
    assert (tmp_path / TARGET).read_text(encoding="utf-8") == f"intro\n{BEGIN}\n{table()}\n{END}\n"
    with pytest.raises(ValueError, match="no generated config reference"):
        with_table("# a page without markers\n")
