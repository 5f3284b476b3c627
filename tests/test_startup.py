"""The torch-free paths import none of the heavy libraries (SPEC §2 "Start-up")."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "sklearn", "matplotlib", "pytorch_grad_cam", "numpy", "PIL", "safetensors", "openTSNE")

# Runs the real entry point, then reports which top-level modules got imported (atexit runs
# after Typer's sys.exit, so every command gets measured, including --help and completion).
WRAPPER = """
import atexit, json, sys
def report():
    names = sorted({name.split('.')[0] for name in sys.modules})
    sys.__stderr__.write('MODULES=' + json.dumps(names) + '\\n')
atexit.register(report)
sys.argv = ['cnntools'] + sys.argv[1:]
from cnntools.cli.app import main
main()
"""

COMPLETE = {"_CNNTOOLS_COMPLETE": "complete_fish", "_TYPER_COMPLETE_FISH_ACTION": "get-args"}
SPEC_INPUT = "1 0 0 1 1 0; 0 1 0 0 0 1; 0 0 1 1 0 0; 1 0 0 0 1 0; 1 0 0 0 0 1"

CASES = {
    "help": (["--help"], {}),
    "command-help": (["rf-calc", "--help"], {}),
    "rf-calc": (["rf-calc", "-k", "3", "-s", "1", "-n", "3"], {}),
    "rf-calc-json": (["rf-calc", "-k", "3,3", "-d", "1,2", "--format", "json"], {}),
    "conv-calc-formula": (["conv-calc", "--in", "32", "--layers", "conv5-c6,maxpool2,convT4-s2-p1"], {}),
    "conv-calc-kernel": (
        ["conv-calc", "--input", SPEC_INPUT, "-k", "1 0; 0 1", "-b", "-1", "-a", "relu", "--explain"], {}
    ),
    # What the shipped scripts ask on a Tab (completion_scripts): the line up to the cursor.
    "complete-commands": ([], {**COMPLETE, "_TYPER_COMPLETE_ARGS": "cnntools rf"}),
    "complete-options": ([], {**COMPLETE, "_TYPER_COMPLETE_ARGS": "cnntools conv-calc --"}),
    "source-bash": ([], {"_CNNTOOLS_COMPLETE": "source_bash"}),
    # Stored parameter counts (cnntools.models.catalog): building the models took 5-7 s (issue 29).
    "list-archs": (["train", "--list-archs"], {}),
    "list-archs-json": (["train", "--list-archs", "--format", "json"], {}),
}


def run_wrapped(args, env):
    args = [a.strip() for a in args]
    full_env = {**os.environ, **env}
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True, env=full_env,
                          timeout=60)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("MODULES=")]
    assert lines, proc.stderr
    return proc, set(json.loads(lines[-1][len("MODULES="):]))


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_heavy_imports(case):
    args, env = CASES[case]
    proc, modules = run_wrapped(args, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "the command printed nothing"
    assert not modules & set(HEAVY), f"{case} imported {sorted(modules & set(HEAVY))}"


def test_completion_answers(tmp_path):
    proc, _ = run_wrapped([], CASES["complete-commands"][1])
    assert "rf-calc" in proc.stdout.split()
    proc, _ = run_wrapped([], CASES["complete-options"][1])
    assert "--layers" in proc.stdout.split() and "--explain" in proc.stdout.split()


def test_the_wrapper_would_see_a_heavy_import():
    # Guards the guard: a command that does import torch shows up in the report.
    proc, modules = run_wrapped(["rf-calc", "--arch", "lenet", "-q"], {})
    assert proc.returncode == 0, proc.stderr
    assert "torch" in modules


def test_info_imports_no_heavy_library(tmp_path):
    """`info` reads the safetensors header and the metadata: no tensor, so no torch (issue 29)."""
    from cnntools.checkpoint import save_checkpoint
    from cnntools.models import create_model
    from test_checkpoint import _meta

    path = tmp_path / "m.safetensors"
    save_checkpoint(str(path), create_model("lenet", 1, 32, 10), _meta("lenet", 1, 32))
    for args in (["info", str(path)], ["info", str(path), "--format", "json"]):
        proc, modules = run_wrapped(args, {})
        assert proc.returncode == 0, proc.stderr
        assert "lenet" in proc.stdout
        assert not modules & set(HEAVY), f"{args} imported {sorted(modules & set(HEAVY))}"
