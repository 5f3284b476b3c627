"""man/, completions/, docs/schemas/ and the README command reference are exactly what the CLI generates."""

from __future__ import annotations

import re
import shutil

import pytest

from cnntools import docs
from cnntools.cli import COMMANDS

REGENERATE = "out of date: run `python -m cnntools.docs`"


@pytest.fixture(scope="module")
def expected():
    return docs.generated(docs.REPO)


def _rel(path):
    return path.relative_to(docs.REPO)


def test_man_pages_match_cli(expected):
    pages = {p: text for p, text in expected.items() if p.parent == docs.REPO / "man"}
    assert len(pages) == 1 + len(COMMANDS)
    for path, text in pages.items():
        assert path.is_file(), f"{_rel(path)} missing: {REGENERATE}"
        assert path.read_text(encoding="utf-8") == text, f"{_rel(path)} {REGENERATE}"
    assert not docs.stale_man_pages(docs.REPO, expected), f"stale man pages: {REGENERATE}"


def test_completions_match_cli(expected):
    for shell in docs.SHELLS:
        path = docs.REPO / "completions" / f"cnntools.{shell}"
        assert path.is_file(), f"{_rel(path)} missing: {REGENERATE}"
        assert path.read_text(encoding="utf-8") == expected[path], f"{_rel(path)} {REGENERATE}"


def test_schema_pages_match_declarations(expected):
    pages = {p: text for p, text in expected.items() if p.parent == docs.REPO / "docs" / "schemas"}
    from cnntools.schemas import SCHEMAS

    assert len(pages) == 1 + len(SCHEMAS)
    for path, text in pages.items():
        assert path.is_file(), f"{_rel(path)} missing: {REGENERATE}"
        assert path.read_text(encoding="utf-8") == text, f"{_rel(path)} {REGENERATE}"


def test_readme_reference_matches_cli(expected):
    readme = docs.REPO / "README.md"
    if not readme.is_file() or docs.BEGIN not in readme.read_text(encoding="utf-8"):
        pytest.skip("README.md has no command-reference markers")
    assert readme.read_text(encoding="utf-8") == expected[readme], f"README.md command reference {REGENERATE}"


def test_man_pages_show_every_option(expected):
    import typer.main

    from cnntools.cli import app

    root = typer.main.get_command(app)
    for name, command in root.commands.items():
        page = expected[docs.REPO / "man" / f"cnntools-{name}.1"]
        assert ".SH OPTIONS" in page
        for param in command.params:
            if getattr(param, "param_type_name", "") != "option" or param.hidden:
                continue
            for opt in param.opts:
                assert f"\\fB{docs._roff(opt)}" in page or f", {docs._roff(opt)}" in page, (name, opt)


def test_man_page_content_for_rf_calc(expected):
    page = expected[docs.REPO / "man" / "cnntools-rf-calc.1"]
    assert page.startswith('.TH "CNNTOOLS-RF-CALC" "1"')
    assert "\\fB\\-k, \\-\\-kernel K[,K...]\\fR" in page
    assert "[default: 3]" in page  # --in-channels default
    assert "<table|json|csv>" in page  # choices
    examples = page.split(".SH EXAMPLES\n", 1)[1]
    assert examples.startswith(".nf\ncnntools rf\\-calc \\-k 3 \\-s 1 \\-n 3")
    # No roff line may start with a dot that is not a request.
    for line in page.splitlines():
        if line.startswith("."):
            assert re.match(r"^\.(TH|SH|PP|TP|nf|fi)\b", line), line


def test_roff_escapes():
    assert docs._roff("a-b \\x") == "a\\-b \\ex"
    assert docs._roff(".starts with dot") == "\\&.starts with dot"


def test_replace_block_only_touches_markers():
    text = f"intro\n{docs.BEGIN}\nold\n{docs.END}\noutro\n"
    assert docs.replace_block(text, "new") == f"intro\n{docs.BEGIN}\nnew\n{docs.END}\noutro\n"
    assert docs.replace_block("no markers here", "new") is None


def test_generator_writes_and_checks(tmp_path):
    shutil.copy(docs.REPO / "README.md", tmp_path / "README.md") if (docs.REPO / "README.md").exists() else None
    assert docs.main(["--root", str(tmp_path), "--check"]) == 1
    assert docs.main(["--root", str(tmp_path)]) == 0
    assert docs.main(["--root", str(tmp_path), "--check"]) == 0
    assert (tmp_path / "man" / "cnntools-conv-calc.1").is_file()
    assert (tmp_path / "completions" / "cnntools.fish").is_file()
    (tmp_path / "man" / "cnntools-gone.1").write_text("old page")
    assert docs.main(["--root", str(tmp_path), "--check"]) == 1
