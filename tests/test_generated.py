"""man/, completions/, docs/schemas/ and the README command reference are exactly what the CLI generates."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from cnntools.cli import docs
from cnntools.cli.app import COMMANDS
from cnntools.cli.completion_scripts import SHIPPED, checkout_path

REGENERATE = "out of date: run `python -m cnntools.cli.docs`"


@pytest.fixture(scope="module")
def expected():
    return docs.generated(docs.REPO)


def _rel(path):
    return path.relative_to(docs.REPO)


def test_man_pages_match_cli(expected):
    pages = {p: text for p, text in expected.items() if p.parent == docs.REPO / docs.MAN}
    assert len(pages) == 1 + len(COMMANDS)
    for path, text in pages.items():
        assert path.is_file(), f"{_rel(path)} missing: {REGENERATE}"
        assert path.read_text(encoding="utf-8") == text, f"{_rel(path)} {REGENERATE}"
    assert not docs.stale_man_pages(docs.REPO, expected), f"stale man pages: {REGENERATE}"


def test_completions_match_cli(expected):
    for shell in docs.SHELLS:
        path = docs.REPO / checkout_path(shell)
        assert path.is_file(), f"{_rel(path)} missing: {REGENERATE}"
        assert path.read_text(encoding="utf-8") == expected[path], f"{_rel(path)} {REGENERATE}"


def test_schema_pages_match_declarations(expected):
    pages = {p: text for p, text in expected.items() if p.parent == docs.REPO / "docs" / "schemas"}
    from cnntools.schemas import SCHEMAS

    assert len(pages) == 1 + 2 * len(SCHEMAS)  # the index, a page and a JSON Schema file each
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
        page = expected[docs.REPO / docs.MAN / f"cnntools-{name}.1"]
        assert ".SH OPTIONS" in page
        for param in command.params:
            if getattr(param, "param_type_name", "") != "option" or param.hidden:
                continue
            for opt in param.opts:
                assert f"\\fB{docs._roff(opt)}" in page or f", {docs._roff(opt)}" in page, (name, opt)


def test_man_page_content_for_rf_calc(expected):
    page = expected[docs.REPO / docs.MAN / "cnntools-rf-calc.1"]
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
    assert (tmp_path / "man" / "man1" / "cnntools-conv-calc.1").is_file()
    assert (tmp_path / "completions" / "fish" / "cnntools.fish").is_file()
    assert "cnntools train" in (tmp_path / "docs" / "commands" / "train.md").read_text(encoding="utf-8")
    (tmp_path / "man" / "man1" / "cnntools-gone.1").write_text("old page")
    assert docs.main(["--root", str(tmp_path), "--check"]) == 1


def test_man_pages_are_ascii_and_groff_clean(expected):
    pages = {p: text for p, text in expected.items() if p.parent == docs.REPO / docs.MAN}
    for path, text in pages.items():
        assert text.isascii(), f"{_rel(path)}: non-ASCII characters (use roff glyph escapes)"
    if shutil.which("groff") is None:
        pytest.skip("groff not installed (apt-get install groff-base)")
    import subprocess

    for path, text in pages.items():
        proc = subprocess.run(["groff", "-ww", "-man", "-Tutf8"], input=text, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stderr == "", f"{_rel(path)}: {proc.stderr[:300]}"
    assert docs._roff("3×3 — ok") == "3\\(mu3 \\(em ok"


def build_wheel(tmp_path):
    """Build the wheel from a copy of the checkout's tracked inputs; (wheel path, build log)."""
    import subprocess
    import sys

    source = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    for folder in ("cnntools", "man", "completions", "docs"):
        shutil.copytree(docs.REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(docs.REPO / name, source / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # setuptools warns when it is set
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-v", "-w", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("cnntools-*.whl")
    return wheel, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_ships_man_pages_completions_and_license_without_build_warnings(wheel):
    """The wheel carries man/man1/*.1 under share/man/man1 (PREFIX/share/man is on man's path
    for a PREFIX/bin on PATH, a venv's included), each completion script in the folder its
    shell loads from, the LICENSE (PEP 639), and setuptools says nothing to warn about."""
    import zipfile

    wheel, log = wheel
    warnings = [line for line in log.splitlines() if re.search(r"warn", line, re.IGNORECASE)]
    assert not warnings, warnings
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    record = {line.split(",")[0] for line in archive.read(next(n for n in names if n.endswith(".dist-info/RECORD"))).decode().splitlines()}
    data = {n.split(".data/data/", 1)[1]: n for n in names if ".data/data/" in n}
    pages = sorted(path.rsplit("/", 1)[1] for path in data if path.startswith("share/man/man1/"))
    assert pages == sorted(p.name for p in (docs.REPO / docs.MAN).glob("cnntools*.1")) and len(pages) == 1 + len(COMMANDS)
    for shell, (folder, name) in SHIPPED.items():
        member = data[f"{folder}/{name}"]
        assert member in record
        assert archive.read(member).decode() == (docs.REPO / checkout_path(shell)).read_text(encoding="utf-8")
    schemas = {path.rsplit("/", 1)[1] for path in data if path.startswith("share/cnntools/schemas/")}
    assert schemas == {p.name for p in (docs.REPO / "docs" / "schemas").glob("*.schema.json")}
    assert all(data[path] in record for path in data)
    meta = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in meta and "Requires-Python: >=3.11" in meta and "Project-URL: " in meta
    assert "Provides-Extra: all" in meta and "Classifier: " in meta and "Keywords: " in meta
    assert archive.read(next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))).decode().startswith("MIT License")


@pytest.mark.skipif(shutil.which("man") is None, reason="man not installed")
def test_manpath_finds_the_pages_from_a_checkout():
    import subprocess

    env = {**os.environ, "MANPATH": f"{docs.REPO / 'man'}:"}
    proc = subprocess.run(["man", "-w", "cnntools-train"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == str(docs.REPO / docs.MAN / "cnntools-train.1"), proc.stderr


def test_man_pages_have_environment_exit_status_and_files(expected):
    from cnntools.core import errors
    from cnntools.core.variables import ENVIRONMENT

    pages = {p: text for p, text in expected.items() if p.parent == docs.REPO / docs.MAN}
    for path, page in pages.items():
        sections = re.findall(r"^\.SH (.+)$", page, re.MULTILINE)
        assert sections[-4:] == ["ENVIRONMENT", "EXIT STATUS", "FILES", "SEE ALSO"], (path, sections)
        environment = page.split(".SH ENVIRONMENT\n", 1)[1].split(".SH EXIT STATUS\n", 1)[0]
        for name, _ in ENVIRONMENT:
            assert f"\\fB{docs._roff(name)}\\fR" in environment, (path, name)
        status = page.split(".SH EXIT STATUS\n", 1)[1].split(".SH FILES\n", 1)[0]
        codes = [int(code) for code in re.findall(r"^\\fB(\d+)\\fR$", status, re.MULTILINE)]
        assert codes == [errors.EXIT_OK, errors.EXIT_ERROR, errors.EXIT_USAGE, 130, 143]
        assert "cache" in page.split(".SH FILES\n", 1)[1]


def test_every_variable_the_code_reads_is_documented():
    # Every CNNTOOLS_* name in the source, and the colour switches, are in the ENVIRONMENT list.
    from cnntools.core.variables import ENVIRONMENT

    documented = {n.strip() for name, _ in ENVIRONMENT for n in name.split(",")}
    read = set()
    for path in (docs.REPO / "cnntools").rglob("*.py"):
        read |= set(re.findall(r"\b(CNNTOOLS_[A-Z_]+|NO_COLOR|FORCE_COLOR)\b", path.read_text(encoding="utf-8")))
    internal = {"CNNTOOLS_LAUNCHED"}  # set by `train --nproc` for its own workers, not by users
    assert read - internal <= documented, sorted(read - internal - documented)
    assert {"CNNTOOLS_CACHE", "CNNTOOLS_DEBUG", "CNNTOOLS_THREADS", "CNNTOOLS_TRUST_CODE", "CNNTOOLS_MAX_IMAGE_PIXELS",
            "NO_COLOR", "FORCE_COLOR"} <= documented


def _installed_data(wheel, prefix):
    """The wheel's data files placed under `prefix` as pip places them (PREFIX/share/...), and a
    `cnntools` in PREFIX/bin that runs this checkout."""
    import sys
    import zipfile

    archive = zipfile.ZipFile(wheel)
    for name in archive.namelist():
        if ".data/data/" in name:
            target = prefix / name.split(".data/data/", 1)[1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(name))
    (prefix / "bin").mkdir()
    program = prefix / "bin" / "cnntools"
    program.write_text(f"#!/bin/sh\nPYTHONPATH={docs.REPO} exec {sys.executable} -m cnntools \"$@\"\n")
    program.chmod(0o755)
    return {**os.environ, "PATH": f"{prefix / 'bin'}:{os.environ['PATH']}", "HOME": str(prefix), "XDG_CONFIG_HOME": str(prefix / "config")}


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish not installed")
def test_fish_finds_the_installed_script_by_itself(wheel, tmp_path):
    # fish's own start-up (its system config; the user's is an empty HOME here) adds
    # PREFIX/share/fish/vendor_completions.d for each PREFIX/share in XDG_DATA_DIRS: nothing is
    # sourced or installed by hand.
    import subprocess

    env = _installed_data(wheel[0], tmp_path / "prefix")
    env["XDG_DATA_DIRS"] = str(tmp_path / "prefix" / "share")
    proc = subprocess.run(["fish", "-c", "complete -C 'cnntools rf-calc --arch le'; complete -C 'cnntools train --ar'"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    found = [line.split("\t")[0] for line in proc.stdout.splitlines()]
    assert found == ["lenet", "--arch", "--arch-args"], proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed")
def test_zsh_autoloads_the_installed_script_from_site_functions(wheel, tmp_path):
    import subprocess

    env = _installed_data(wheel[0], tmp_path / "prefix")
    functions = tmp_path / "prefix" / "share" / "zsh" / "site-functions"
    program = (f"fpath=({functions} $fpath); autoload -Uz compinit && compinit -u -D; "
               "print -r -- ${_comps[cnntools]}")
    proc = subprocess.run(["zsh", "-f", "-c", program], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.stdout.strip() == "_cnntools", proc.stdout + proc.stderr  # compinit maps cnntools to the shipped _cnntools
