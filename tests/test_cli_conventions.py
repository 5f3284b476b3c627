"""SPEC §2 conventions every command follows: help, exit codes, errors, colour, pipes, version."""

from __future__ import annotations

import io
import os
import re
import shlex
import signal
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from cnntools import __version__
from cnntools.cli import app as cli_module
from cnntools.output import emitter as output
from cnntools.core.errors import CnnError
from cnntools.output.emitter import handle_errors

COMMAND_NAMES = [name for name, _ in cli_module.COMMANDS]
BOX = re.compile("[╭╮╰╯│─]")


@pytest.mark.parametrize("name", COMMAND_NAMES)
def test_every_command_help_has_summary_and_example(cli, name):
    result = cli(name, "--help")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"Usage: cnntools {name}")
    assert "Example" in result.stdout
    assert "-h, --help" in result.stdout


def test_root_help_lists_every_command(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for name in COMMAND_NAMES:
        assert re.search(rf"^\s+{re.escape(name)}\s+\S", result.stdout, re.M), name


def test_no_arguments_shows_help(cli):
    result = cli()
    assert "Usage: cnntools" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["rf-calc", "--no-such-option"],
        ["rf-calc", "-k", "3", "--format", "xml"],
        ["conv-calc", "--in", "32", "-k", "5", "-s", "two"],
        ["no-such-command"],
    ],
)
def test_usage_errors_exit_2_with_plain_error_line(cli, args):
    result = cli(*args)
    assert result.exit_code == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error:")
    assert not BOX.search(result.stderr)


@pytest.mark.parametrize("args, code", [(["rf-calc", "-k", "0"], 2), (["info", "no-such-file.safetensors"], 1)])
def test_known_error_is_one_line(cli, args, code):
    result = cli(*args)
    assert result.exit_code == code  # a bad option value the command checks: 2; a missing file: 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_traceback(cli, how):
    args = ["rf-calc", "-k", "0"] + (["--debug"] if how == "flag" else [])
    result = cli(*args, env={"CNNTOOLS_DEBUG": "1"} if how == "env" else None)
    assert result.exit_code == 2
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")


def _tiny_app(exc: BaseException) -> typer.Typer:
    app = typer.Typer()

    def boom() -> None:
        """Raise."""
        output.configure()
        raise exc

    app.command("boom")(handle_errors(boom))

    @app.callback()
    def _root() -> None:
        """Root."""

    return app


@pytest.mark.parametrize(
    "exc, code, text",
    [
        (KeyboardInterrupt(), 130, "Interrupted."),
        (CnnError("what went wrong"), 1, "Error: what went wrong"),
        (ValueError("a bug\nsecond line"), 1, "Error: unexpected ValueError: a bug (run with --debug"),
    ],
)
def test_handle_errors_exit_codes(exc, code, text):
    result = CliRunner(env={"CNNTOOLS_DEBUG": ""}).invoke(_tiny_app(exc), ["boom"])
    assert result.exit_code == code
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert result.stderr.startswith(text)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_color_respected(monkeypatch):
    rows = [{"layer": 1, "rf": 3}]
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    coloured = FakeTerminal()
    assert output.use_color(coloured)
    output.print_table(rows, stream=coloured, title="t")
    assert "\x1b[" in coloured.getvalue()  # rich styles the header on a terminal
    monkeypatch.setenv("NO_COLOR", "1")
    plain = FakeTerminal()
    assert not output.use_color(plain)
    output.print_table(rows, stream=plain)
    assert "\x1b[" not in plain.getvalue()
    assert plain.getvalue().splitlines()[0].split() == ["layer", "rf"]


def test_force_color_colours_a_pipe(monkeypatch, run_cnntools):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("TERM", "dumb")
    assert output.use_color(io.StringIO())  # not a terminal, and TERM=dumb: forced all the same
    monkeypatch.setenv("NO_COLOR", "1")
    assert not output.use_color(FakeTerminal())  # NO_COLOR wins
    monkeypatch.setenv("FORCE_COLOR", "")
    monkeypatch.delenv("NO_COLOR")
    assert not output.use_color(io.StringIO())  # empty: not set
    piped = run_cnntools("rf-calc", "-k", "3", "-n", "3", env={"NO_COLOR": "", "FORCE_COLOR": "1"})
    assert piped.exit_code == 0 and "\x1b[" in piped.stdout, piped.stdout


def test_redirected_table_is_plain_text(run_cnntools):
    result = run_cnntools("rf-calc", "-k", "3", "-n", "3", env={"NO_COLOR": ""})
    assert result.exit_code == 0
    assert "\x1b[" not in result.stdout and not BOX.search(result.stdout)


def test_broken_pipe_is_quiet():
    # `cnntools rf-calc ... --format json | head -c 10`: the reader goes away early.
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnntools", "rf-calc", "-k", "3", "-n", "20000", "--format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    first = proc.stdout.read(10)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    code = proc.wait(timeout=60)
    assert first.startswith(b"{")
    assert stderr == ""
    assert code in (0, 1, -signal.SIGPIPE, 128 + signal.SIGPIPE)


def test_shell_pipeline_head(tmp_path):
    # The interpreter under test, not whichever `python` is first on PATH (a venv not activated).
    script = f"set -o pipefail; {shlex.quote(sys.executable)} -m cnntools rf-calc -k 3 -n 20000 --format json | head -c 10; echo; echo rc=$?"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.stdout.startswith("{")
    assert proc.stderr == ""


def test_version(cli, run_cnntools):
    assert cli("--version").stdout == f"cnntools {__version__}\n"
    result = run_cnntools("--version")
    assert result.exit_code == 0 and result.stdout == f"cnntools {__version__}\n"


def test_python_dash_m_runs_a_command(run_cnntools):
    result = run_cnntools("conv-calc", "--in", "32", "-k", "5", "-q")
    assert result.exit_code == 0 and result.stdout == "28\n"


def test_console_script_on_path():
    exe = os.path.join(os.path.dirname(sys.executable), "cnntools")
    if not os.path.exists(exe):
        pytest.skip("console script not installed next to this interpreter")
    proc = subprocess.run([exe, "rf-calc", "-k", "4", "-s", "2", "-n", "2", "-q"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "10\n"


def test_data_on_stdout_messages_on_stderr(cli):
    result = cli("conv-calc", "--in", "32", "-k", "4", "-s", "3", "--format", "json")
    assert result.exit_code == 0
    result.json()  # stdout is pure JSON although a warning was printed
    assert result.stderr.startswith("Warning:")


def help_examples(cli, name: str) -> list[list[str]]:
    """The example command lines of `cnntools NAME --help` (continuations joined, comments cut)."""
    import shlex

    text = cli(name, "--help").stdout.split("Examples:", 1)[1].split("\n\n", 1)[0]
    text = text.replace("\\\n", " ")
    return [shlex.split(line.split("  #", 1)[0])[1:] for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("name", ["conv-calc", "rf-calc"])
def test_calculator_examples_run(cli, name):
    examples = help_examples(cli, name)
    assert len(examples) >= 5
    for args in examples:
        assert args[0] == name
        result = cli(*args)
        assert result.exit_code == 0, (args, result.stderr)
        assert result.stdout.strip()


def test_commands_and_options_are_kebab_case():
    import typer.main

    from cnntools.cli.app import app

    root = typer.main.get_command(app)
    for name, command in root.commands.items():
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name), name
        for param in command.params:
            for opt in [*param.opts, *getattr(param, "secondary_opts", [])]:
                if opt.startswith("-"):
                    assert re.fullmatch(r"-[a-zA-Z]|--[a-z0-9]+(-[a-z0-9]+)*", opt), (name, opt)


def test_written_files_get_the_usual_permissions(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the file must end up as open() would make it."""
    import os
    import stat

    from cnntools.output import files

    old = os.umask(0o022)
    try:
        new = tmp_path / "new.csv"
        files.write_text(new, "a\n")
        assert stat.S_IMODE(new.stat().st_mode) == 0o644
        kept = tmp_path / "kept.csv"
        kept.write_text("x\n")
        kept.chmod(0o640)
        files.write_text(kept, "b\n")
        assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and kept.read_text() == "b\n"
    finally:
        os.umask(old)
