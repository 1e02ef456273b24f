"""The config reference (docs/config.md), generated from the pydantic models of scaleclust.config.

One row per field with its default, its description and its constraints, one heading row per section
with the section's docstring. docs/config.md holds the output between BEGIN and END; tests/test_config_doc.py
compares the two, so the reference cannot drift from the models.

    python -m scaleclust.config_doc                         print the table
    python -m scaleclust.config_doc --write                 replace the table in docs/config.md
    python -m scaleclust.config_doc --write docs/config.md  the same, the file named
"""
from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Iterator

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from scaleclust.config import Config

TARGET = "docs/config.md"  # relative to the repository root, where the command is run
BEGIN = f"<!-- config reference: generated from scaleclust/config.py by `python -m scaleclust.config_doc --write {TARGET}` -->"
END = "<!-- end of the generated config reference -->"
BOUNDS = ((annotated_types.Gt, "gt", "> {}"), (annotated_types.Ge, "ge", ">= {}"),
          (annotated_types.Lt, "lt", "< {}"), (annotated_types.Le, "le", "<= {}"))


def section_model(info: FieldInfo) -> type[BaseModel] | None:
    """The config section a field holds, if it is one (a sub-model, not a value)."""
    kind = info.annotation
    return kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None


def rows(model: type[BaseModel] = Config, prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """(field, default, meaning) for every field under `model`; a section first yields its heading row."""
    doc = model.__dict__.get("__doc__")
    if prefix and doc:
        yield f"**{prefix.rstrip('.')}**", "", " ".join(doc.split())
    sections = []
    for name, info in model.model_fields.items():
        sub = section_model(info)
        if sub is not None:
            sections.append((f"{prefix}{name}.", sub))
            continue
        yield f"`{prefix}{name}`", default(info), meaning(info)
    for sub_prefix, sub in sections:
        yield from rows(sub, sub_prefix)


def default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
    return show(value)


def show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    if value == "":
        return "empty"
    if isinstance(value, list):
        return ", ".join(show(v) for v in value) if value else "[]"
    return f"`{value}`" if isinstance(value, str) else str(value)


def meaning(info: FieldInfo) -> str:
    """The description, then what values are allowed: choices of a Literal, numeric bounds."""
    parts = [" ".join((info.description or "").split())]
    choices = [repr(c).strip("'") for c in literal_choices(info.annotation)]
    if choices:
        parts.append("one of " + ", ".join(f"`{c}`" for c in choices))
    bounds = [text.format(getattr(m, attr)) for m in info.metadata for kind, attr, text in BOUNDS if isinstance(m, kind)]
    if bounds:
        parts.append(", ".join(bounds))
    return "; ".join(p for p in parts if p).replace("|", "\\|")


def literal_choices(annotation: Any) -> list[Any]:
    """The values a Literal (or an optional one) allows; [] for other types, whose description says."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return literal_choices(args[0]) if len(args) == 1 else []
    return []


def table() -> str:
    lines = ["| field | default | meaning |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {text} |" for name, value, text in rows()]
    return "\n".join(lines)


def with_table(text: str) -> str:
    """`text` with the lines between BEGIN and END replaced by the current table."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"the file has no generated config reference: add the lines\n{BEGIN}\n{END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scaleclust.config_doc", description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="FILE", nargs="?", const=TARGET,
                        help=f"replace the generated table in FILE (default {TARGET})")
    args = parser.parse_args(argv)
    if not args.write:
        print(table())
        return 0
    with open(args.write, encoding="utf-8") as handle:
        text = handle.read()
    with open(args.write, "w", encoding="utf-8") as handle:
        handle.write(with_table(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
