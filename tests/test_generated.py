"""man/, completions/, docs/schemas/ and the README command reference are exactly what the CLI generates."""

from __future__ import annotations

import re
import shutil

import pytest

from cnntools.cli import docs
from cnntools.cli.app import COMMANDS

REGENERATE = "out of date: run `python -m cnntools.cli.docs`"


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


def test_command_pages_match_cli(expected):
    pages = {p: text for p, text in expected.items() if p.parent == docs.REPO / "docs" / "commands"}
    _, _, subs = docs._contexts()
    assert len(pages) == 1 + len(subs)
    for path, text in pages.items():
        assert path.is_file(), f"{_rel(path)} missing: {REGENERATE}"
        assert path.read_text(encoding="utf-8") == text, f"{_rel(path)} {REGENERATE}"


def test_man_pages_show_every_option(expected):
    import typer.main

    from cnntools.cli.app import app

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
            assert re.match(r"^\.(TH|SH|SS|PP|TP|nf|fi)\b", line), line


def test_roff_escapes():
    assert docs._roff("a-b \\x") == "a\\-b \\ex"
    assert docs._roff(".starts with dot") == "\\&.starts with dot"


def test_generator_writes_and_checks(tmp_path):
    assert docs.main(["--root", str(tmp_path), "--check"]) == 1
    assert docs.main(["--root", str(tmp_path)]) == 0
    assert docs.main(["--root", str(tmp_path), "--check"]) == 0
    assert (tmp_path / "man" / "cnntools-conv-calc.1").is_file()
    assert (tmp_path / "completions" / "cnntools.fish").is_file()
    assert "cnntools train" in (tmp_path / "docs" / "commands" / "train.md").read_text(encoding="utf-8")
    (tmp_path / "man" / "cnntools-gone.1").write_text("old page")
    assert docs.main(["--root", str(tmp_path), "--check"]) == 1


def test_man_pages_are_ascii_and_groff_clean(expected):
    pages = {p: text for p, text in expected.items() if p.parent == docs.REPO / "man"}
    for path, text in pages.items():
        assert text.isascii(), f"{_rel(path)}: non-ASCII characters (use roff glyph escapes)"
    if shutil.which("groff") is None:
        pytest.skip("groff not installed (apt-get install groff-base)")
    import subprocess

    for path, text in pages.items():
        proc = subprocess.run(["groff", "-ww", "-man", "-Tutf8"], input=text, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stderr == "", f"{_rel(path)}: {proc.stderr[:300]}"
    assert docs._roff("3×3 — ok") == "3\\(mu3 \\(em ok"


@pytest.mark.slow
def test_pip_install_puts_the_man_pages_where_man_finds_them(tmp_path):
    """The wheel carries man/*.1 as data files under share/man/man1 (PREFIX/share/man is on
    man's path for a PREFIX/bin on PATH, a venv's included)."""
    import subprocess
    import sys
    import zipfile

    source = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(docs.REPO / "cnntools", source / "cnntools", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(docs.REPO / "man", source / "man")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(docs.REPO / name, source / name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("cnntools-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    pages = sorted(n.rsplit("/", 1)[1] for n in names if "/data/share/man/man1/" in n)
    assert pages == sorted(p.name for p in (docs.REPO / "man").glob("cnntools*.1"))
