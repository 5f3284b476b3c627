"""Machine-readable output as a contract: every JSON document names its schema and conforms to
the declaration in cnntools/schemas/; CSV columns and table headers use the JSON keys.

(conftest's Result.json() checks every document the other tests read as well.)
"""

from __future__ import annotations

import csv
import io
import json

import pytest
import typer.main

from cnntools import schemas
from cnntools.output import emitter as output
from cnntools.cli.app import app
from conftest import assert_schema, json_schema_validator
from interpret_fixtures import cached_checkpoint


def _csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_every_command_with_a_format_has_a_declared_schema():
    root = typer.main.get_command(app)
    commands = {s.command for s in schemas.SCHEMAS.values()}
    for name, command in root.commands.items():
        if any("--format" in p.opts for p in command.params if hasattr(p, "opts")):
            assert name in commands, f"{name} prints JSON but declares no schema in cnntools/schemas/"
    assert commands <= set(root.commands), commands - set(root.commands)


def test_the_checker_catches_departures():
    doc = {"schema": "cnntools.rf-calc/1", "receptive_field": 7, "input_size": None,
           "layers": [{"layer": 1, "type": "conv", "kernel": 3, "stride": 1, "padding": 0, "dilation": 1,
                       "receptive_field": 3, "jump": 1, "start": 0, "center": 1}]}
    assert schemas.problems(doc, "rf-calc") == []
    assert schemas.problems({**doc, "extra": 1}, "rf-calc") == ["extra: not declared"]
    assert schemas.problems({**doc, "input_size": "7"}, "rf-calc") == ["input_size: str is not integer|null"]
    broken = json.loads(json.dumps(doc))
    del broken["layers"][0]["jump"]
    assert schemas.problems(broken, "rf-calc") == ["layers[].jump: missing"]
    assert "expected 'cnntools.rf-calc/1'" in schemas.problems({**doc, "schema": "cnntools.rf/1"}, "rf-calc")[0]


def test_the_json_schema_catches_the_same_departures():
    # The shipped 2020-12 file, through the standard validator, refuses what the checker refuses.
    doc = {"schema": "cnntools.rf-calc/1", "receptive_field": 7, "input_size": None,
           "layers": [{"layer": 1, "type": "conv", "kernel": 3, "stride": 1, "padding": 0, "dilation": 1,
                       "receptive_field": 3, "jump": 1, "start": 0, "center": 1}]}
    validator = json_schema_validator("rf-calc")
    assert validator.is_valid(doc)
    broken = json.loads(json.dumps(doc))
    del broken["layers"][0]["jump"]
    for bad in ({**doc, "extra": 1}, {**doc, "input_size": "7"}, broken, {**doc, "schema": "cnntools.rf/1"},
                {k: v for k, v in doc.items() if k != "receptive_field"}):
        assert not validator.is_valid(bad), bad
        assert schemas.problems(bad, "rf-calc"), bad
    # Data keys (`*`): any class name, each typed.
    stats = json_schema_validator("dataset-stats").schema["properties"]["splits"]
    assert stats["additionalProperties"]["properties"]["count"]["type"] == "integer"


def test_every_declaration_is_a_valid_json_schema():
    from jsonschema import Draft202012Validator

    from cnntools.schemas.json_schema import json_schema

    for name, schema in schemas.SCHEMAS.items():
        doc = json_schema(schema)
        Draft202012Validator.check_schema(doc)
        assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert doc["properties"]["schema"]["const"] == schema.id and "schema" in doc["required"]


def test_schema_pages_name_every_field():
    page = schemas.schema_page(schemas.SCHEMAS["rf-calc"])
    assert page.startswith("# `cnntools.rf-calc/1`")
    for path, _, _ in schemas.SCHEMAS["rf-calc"].fields:
        assert f"| `{path.rstrip('?')}` |" in page


@pytest.mark.parametrize(
    "args, rows",
    [
        (["rf-calc", "-k", "3,2", "-s", "1,2", "--input-size", "16"], "layers"),
        (["conv-calc", "--in", "32", "--layers", "conv5-c6,maxpool2"], "layers"),
        (["train", "--list-archs"], "architectures"),
    ],
)
def test_csv_columns_are_the_json_keys_of_the_rows(cli, args, rows):
    doc = cli(*args, "--format", "json").json()
    table = _csv(cli(*args, "--format", "csv").stdout)
    keys = set(output.flatten(doc[rows][0]))
    assert set(table[0]) <= keys, set(table[0]) - keys
    assert len(table) == len(doc[rows])
    first = next(iter(table[0]))
    header = next(line for line in cli(*args).stdout.splitlines() if line.startswith(first)).split()
    # conv-calc's table shows C×H×W sizes as input/output; every other header is a key
    assert set(header) <= keys | {"input", "output"}, set(header) - keys


def test_dataset_stats_csv_is_long_and_carries_every_number(cli):
    doc = cli("dataset-stats", "--data", "fake:60,size=8", "--format", "json").json()
    rows = _csv(cli("dataset-stats", "--data", "fake:60,size=8", "--format", "csv").stdout)
    assert list(rows[0]) == ["field", "value"]
    values = {r["field"]: r["value"] for r in rows}
    flat = output.flatten(doc, lists=True)
    numbers = {k: v for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numbers and all(float(values[k]) == pytest.approx(v) for k, v in numbers.items())
    assert "mean.0" in values and "std.0" in values and any(k.startswith("splits.train.class_counts.") for k in values)


@pytest.fixture(scope="module")
def digits_model(one_torch_thread):
    return cached_checkpoint("digits")


def test_model_commands_conform(cli, digits_model, tmp_path):
    m = digits_model
    for args in (
        ["eval", m, "--split", "test"],
        ["confusion", m],
        ["featmaps", m, "--list-layers"],
        ["featmaps", m, "-i", "0"],
        ["saliency", m, "--list-layers"],
        ["saliency", m, "-i", "0-1", "-o", str(tmp_path / "s.png")],
        ["filters", m],
        ["filters", m, "--layer", "last", "--top-k", "2", "--filter", "0-1"],
    ):
        result = cli(*args, "--format", "json", "-q")
        assert result.exit_code == 0, (args, result.stderr)
        result.json()  # checked against its schema
    layers = cli("featmaps", m, "--list-layers", "--format", "json").json()["layers"]
    assert all(isinstance(r["output_shape"], list) for r in layers if r["output_shape"] is not None)
    evaluated = cli("eval", m, "--format", "json").json()["models"][0]
    assert "count" not in evaluated and evaluated["images"] > 0
    table = _csv(cli("eval", m, "--format", "csv").stdout)
    assert set(table[0]) <= set(output.flatten(evaluated)) and "logits.share_negative" in table[0]


def test_train_jsonl_lines_are_documents(cli, tmp_path):
    result = cli("train", "--arch", "mlp", "--data", "fake:40,size=8", "--image-size", "8", "--epochs", "1",
                 "-o", tmp_path / "m.safetensors", "--format", "jsonl", "-q", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines and all(line["schema"] == "cnntools.train.epoch/1" for line in lines)
    for line in lines:
        assert_schema(line)
