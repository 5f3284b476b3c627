"""The JSON documents cnntools writes, declared once: the contract scripts can rely on.

Every document carries `"schema": "cnntools.NAME/1"` (output.schema_id). Each schema here
lists its fields as (path, type, meaning): a path is dotted, `[]` stands for the items of a
list and `*` for a key that is data (a class name, a split); a path ending in `?` may be
absent. `rows` names the list whose items are the command's table and CSV rows: their
columns are those items' keys (nested objects flattened with dots, e.g. `logits.min`).

The declarations live in this package's modules, one per command group (data, calc,
training, checkpoints, evaluation, interpret); this module holds the notation, the checker
and the pages. `python -m cnntools.cli.docs` renders one page and one JSON Schema file (json_schema.py) per
schema into docs/schemas/ and
the tests check every command's real output against its declaration (`problems`), so the
pages cannot drift from what the commands print. A change that removes or renames a field, or
changes its type, needs a new version number; adding a field does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cnntools.schemas import calc, checkpoints, data, evaluation, interpret, system, training

TYPES = {
    "integer": lambda v: type(v) is int,
    "number": lambda v: type(v) in (int, float),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


@dataclass(frozen=True)
class Schema:
    """One kind of JSON document: who writes it, its fields, and which list is its table."""

    name: str
    command: str
    summary: str
    fields: tuple[tuple[str, str, str], ...]
    rows: str | None = None

    @property
    def id(self) -> str:
        from cnntools.output.emitter import schema_id

        return schema_id(self.name)

    def field_map(self) -> dict[str, tuple[str, bool]]:
        """path → (type, required); a list declared only through its items (`layers[]`) is a
        required array, an object only through its fields (`a.b`) a required object."""
        declared = {p.rstrip("?"): (t, not p.endswith("?")) for p, t, _ in self.fields}
        for path in list(declared):
            for i, char in enumerate(path):
                if char == "[" and path[:i] not in declared:
                    declared[path[:i]] = ("array", True)
                elif char == "." and path[:i] not in declared and not path[:i].endswith("]"):
                    declared[path[:i]] = ("object", True)
        return declared


# Command groups in workflow order, from data to interpretation (the order of docs/schemas/README.md).
_DECLARED = {**data.DECLARED, **calc.DECLARED, **training.DECLARED, **checkpoints.DECLARED,
             **evaluation.DECLARED, **interpret.DECLARED, **system.DECLARED}

SCHEMAS: dict[str, Schema] = {
    name: Schema(name=name, command=spec["command"], summary=spec["summary"], fields=tuple(spec["fields"]), rows=spec.get("rows"))
    for name, spec in _DECLARED.items()
}


def _child(declared: dict, parent: str, key: str) -> str | None:
    exact = f"{parent}.{key}" if parent else key
    if exact in declared:
        return exact
    wild = f"{parent}.*" if parent else "*"
    return wild if wild in declared else None


def problems(doc: Any, name: str) -> list[str]:
    """How `doc` departs from schema `name` (empty when it conforms)."""
    schema = SCHEMAS[name]
    declared = schema.field_map()
    found: list[str] = []
    if not isinstance(doc, dict) or doc.get("schema") != schema.id:
        return [f"schema is {doc.get('schema') if isinstance(doc, dict) else type(doc).__name__!r}, expected {schema.id!r}"]
    seen: set[str] = set()

    def check(value: Any, path: str) -> None:
        seen.add(path)
        kind, _ = declared[path]
        if not any(TYPES[t](value) for t in kind.split("|")):
            found.append(f"{path}: {type(value).__name__} is not {kind}")
            return
        if isinstance(value, dict) and any(p.startswith(path + ".") for p in declared):
            for key, item in value.items():
                child = _child(declared, path, key)
                if child is None:
                    found.append(f"{path}.{key}: not declared")
                else:
                    check(item, child)
            for key in _required_keys(declared, path + "."):
                if key not in value:
                    found.append(f"{path}.{key}: missing")
        if isinstance(value, list) and f"{path}[]" in declared:
            for item in value:
                check(item, f"{path}[]")

    for key, value in doc.items():
        if key == "schema":
            continue
        child = _child(declared, "", key)
        if child is None:
            found.append(f"{key}: not declared")
        else:
            check(value, child)
    found.extend(f"{key}: missing" for key in _required_keys(declared, "") if key not in doc)
    return found


def _required_keys(declared: dict, prefix: str) -> list[str]:
    """Required keys directly under `prefix` (`""` for the top level, else ending in a dot)."""
    keys = []
    for path, (_, required) in declared.items():
        rest = path[len(prefix):]
        if required and path.startswith(prefix) and rest and rest != "*" and not any(c in rest for c in ".["):
            keys.append(rest)
    return keys


def schema_page(schema: Schema) -> str:
    """The Markdown page of one schema (docs/schemas/NAME.md)."""
    lines = [
        f"# `{schema.id}`",
        "",
        f"Written by `cnntools {schema.command}`: {schema.summary}",
        "",
    ]
    if schema.rows:
        lines += [
            f"Table and CSV rows: the items of `{schema.rows}`; the columns are their keys (nested objects joined with dots).",
            "",
        ]
    lines += ["| field | type | meaning |", "|---|---|---|", f"| `schema` | string | `\"{schema.id}\"` |"]
    for path, kind, meaning in schema.fields:
        optional = path.endswith("?")
        shown = path.rstrip("?")
        lines.append(f"| `{shown}` | {kind.replace('|', ' or ')}{' (optional)' if optional else ''} | {meaning} |")
    return "\n".join(lines) + "\n"


def index_page() -> str:
    """docs/schemas/README.md: every schema and the command that writes it."""
    lines = [
        "# JSON output schemas",
        "",
        "Every JSON document cnntools prints carries `\"schema\": \"cnntools.NAME/1\"`. Paths are dotted;",
        "`[]` stands for the items of a list, `*` for a key that is data (a class name, a split).",
        "Table headers and CSV columns use the same names. Generated by `python -m cnntools.cli.docs`",
        "from `cnntools/schemas/`; the tests check each command's output against it.",
        "",
        "Each schema is also a JSON Schema (draft 2020-12) file, `NAME.schema.json`, for a validator or",
        "an editor (`check-jsonschema --schemafile docs/schemas/rf-calc.schema.json out.json`); `pip install`",
        "puts them in `PREFIX/share/cnntools/schemas/`, and the tests validate every command's JSON",
        "output with the `jsonschema` package against them.",
        "",
        "| schema | command | document | JSON Schema |",
        "|---|---|---|---|",
    ]
    for schema in SCHEMAS.values():
        first = schema.summary.split(". ", 1)[0].rstrip(".") + "."
        lines.append(f"| [`{schema.id}`]({schema.name}.md) | `cnntools {schema.command}` | {first} "
                     f"| [{schema.name}.schema.json]({schema.name}.schema.json) |")
    return "\n".join(lines) + "\n"
