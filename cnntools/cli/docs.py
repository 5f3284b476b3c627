"""Generate the man pages, shell completions, command reference and output schemas.

    python -m cnntools.cli.docs            # rewrite man/, completions/, docs/commands/, docs/schemas/
    python -m cnntools.cli.docs --check    # exit 1 and list what differs (CI)

Everything is rendered from `typer.main.get_command(app)` and the completion scripts the
program prints, so the documents cannot drift from the commands. The roff is written here
because `click-man` does not understand Typer's vendored Click and drops OPTIONS.
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
from pathlib import Path

from cnntools.cli.completion_scripts import SHELLS, checkout_path

PROG = "cnntools"
REPO = Path(__file__).resolve().parents[2]
# Section 1 pages under man/man1/, the layout man searches: `MANPATH=$PWD/man: man cnntools-train`
# works from a checkout, and the wheel installs the same files into PREFIX/share/man/man1.
MAN = Path("man") / "man1"

# Deterministic help text whatever terminal the generator runs in.
_HELP_ENV = {"COLUMNS": "100", "LINES": "50", "NO_COLOR": "1", "TERM": "dumb"}


def _root_command():
    import typer.main

    from cnntools.cli.app import app

    return typer.main.get_command(app)


def _contexts():
    """The root command, its context, and (name, command, context) of every subcommand."""
    root = _root_command()
    root_ctx = root.make_context(PROG, [], resilient_parsing=True)
    subs = []
    for name, command in root.commands.items():
        if getattr(command, "hidden", False):
            continue
        subs.append((name, command, command.make_context(name, [], parent=root_ctx, resilient_parsing=True)))
    return root, root_ctx, subs


def command_help(args: list[str]) -> str:
    """`cnntools ARGS --help` exactly as a user sees it in a 100-column plain terminal."""
    from typer.testing import CliRunner

    from cnntools.cli.app import app

    result = CliRunner(env=_HELP_ENV).invoke(app, [*args, "--help"], prog_name=PROG)
    if result.exit_code != 0:
        raise RuntimeError(f"cnntools {' '.join(args)} --help failed: {result.output}")
    return result.stdout.rstrip() + "\n"


# ---------------------------------------------------------------------------- roff


# Named roff glyphs for the non-ASCII characters help texts use; any other becomes \[uXXXX].
_GLYPHS = {"\u00d7": "\\(mu", "\u2014": "\\(em", "\u2013": "\\(en", "\u2192": "\\(->", "\u2264": "\\(<=",
           "\u2265": "\\(>=", "\u2018": "\\(oq", "\u2019": "\\(cq", "\u201c": "\\(lq", "\u201d": "\\(rq"}


def _roff(text: str) -> str:
    """Escape text for roff: backslashes, hyphens, lines starting with . or ', and every
    non-ASCII character as a glyph escape (the pages are ASCII; `groff -ww` stays silent)."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = "".join(c if ord(c) < 128 else _GLYPHS.get(c, f"\\[u{ord(c):04X}]") for c in text)
    lines = []
    for line in text.split("\n"):
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def _paragraphs(doc: str | None) -> list[str]:
    if not doc:
        return []
    import inspect

    text = inspect.cleandoc(doc)
    return [p.strip("\n") for p in text.split("\n\n") if p.strip()]


def _help_of(command) -> str:
    return command.help or (command.callback.__doc__ if command.callback else "") or ""


def _split_doc(command) -> tuple[str, list[str], list[str]]:
    """(summary, description paragraphs, example lines) of a command's docstring."""
    paras = _paragraphs(_help_of(command))
    summary = paras[0].replace("\n", " ") if paras else ""
    description, examples = [], []
    for para in paras[1:]:
        verbatim = para.startswith("\b")
        body = para.lstrip("\b").strip("\n")
        first, _, rest = body.partition("\n")
        if verbatim and first.strip().lower().rstrip(":") in ("example", "examples"):
            examples.extend(line[2:] if line.startswith("  ") else line for line in rest.split("\n"))
        else:
            description.append(para)
    return summary, description, examples


def _roff_description(paragraphs: list[str]) -> list[str]:
    out = []
    for para in paragraphs:
        if para.startswith("\b"):
            out += [".PP", ".nf", _roff(para.lstrip("\b").strip("\n")), ".fi"]
        else:
            out += [".PP", _roff(" ".join(line.strip() for line in para.split("\n")))]
    return out


def _roff_records(records: list[tuple[str, str]]) -> list[str]:
    out = []
    for term, text in records:
        out += [".TP", f"\\fB{_roff(term)}\\fR", _roff(text.replace("  [", " [")) if text else ""]
    return [line for line in out if line != ""]


def _roff_standard_sections() -> list[str]:
    """ENVIRONMENT, EXIT STATUS and FILES, from the declarations the code itself uses."""
    from cnntools.core.errors import EXIT_STATUS
    from cnntools.core.variables import ENVIRONMENT

    lines = [".SH ENVIRONMENT", *_roff_records(list(ENVIRONMENT)), ".SH EXIT STATUS",
             *_roff_records([(str(code), text) for code, text in EXIT_STATUS.items()]), ".SH FILES"]
    return lines + _roff_records([
        ("$CNNTOOLS_CACHE, $XDG_CACHE_HOME/cnntools, ~/.cache/cnntools",
         "The cache folder (the first of these that is set): decoded image stores, "
         "folder-*.safetensors, one per image folder and size, with their .lock files. "
         "cnntools cache list shows them; cnntools cache clear removes them."),
    ])


def man_page(name: str | None, command, ctx, version: str, commands=()) -> str:
    """roff for `cnntools` (name None) or `cnntools NAME`."""
    full = f"{PROG}-{name}" if name else PROG
    from cnntools.cli.app import help_sections

    summary, description, examples = _split_doc(command)
    sections = help_sections(command, ctx)
    arguments = sections.pop("Arguments", [])
    lines = [
        f'.TH "{full.upper()}" "1" "" "{PROG} {version}" "User Commands"',
        ".SH NAME",
        f"{_roff(full)} \\- {_roff(summary)}",
        ".SH SYNOPSIS",
        f"\\fB{_roff(PROG + (' ' + name if name else ''))}\\fR "
        + " ".join(_roff(piece) for piece in command.collect_usage_pieces(ctx)),
        ".SH DESCRIPTION",
        ".PP",
        _roff(summary),
        *_roff_description(description),
    ]
    if arguments:
        lines += [".SH ARGUMENTS", *_roff_records(arguments)]
    lines.append(".SH OPTIONS")
    for heading, records in sections.items():
        if heading != "Options" or len(sections) > 1:
            lines.append(f".SS {_roff(heading)}")
        lines += _roff_records(records)
    if commands:
        lines.append(".SH COMMANDS")
        for sub_name, sub_command, _ in commands:
            lines += [".TP", f"\\fB{_roff(sub_name)}\\fR", _roff(_split_doc(sub_command)[0]),
                      f"See \\fB{_roff(PROG + '-' + sub_name)}\\fR(1)."]
    epilog = getattr(command, "epilog", None)
    if epilog:
        lines += [".PP", _roff(epilog)]
    if examples:
        lines += [".SH EXAMPLES", ".nf", _roff("\n".join(examples).strip("\n")), ".fi"]
    lines += _roff_standard_sections()
    lines.append(".SH SEE ALSO")
    if name:
        lines.append(f"\\fB{PROG}\\fR(1)")
    else:
        lines.append(", ".join(f"\\fB{_roff(PROG + '-' + n)}\\fR(1)" for n, _, _ in commands))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- completions


@functools.lru_cache(maxsize=None)
def completion_script(shell: str) -> str:
    """The completion script for `shell`, as `_CNNTOOLS_COMPLETE=source_SHELL cnntools` prints it."""
    env = {**os.environ, "_CNNTOOLS_COMPLETE": f"source_{shell}", **_HELP_ENV}
    result = subprocess.run(
        [sys.executable, "-c", "from cnntools.cli.app import main; main()"],
        env=env, capture_output=True, text=True, check=False,
    )
    if result.returncode != 0 or not result.stdout.strip():
        raise RuntimeError(f"completion source for {shell} failed: {result.stderr.strip()}")
    return result.stdout.rstrip("\n") + "\n"


# ---------------------------------------------------------------------------- reference


def command_pages(root: Path, subs) -> dict[Path, str]:
    """docs/commands/: `--help` of every command on a page of its own, and an index holding the
    root's `--help` with a link to each page."""
    folder = root / "docs" / "commands"
    index = ["# Command reference", "", "Generated from the CLI itself (`python -m cnntools.cli.docs`); a test fails when it drifts.",
             "", "```text", command_help([]).rstrip("\n"), "```", ""]
    pages = {}
    for name, command, _ in subs:
        summary = (command.short_help or (command.help or "").split("\n")[0]).strip()
        index.append(f"- [`{PROG} {name}`]({name}.md): {summary}")
        pages[folder / f"{name}.md"] = "\n".join(
            [f"# `{PROG} {name}`", "", "```text", command_help([name]).rstrip("\n"), "```", ""])
    pages[folder / "README.md"] = "\n".join(index) + "\n"
    return pages


# ---------------------------------------------------------------------------- all


def generated(root: Path = REPO) -> dict[Path, str]:
    """Every generated file (path → content)."""
    from cnntools import __version__

    command, ctx, subs = _contexts()
    files: dict[Path, str] = {root / MAN / f"{PROG}.1": man_page(None, command, ctx, __version__, subs)}
    for name, sub, sub_ctx in subs:
        files[root / MAN / f"{PROG}-{name}.1"] = man_page(name, sub, sub_ctx, __version__)
    for shell in SHELLS:
        files[root / checkout_path(shell)] = completion_script(shell)
    files.update(schema_pages(root))
    files.update(command_pages(root, subs))
    return files


def schema_pages(root: Path) -> dict[Path, str]:
    """docs/schemas/: per JSON document kind a page and a JSON Schema (2020-12) file, and an index."""
    import json

    from cnntools.schemas import SCHEMAS, index_page, schema_page
    from cnntools.schemas.json_schema import json_schema

    folder = root / "docs" / "schemas"
    pages = {folder / f"{name}.md": schema_page(schema) for name, schema in SCHEMAS.items()}
    for name, schema in SCHEMAS.items():
        pages[folder / f"{name}.schema.json"] = json.dumps(json_schema(schema), indent=2, ensure_ascii=False) + "\n"
    pages[folder / "README.md"] = index_page()
    return pages


def stale_man_pages(root: Path, expected: dict[Path, str]) -> list[Path]:
    """Man pages, schema pages and files, and command pages that nothing generates any more."""
    found = []
    for folder, pattern in ((root / MAN, f"{PROG}*.1"), (root / "docs" / "schemas", "*.md"), (root / "docs" / "schemas", "*.schema.json"), (root / "docs" / "commands", "*.md")):
        if folder.is_dir():
            found += [p for p in folder.glob(pattern) if p not in expected]
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cnntools.cli.docs", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="report differences and exit 1 instead of writing")
    parser.add_argument("--root", type=Path, default=REPO, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    expected = generated(args.root)
    stale = stale_man_pages(args.root, expected)
    changed = [p for p, text in expected.items() if not p.is_file() or p.read_text(encoding="utf-8") != text]
    if args.check:
        for path in changed + stale:
            print(f"out of date: {path.relative_to(args.root)}", file=sys.stderr)
        if changed or stale:
            print("run: python -m cnntools.cli.docs", file=sys.stderr)
            return 1
        return 0
    for path in stale:
        path.unlink()
        print(f"removed {path.relative_to(args.root)}", file=sys.stderr)
    for path in changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(expected[path], encoding="utf-8")
        print(f"wrote {path.relative_to(args.root)}", file=sys.stderr)
    if not changed and not stale:
        print("generated files are up to date", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
