"""The help a person reads: commands grouped under headings with one-liners that fit an
80-column terminal, options under the heading they belong to, metavars that name the thing,
usage lines in POSIX notation, and -o described as what this command writes."""

from __future__ import annotations

import re

import pytest
import typer.main

from cnntools.cli import app as cli_app

ROOT = typer.main.get_command(cli_app.app)


def test_root_help_groups_every_command_under_its_heading(cli):
    result = cli("--help", env={"COLUMNS": "80"})
    assert result.exit_code == 0
    text = result.stdout
    headings = [h for h in re.findall(r"^(\w[\w ]*):$", text, re.MULTILINE) if h in cli_app.PANELS]
    assert headings == list(cli_app.PANELS)[: len(headings)] == ["Data", "Arithmetic", "Training", "Inspecting", "Models", "Environment"]
    assert "Commands:" not in text
    for panel, commands in cli_app.PANELS.items():
        block = text.split(f"\n{panel}:\n", 1)[1].split("\n\n", 1)[0]
        assert [line.split()[0] for line in block.splitlines()] == list(commands), panel
        for line in block.splitlines():
            assert len(line) <= 80 and not line.endswith("..."), line  # not cut by Click
    assert {name for commands in cli_app.PANELS.values() for name in commands} == {n for n, _ in cli_app.COMMANDS}


def test_train_options_sit_under_their_headings(cli):
    sections = cli_app.help_sections(ROOT.commands["train"], ROOT.commands["train"].make_context("train", [], resilient_parsing=True))
    heading_of = {term.split()[0].rstrip(","): heading for heading, records in sections.items() for term, _ in records}
    assert "Options" not in sections  # no grab bag
    assert heading_of["--arch-args"] == heading_of["--trust-code"] == heading_of["--arch"] == "Model"
    assert heading_of["--tensorboard"] == "Output"
    assert heading_of["--config"] == heading_of["--print-config"] == heading_of["--dry-run"] == "Configuration and dry run"


@pytest.mark.parametrize("command, option, metavar", [
    ("dataset-stats", "--grid", "FILE"), ("dataset-stats", "--augment-preview", "FILE"), ("dataset-stats", "--augment", "SPEC"),
    ("dataset-stats", "--image-size", "SIZE"), ("filters", "--filter", "SPEC"), ("lr-find", "--sweep", "FILE"),
    ("train", "--label", "NAME"), ("tsne", "--embedding", "FILE"), ("cache", "--older-than", "DAYS"),
])
def test_metavars_name_the_thing(cli, command, option, metavar):
    text = cli(command, "--help", env={"COLUMNS": "100"}).stdout
    assert re.search(rf"{option} {metavar}\b", text), text


def test_usage_lines_are_posix(cli):
    assert cli("export", "--help").stdout.splitlines()[0] == "Usage: cnntools export [OPTIONS] MODEL"
    assert cli("info", "--help").stdout.splitlines()[0] == "Usage: cnntools info [OPTIONS] CHECKPOINT..."
    for name in ROOT.commands:
        assert "{" not in cli(name, "--help").stdout.splitlines()[0], name


def test_output_help_is_the_commands_own(cli):
    helps = {}
    for name, command in ROOT.commands.items():
        ctx = command.make_context(name, [], resilient_parsing=True)
        for param in command.get_params(ctx):
            if "--output" in getattr(param, "opts", ()):
                helps[name] = cli_app.help_record(param, ctx)[1]
    assert len(helps) == 11 and len(set(helps.values())) == len(helps)  # one meaning each
    assert "checkpoint" in helps["train"] and "predictions CSV" in helps["eval"] and ".onnx" in helps["export"]
    for name, text in helps.items():
        others = {"train": "checkpoint", "eval": "predictions"}
        assert not any(word in text for other, word in others.items() if other != name), (name, text)
