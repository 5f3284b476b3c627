"""The declarations as JSON Schema (draft 2020-12), for validators, editors and `check-jsonschema`.

Each schema in `cnntools.schemas.SCHEMAS` becomes one document with the same rules as the
checker (`cnntools.schemas.problems`): the declared types; a `?` field may be absent, every
other one is required; an object with declared fields accepts no other key unless a `*` is
declared (its type then holds for every other key); an object declared without fields is
free; `[]` types a list's items; `schema` is the document's own id. `python -m cnntools.cli.docs`
writes them to docs/schemas/NAME.schema.json, and the wheel installs them into
PREFIX/share/cnntools/schemas/.
"""

from __future__ import annotations

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _children(declared: dict, path: str) -> list[str]:
    """The declared keys directly under object `path` ("" for the document)."""
    prefix = f"{path}." if path else ""
    keys = []
    for name in declared:
        rest = name[len(prefix):]
        if name.startswith(prefix) and rest and not any(c in rest for c in ".["):
            keys.append(rest)
    return keys


def _node(declared: dict, meanings: dict, path: str) -> dict:
    kind, _ = declared[path]
    types = kind.split("|")
    node: dict = {"type": types[0] if len(types) == 1 else types}
    if meanings.get(path):
        node["description"] = meanings[path]
    keys = _children(declared, path)
    if keys:
        _object(node, declared, meanings, path, keys)
    if f"{path}[]" in declared:
        node["items"] = _node(declared, meanings, f"{path}[]")
    return node


def _object(node: dict, declared: dict, meanings: dict, path: str, keys: list[str]) -> None:
    """properties, required and additionalProperties of object `path` into `node`."""
    prefix = f"{path}." if path else ""
    node.setdefault("properties", {})
    required = node.setdefault("required", [])
    for key in keys:
        if key == "*":
            continue
        node["properties"][key] = _node(declared, meanings, prefix + key)
        if declared[prefix + key][1]:
            required.append(key)
    node["additionalProperties"] = _node(declared, meanings, prefix + "*") if "*" in keys else False
    if not required:
        del node["required"]


def json_schema(schema) -> dict:
    """The JSON Schema (2020-12) document of one `cnntools.schemas.Schema`."""
    declared = schema.field_map()
    meanings = {path.rstrip("?"): meaning for path, _, meaning in schema.fields}
    doc = {
        "$schema": DIALECT,
        "$id": f"{schema.name}.schema.json",
        "title": schema.id,
        "description": f"Written by `cnntools {schema.command}`: {schema.summary}",
        "type": "object",
        "properties": {"schema": {"const": schema.id, "description": "The schema this document follows."}},
        "required": ["schema"],
    }
    _object(doc, declared, meanings, "", _children(declared, ""))
    return doc
