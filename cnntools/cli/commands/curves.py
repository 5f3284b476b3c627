"""`cnntools curves`: training histories of several runs on one figure, and their merged records."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from cnntools.cli import options
from cnntools.output import emitter as output
from cnntools.core.errors import CnnError, UsageError

COLUMNS = ["run", "kind", "epoch", "batch", "updates", "train_loss", "train_acc", "val_loss", "val_acc",
           "test_loss", "test_acc", "lr", "best"]


# -o/--output in this command's --help (the shared option's help is generic).
OUTPUT_HELP = "Write the figure of the histories (PNG, SVG or PDF by extension); - for stdout."

def main(
    runs: Annotated[
        List[str],
        typer.Argument(help="Checkpoints (.safetensors) or history files from train --history (.csv, .jsonl); - for stdin.",
                       show_default=False, metavar="RUN"),
    ],
    out: options.Output = None,
    label: Annotated[
        Optional[List[str]],
        typer.Option("--label", help="Name the runs in order (repeat the flag); default: the checkpoint's label, "
                     "or a history file's name."),
    ] = None,
    steps: Annotated[bool, typer.Option("--steps", help="Also list the step records (per-step losses, --val-every) in the table/CSV.")] = False,
    log_loss: Annotated[bool, typer.Option("--log-loss", help="Draw the loss on a logarithmic axis (a learning-rate sweep's diverging runs).")] = False,
    title: Annotated[Optional[str], typer.Option("--title", help="Figure title (default: the runs and their data).")] = None,
    fmt: options.Format = "table",
    quiet: options.Quiet = False,
    debug: options.Debug = False,
) -> None:
    """Training histories of several runs on one figure, and their records merged into one table.

    Each RUN is a checkpoint written by `cnntools train` (its history and step records are
    stored in it) or a `train --history` file. The figure (-o) has a loss and an accuracy panel,
    one colour per run: train solid, validation dashed, test dotted (--test-each-epoch), thin
    lines for per-step losses (--print-every) and --val-every validations, a star at the epoch
    whose weights the run kept. Stdout gets every run's records with a `run` column.

    \b
    Examples:
      cnntools curves none.safetensors relu.safetensors tanh.safetensors -o curves.png
      cnntools curves lr-*.safetensors --log-loss -o sweep.png --format csv > sweep.csv
      cnntools train --history h.jsonl -q && cnntools curves h.jsonl -o h.png
    """
    output.configure(quiet=quiet, debug=debug)
    from cnntools.output import files
    from cnntools.checkpoint import runs as runlib

    if out:
        files.figure_format(out)
    if sum(r == "-" for r in runs) > 1:
        raise UsageError("only one run can come from stdin (-)")
    if label and len(label) != len(runs):
        raise UsageError(f"--label was given {len(label)} time(s) for {len(runs)} run(s); name every run or none")
    loaded = [_read_run(path, label[i] if label else None) for i, path in enumerate(runs)]
    short = runlib.shown_labels([r.label for r in loaded], [r.source for r in loaded])
    names = runlib.distinct_labels([r.label for r in loaded], [r.source for r in loaded])
    for run, name in zip(loaded, names):
        run.label = name  # the records keep the whole label; figure and table title the short one

    if out:
        from cnntools.output.plots import save_figure, training_curves

        fig = training_curves(loaded, title=title or _title(loaded, short), labels=short.labels)
        if log_loss:
            fig.axes[0].set_yscale("log")
        save_figure(fig, out)
        output.info(f"Wrote {out}")

    records = runlib.merged_rows(loaded, include_steps=True)
    shown = records if steps else [r for r in records if r["kind"] == "epoch"]
    present = [c for c in COLUMNS if any(r.get(c) is not None for r in shown)]
    doc = {
        "runs": [{"label": r.label, "source": r.source, "best_epoch": r.best_epoch, "epochs": len(r.epochs),
                  "step_records": len(r.steps), "data": r.data} for r in loaded],
        "records": records,
    }
    rename = dict(zip(names, short.labels))

    def render() -> None:  # the table names runs as the figure does; JSON and CSV keep whole labels
        table = [{**r, "run": rename.get(r["run"], r["run"])} for r in shown]
        output.print_table(table, present, title=_table_title(loaded, short))

    output.emit(doc, fmt, schema="curves", rows=shown, columns=present, render_table=render)


def _read_run(path: str, label: str | None):
    """A Run from a checkpoint or a history file (told apart by their first bytes)."""
    from cnntools.output import files
    from cnntools.checkpoint import runs as runlib

    name = files.display_name(path)
    data = files.read_bytes(path)
    if _is_safetensors(data):
        from cnntools.checkpoint import read_checkpoint

        _, meta = read_checkpoint(path, data)
        run = runlib.run_from_checkpoint_meta(meta.to_json(), name)
        if label:
            run.label = label
        return run
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CnnError(f"{name}: neither a cnntools checkpoint nor a history file (.csv or .jsonl)") from None
    return runlib.run_from_history_text(text, name, label)


def _is_safetensors(data: bytes) -> bool:
    return len(data) > 9 and data[8:9] == b"{" and int.from_bytes(data[:8], "little") < len(data)


def _title(loaded, short) -> str:
    data = sorted({r.data for r in loaded if r.data})
    on = f" on {', '.join(data)}" if data else ""
    if len(loaded) == 1:
        return f"Training curves: {loaded[0].label}{on}"
    return f"Training curves of {len(loaded)} runs{on}" + (f"\n{short.note()}" if short.shared else "")


def _table_title(loaded, short) -> str:
    names = short.labels if len(loaded) > 1 else [r.label for r in loaded]
    runs = ", ".join(f"{name} (kept epoch {r.best_epoch})" if r.best_epoch else name for name, r in zip(names, loaded))
    return "Training records: " + runs + (f"; {short.note()}" if short.shared else "")
