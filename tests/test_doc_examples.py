"""Every `cnntools ...` command line in README.md and docs/*.md parses with the CLI's own
option parser: the command exists, every option is known and gets its value, and no
deprecated spelling is used (they still work, with a note, but the docs show current ones)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main

from cnntools.cli import options
from cnntools.cli.app import app
from cnntools.cli.docs import REPO

ROOT = typer.main.get_command(app)
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_OPERATORS = {"|", "||", "&&", ";", "&", "(", ")"}


def _code_lines(text: str) -> list[str]:
    """Lines of the fenced shell blocks, continuation lines joined, comments kept for shlex."""
    lines, inside, fence = [], False, ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            inside, fence = (not inside, stripped[3:].strip()) if not inside else (False, "")
            continue
        if inside and fence in ("sh", "bash", "shell", "console", ""):
            if lines and lines[-1].endswith("\\"):
                lines[-1] = lines[-1][:-1] + " " + stripped
            else:
                lines.append(stripped.removeprefix("$ "))
    return lines


def _inline_commands(text: str) -> list[str]:
    """Inline code in the prose that is a whole command line (`cnntools eval m.safetensors -o p.csv`),
    outside the fenced blocks; a placeholder command (`cnntools COMMAND --help`) is skipped."""
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    spans = re.findall(r"`((?:python -m )?cnntools [^`]+)`", prose.replace("\n", " "))
    return [span for span in spans if not re.match(r"(python -m )?cnntools [A-Z]", span)]


def invocations(text: str) -> list[list[str]]:
    """The argument lists of every `cnntools` (or `python -m cnntools`) in the shell blocks and
    in inline code."""
    found = []
    for line in _code_lines(text) + _inline_commands(text):
        if "cnntools" not in line:
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError:
            continue
        segment: list[str] = []
        for token in [*tokens, ";"]:
            if token in _OPERATORS:
                if segment:
                    found.extend(_cnntools_args(segment))
                segment = []
            else:
                segment.append(token)
    return found


def _cnntools_args(words: list[str]) -> list[list[str]]:
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):  # VAR=value cnntools ...
        words = words[1:]
    if words[:3] in (["python", "-m", "cnntools"], ["python3", "-m", "cnntools"]):
        words = words[2:]
    elif words[:5] == ["torchrun", "--nproc-per-node"] + words[2:3] + ["-m", "cnntools"]:
        words = words[4:]
    if not words or words[0] != "cnntools":
        return []
    args = []
    for word in words[1:]:
        if word in (">", ">>", "<", "2>", "2>&1") or word.startswith((">", "<")):
            break  # a redirection ends the arguments
        args.append(word)
    return [args] if args else []


def problems(args: list[str]) -> list[str]:
    """Why `cnntools ARGS` would not parse (empty when it does)."""
    if args[0].startswith("-"):
        return [] if args[0] in ("--help", "-h", "--version", "--install-completion", "--show-completion") else [f"unknown {args[0]}"]
    name, rest = args[0], args[1:]
    command = ROOT.commands.get(name)
    if command is None:
        return [f"no command {name!r}"]
    takes_value = {opt for p in command.params if getattr(p, "param_type_name", "") == "option"
                   and not getattr(p, "is_flag", False) for opt in p.opts}
    if options.rewrite_deprecated(name, rest, takes_value, notes=False) != rest:
        return [f"a deprecated spelling in {' '.join(rest)}"]
    ctx = command.context_class(command, info_name=name)  # the parser only: no callback, no conversion
    try:
        command.make_parser(ctx).parse_args(list(rest))
    except Exception as error:  # NoSuchOption, BadOptionUsage: the parser's own messages
        return [str(getattr(error, "message", error))]
    return []


CASES = [(doc, args) for doc in DOCS for args in invocations(doc.read_text(encoding="utf-8"))]


def test_the_docs_have_command_lines():
    assert len([1 for doc, _ in CASES if doc.name == "README.md"]) > 40
    assert {args[0] for _, args in CASES} >= {"train", "eval", "rf-calc", "conv-calc", "saliency"}


@pytest.mark.parametrize("doc, args", CASES, ids=[f"{d.name}:{' '.join(a)[:60]}" for d, a in CASES])
def test_command_line_parses(doc, args):
    assert not problems(args), (doc.name, "cnntools " + " ".join(args), problems(args))


def test_the_checker_catches_mistakes():
    assert problems(["train", "--arch", "lenet"]) == []
    assert problems(["train", "--no-such-option"])
    assert problems(["eval", "m.safetensors", "--predictions", "p.csv"])  # deprecated: -o
    assert problems(["rf-calc", "--num-layers", "3", "-k", "3"])
    assert problems(["no-such-command"])
    assert problems(["train", "--epochs"])  # a missing value
    assert invocations("```sh\nA=1 cnntools rf-calc -k 3 | jq . && python -m cnntools info m.safetensors > x # c\n```") == [
        ["rf-calc", "-k", "3"], ["info", "m.safetensors"]]
