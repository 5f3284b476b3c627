"""The `cnntools` command: one Typer app that only registers the subcommands.

Each subcommand lives in its own module under `cnntools/cli/commands/`; those modules import
nothing heavy at module level, so `--help` and shell completion stay fast.
"""

from __future__ import annotations

import inspect
import os
import signal
import sys
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from cnntools import __version__
from cnntools.cli import options
from cnntools.cli.commands import (
    confusion,
    conv_calc,
    curves,
    dataset_stats,
    eval as eval_cmd,
    export,
    featmaps,
    filters,
    info,
    lr_find,
    rf_calc,
    saliency,
    train,
    tsne,
)
from cnntools.cli.options import with_checked_numbers
from cnntools.core import signals
from cnntools.output.emitter import handle_errors, plug_closed_stdio
from cnntools.core.runtime import prepare_threads

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}



class _Group(TyperGroup):
    """The root command: keeps the deprecated spellings of options working (options.DEPRECATED),
    and has Typer's --install-completion/--show-completion write cnntools' own scripts."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:  # Typer appends its two options after building the group
            if param.name in _COMPLETION_OPTIONS:
                param.callback = _COMPLETION_OPTIONS[param.name]
        return params

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:
            takes_value = {opt for p in command.params if getattr(p, "param_type_name", "") == "option"
                           and not getattr(p, "is_flag", False) for opt in p.opts}
            rest = options.rewrite_deprecated(name, rest, takes_value, notes=not ctx.resilient_parsing)
        return name, command, rest


def _install_completion(ctx, param, value) -> None:
    if value and not ctx.resilient_parsing:
        from cnntools.cli import completion_scripts

        shell = completion_scripts.current_shell()
        path = completion_scripts.install(shell)
        typer.echo(f"{shell} completion installed in {path}", err=True)
        typer.echo("Completion will take effect once you restart the terminal", err=True)
        raise typer.Exit()


def _show_completion(ctx, param, value) -> None:
    if value and not ctx.resilient_parsing:
        from cnntools.cli import completion_scripts

        typer.echo(completion_scripts.script(completion_scripts.current_shell()), nl=False)
        raise typer.Exit()


_COMPLETION_OPTIONS = {"install_completion": handle_errors(_install_completion),
                       "show_completion": handle_errors(_show_completion)}


# Python types as Typer shows them → metavars that name the thing (an option with its own
# metavar keeps it; choices keep their <a|b|c> list).
_METAVARS = {"<int>": "N", "<float>": "NUM", "<str>": "TEXT", "<list[str]>": "TEXT...", "<list[int]>": "N..."}


def help_record(param, ctx) -> tuple[str, str] | None:
    """(term, help) of a parameter as --help and the man pages show it."""
    if getattr(param, "param_type_name", "") == "argument":
        if getattr(param, "hidden", False):
            return None
        term = param.metavar or (param.name or "").upper()
        return (term + ("..." if param.nargs == -1 else ""), getattr(param, "help", "") or "")
    record = param.get_help_record(ctx)
    if record is None:
        return None
    term, text = record
    for shown, name in _METAVARS.items():
        term = term.replace(f" {shown}", f" {name}")
    return term, text


def help_sections(command, ctx) -> dict[str, list[tuple[str, str]]]:
    """A command's parameters as {heading: [(term, help)]}: "Arguments", the command's own
    "Options", then the groups (see `_Command`), the shared output switches last."""
    panels = getattr(command, "panels", {})
    sections: dict[str, list] = {}
    for param in command.get_params(ctx):
        record = help_record(param, ctx)
        if record is None:
            continue
        if getattr(param, "param_type_name", "") == "argument":
            heading = "Arguments"
        elif param.name == "help":
            heading = options.PANEL_OUTPUT
        else:
            heading = panels.get(param.name) or getattr(param, "rich_help_panel", None) or "Options"
        sections.setdefault(heading, []).append(record)
    order = sorted(sections, key=lambda h: (h != "Arguments", h != "Options", h == options.PANEL_OUTPUT))
    return {heading: sections[heading] for heading in order}


class _Command(TyperCommand):
    """A subcommand whose --help groups its options under headings, like timm's argument
    groups: an option's `rich_help_panel` (the shared ones have theirs in options.py), else
    the command module's HELP_PANELS {parameter name: heading}, else "Options"."""

    panels: dict = {}

    def format_options(self, ctx, formatter) -> None:
        for heading, records in help_sections(self, ctx).items():
            with formatter.section(heading):
                formatter.write_dl(records)


def _command_class(func) -> type:
    return type("Command", (_Command,), {"panels": getattr(inspect.getmodule(func), "HELP_PANELS", {})})


app = typer.Typer(
    name="cnntools",
    cls=_Group,
    help="Small Unix-style tools to build, train and inspect convolutional neural networks.",
    epilog="Run 'cnntools COMMAND --help' for a command's options and an example.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=True,  # Typer's options, answered with cnntools' scripts (_Group)
    context_settings=CONTEXT,
)

# Order here is the order of `cnntools --help`: the workflow from data to interpretation.
COMMANDS = [
    ("dataset-stats", dataset_stats.main),
    ("tsne", tsne.main),
    ("conv-calc", conv_calc.main),
    ("rf-calc", rf_calc.main),
    ("train", train.main),
    ("lr-find", lr_find.main),
    ("info", info.main),
    ("curves", curves.main),
    ("eval", eval_cmd.main),
    ("confusion", confusion.main),
    ("saliency", saliency.main),
    ("featmaps", featmaps.main),
    ("filters", filters.main),
    ("export", export.main),
]

for _name, _func in COMMANDS:
    # Numbers are checked first (a usage error, exit 2), then the command runs under handle_errors.
    app.command(_name, cls=_command_class(_func), context_settings=CONTEXT)(with_checked_numbers(handle_errors(_func)))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cnntools {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """Small Unix-style tools to build, train and inspect convolutional neural networks."""


def main() -> None:
    """Console-script entry point."""
    # First of all: Ctrl-C raises and is remembered, SIGTERM unwinds like Ctrl-C (no
    # half-written temporary file is left, exit status 143). A signal whose exception some
    # library swallowed still ends the command with 128 + its number (core/signals.py).
    signals.install()
    try:
        _run()
    except KeyboardInterrupt as stop:  # before the command's own handler (start-up, Typer building it)
        code = getattr(stop, "exit_code", 128 + (signals.received() or signal.SIGINT))
        print("Terminated." if code == 128 + signal.SIGTERM else "Interrupted.", file=sys.stderr)
        raise SystemExit(code) from None
    except SystemExit as done:
        # Click turns a Ctrl-C outside the command itself (while parsing) into "Aborted!" and
        # exit 1; a signal swallowed where it landed would let the command end with 0.
        stop = signals.received()
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if stop is not None and code < 128:
            raise SystemExit(128 + stop) from None
        raise
    if signals.received() is not None:  # (the completion scripts return without exiting)
        raise SystemExit(128 + signals.received())


def _run() -> None:
    # Die quietly on a closed pipe (`cnntools ... | head`), like any Unix filter.
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    plug_closed_stdio()
    prepare_threads()  # before any command imports torch
    request = os.environ.get("_CNNTOOLS_COMPLETE", "")
    if request in ("source_bash", "source_zsh", "source_fish"):  # cnntools' own scripts; Typer's for powershell
        from cnntools.cli.completion_scripts import script

        sys.stdout.write(script(request.removeprefix("source_")))
        return
    app(prog_name="cnntools")
