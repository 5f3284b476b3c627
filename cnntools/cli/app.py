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
    cache,
    confusion,
    conv_calc,
    curves,
    dataset_stats,
    env,
    eval as eval_cmd,
    export,
    featmaps,
    filters,
    info,
    lr_find,
    report,
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

    def format_commands(self, ctx, formatter) -> None:
        """The commands under their headings, in the order of PANELS, names in one column."""
        sections: dict[str, list] = {panel: [] for panel in PANELS}
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                sections.setdefault(getattr(command, "rich_help_panel", None) or "Commands", []).append((name, command))
        width = max((len(name) for rows in sections.values() for name, _ in rows), default=0)
        for panel, rows in sections.items():
            if rows:
                with formatter.section(panel):
                    formatter.write_dl([(name.ljust(width), command.get_short_help_str(formatter.width)) for name, command in rows])

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
    if "--output" in getattr(param, "opts", ()) and getattr(ctx.command, "output_help", None):
        text = ctx.command.output_help  # what -o writes in this command (its module's OUTPUT_HELP)
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
    output_help: str | None = None

    def collect_usage_pieces(self, ctx) -> list[str]:
        """The usage line as POSIX writes it: a required argument is plain MODEL (Typer writes
        {MODEL}, which reads like a brace expansion), an optional one [MODEL]."""
        import re

        return [re.sub(r"^\{(.+)\}(\.\.\.)?$", r"\1\2", piece) for piece in super().collect_usage_pieces(ctx)]

    def format_options(self, ctx, formatter) -> None:
        for heading, records in help_sections(self, ctx).items():
            with formatter.section(heading):
                formatter.write_dl(records)


def _command_class(func) -> type:
    module = inspect.getmodule(func)
    return type("Command", (_Command,), {"panels": getattr(module, "HELP_PANELS", {}),
                                         "output_help": getattr(module, "OUTPUT_HELP", None)})


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
    ("report", report.main),
    ("export", export.main),
    ("env", env.main),
    ("cache", cache.main),
]

# `cnntools --help` groups the commands under these headings, each with a one-liner that fits
# an 80-column terminal (the docstring's first line stays the man page's NAME line).
PANELS = {
    "Data": {"dataset-stats": "Sizes, classes, balance, mean/std and sample grids.",
             "tsne": "t-SNE of pixels or a layer's features: plot and scores."},
    "Arithmetic": {"conv-calc": "Conv/pool output sizes, or kernels applied by hand.",
                   "rf-calc": "Receptive field, jump and start, layer by layer."},
    "Training": {"train": "Train a CNN and write a safetensors checkpoint.",
                 "lr-find": "Find a learning rate with Smith's range test.",
                 "curves": "Training histories of several runs on one figure."},
    "Inspecting": {"eval": "Metrics of models on a split, or top classes of images.",
                   "confusion": "Confusion matrix and the most-confused pairs.",
                   "saliency": "Grad-CAM family and gradient saliency maps.",
                   "featmaps": "Feature maps of named layers for one image.",
                   "filters": "Kernel weights, and the images that excite filters.",
                   "report": "One self-contained HTML page per run or comparison."},
    "Models": {"info": "What a checkpoint holds, read from its header.",
               "export": "Export a model: ONNX, torch.export .pt2, weights."},
    "Environment": {"env": "Versions, devices, threads, cache: for a bug report.",
                    "cache": "List or clear the image stores in the cache folder."},
}
_PANEL_OF = {name: (panel, short) for panel, commands in PANELS.items() for name, short in commands.items()}

for _name, _func in COMMANDS:
    # Numbers are checked first (a usage error, exit 2), then the command runs under handle_errors.
    _panel, _short = _PANEL_OF[_name]
    app.command(_name, cls=_command_class(_func), context_settings=CONTEXT, rich_help_panel=_panel,
                short_help=_short)(with_checked_numbers(handle_errors(_func)))


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


def run() -> None:
    """The process entry point (console script, `python -m cnntools`): `main`, then a quick exit.

    Tearing down an interpreter that imported torch (its modules' and objects' finalizers) takes
    a large share of a short command's time (`tests/benchmarks/bench_commands.py`). Once the
    command has returned, the atexit handlers ran (temporary folders, logging, worker pools) and
    the standard streams are flushed, nothing is left for that teardown to do, so the process
    ends there with the command's status. Threads still running, a profiler or tracer (cProfile,
    coverage, a debugger: they report at exit), or a stream that cannot be flushed (its error is
    then reported as usual) fall back to Python's own exit.
    """
    try:
        main()
        code = 0
    except SystemExit as done:
        if done.code is not None and not isinstance(done.code, int):
            raise  # a message to print: Python's own exit prints it
        code = done.code or 0
    _exit_now(code)


def _exit_now(code: int) -> None:
    import atexit
    import threading

    # A profiler, coverage or debugger reports at interpreter exit; live threads are joined there.
    if threading.active_count() > 1 or sys.getprofile() is not None or sys.gettrace() is not None:
        raise SystemExit(code)
    atexit._run_exitfuncs()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        raise SystemExit(code) from None  # the normal exit flushes again and reports the error
    os._exit(code)


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
    if request.startswith("complete_"):
        from cnntools.cli.completion_scripts import register_protocol

        register_protocol()
    app(prog_name="cnntools")
