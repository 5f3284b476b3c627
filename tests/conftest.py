"""Shared fixtures. Keep this small; add fixtures additively."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# Each pytest-xdist worker gets its share of the cores for torch (and the subprocesses it
# starts inherit it): two workers with a thread per core each leave OpenMP spin-waiting
# against the other worker, which made training tests several times slower.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault(
        "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    )

import pytest
from typer.testing import CliRunner

from cnntools.cli.app import app


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one thread is fastest, and on a shared 2-core machine extra threads only
    fight each other (measured: 10x slower under load)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Result:
    """What a CLI run produced: exit code, stdout, stderr (and stdout parsed as JSON)."""

    def __init__(self, exit_code: int, stdout: str, stderr: str, exception=None):
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        self.exception = exception

    def json(self):
        """stdout as a JSON document, checked against the schema it names (cnntools/schemas/):
        every JSON output a test reads is a check of the documented contract."""
        doc = json.loads(self.stdout)
        assert_schema(doc)
        return doc


def assert_schema(doc) -> None:
    """The document names a declared schema and conforms to it."""
    from cnntools.schemas import SCHEMAS, problems

    name = doc.get("schema", "") if isinstance(doc, dict) else ""
    name = name[len("cnntools."):].rsplit("/", 1)[0] if name.startswith("cnntools.") else None
    assert name in SCHEMAS, f"JSON document without a declared schema: {str(doc)[:200]}"
    found = problems(doc, name)
    assert not found, f"{doc['schema']} differs from cnntools/schemas/: " + "; ".join(found[:10])
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in json_schema_validator(name).iter_errors(doc)]
    assert not errors, f"{doc['schema']} fails docs/schemas/{name}.schema.json: " + "; ".join(errors[:10])


_VALIDATORS: dict = {}


def json_schema_validator(name: str):
    """A standard validator (the `jsonschema` package) for the shipped docs/schemas/NAME.schema.json."""
    if name not in _VALIDATORS:
        from pathlib import Path

        from jsonschema import Draft202012Validator

        path = Path(__file__).resolve().parents[1] / "docs" / "schemas" / f"{name}.schema.json"
        schema = json.loads(path.read_text(encoding="utf-8"))
        Draft202012Validator.check_schema(schema)
        _VALIDATORS[name] = Draft202012Validator(schema)
    return _VALIDATORS[name]


@pytest.fixture
def cli():
    """Run `cnntools ARGS` in-process through Typer's CliRunner: cli("rf-calc", "-k", "3")."""

    def invoke(*args: str, input: str | None = None, env: dict | None = None) -> Result:
        runner = CliRunner(env={"NO_COLOR": "1", "CNNTOOLS_DEBUG": "", **(env or {})})
        result = runner.invoke(app, [str(a) for a in args], input=input, prog_name="cnntools")
        return Result(result.exit_code, result.stdout, result.stderr, result.exception)

    return invoke


@pytest.fixture
def run_cnntools():
    """Run `python -m cnntools ARGS` in a subprocess (real streams, signals, start-up)."""

    def run(*args: str, input: str | None = None, env: dict | None = None, timeout: float = 120) -> Result:
        full_env = {**os.environ, "NO_COLOR": "1", "CNNTOOLS_DEBUG": "", **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "cnntools", *map(str, args)],
            input=input, capture_output=True, text=True, env=full_env, timeout=timeout,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture(autouse=True)
def _fresh_output_state():
    """Every test starts loud: an in-process `-q` run or Trainer test must not silence the next
    test's warnings (the output switches are process-wide)."""
    from cnntools.output import emitter as output

    output.configure()
    yield


@pytest.fixture
def small_trainer():
    """A factory of quiet in-process Trainers on digits at 8x8, CPU fp32:
    `small_trainer(path=None, **config)` writes its checkpoint to `path`; `config` overrides
    TrainConfig's fields."""
    from cnntools.output import emitter as output
    from cnntools.training import TrainConfig, Trainer, load_training_data

    def make(path=None, **config):
        output.configure(quiet=True)
        cfg = TrainConfig(**{"image_size": 8, "precision": "fp32", "device": "cpu", **config})
        train, val, _ = load_training_data(cfg)
        return Trainer(cfg, train, val, output=None if path is None else str(path))

    return make
