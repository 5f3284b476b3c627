"""`cnntools info`: what a checkpoint holds, read from its header without torch."""

from __future__ import annotations

from typing import Annotated

import typer

from cnntools.cli import options
from cnntools.output import emitter as output
from cnntools.cli.completion import complete_model

# Class names shown in the table before "... (N in all)"; JSON and CSV carry all of them.
_TABLE_CLASSES = 12


def main(
    checkpoints: Annotated[
        list[str], typer.Argument(metavar="CHECKPOINT", autocompletion=complete_model, help="cnntools .safetensors checkpoints (- for stdin).", show_default=False)
    ],
    show_all: Annotated[bool, typer.Option("--all", help="Show every field in the table (the JSON and CSV always carry them all).")] = False,
    fmt: options.Format = "table",
    quiet: options.Quiet = False,
    debug: options.Debug = False,
) -> None:
    """Show what a checkpoint holds: model, classes, data recipe, options, history, bytes.

    The table is a short card by default: architecture, label, input, parameters, classes,
    data, the training recipe, the kept epoch and its numbers (marked "kept epoch"), the run's
    totals (marked "run"), bytes and versions. --all shows every field. Reads only the safetensors header (never the weights, never torch), so it is instant
    even for large files. Shows the architecture and its config, the run's label, the class
    names, the normalisation mean/std, the data recipe (dataset, folder, validation split,
    seed), every resolved training option, a summary of the history (epochs, best epoch by
    validation accuracy, the kept epoch, the final epoch's numbers), the parameter count,
    what the file's bytes hold (header, weights, resume state) and the cnntools and torch
    versions that wrote it. Several checkpoints are shown side by side. The table's field
    names under --all are the JSON document's keys joined by dots, and the CSV's columns.

    \b
    Examples:
      cnntools info model.safetensors
      cnntools info model.safetensors --all              # every field
      cnntools info a.safetensors b.safetensors          # side by side
      cnntools info model.safetensors --format json | jq .checkpoints[0].history.best_epoch
      cnntools info runs/*.safetensors --format csv > runs.csv
    """
    output.configure(quiet=quiet, debug=debug)
    from cnntools.output import files
    from cnntools.checkpoint.summary import card, summarize
    from cnntools.checkpoint.file_format import decode_metadata, read_header

    if checkpoints.count(files.STDIO) > 1:
        raise output.CnnError("stdin ('-') can be read only once")
    records = []
    for path in checkpoints:
        header, header_bytes, file_bytes = read_header(path)
        meta = decode_metadata(header, files.display_name(path))
        records.append(summarize(header, meta, files.display_name(path), file_bytes, header_bytes))
    flat = [output.flatten(r) for r in records]
    shown = flat if show_all else [{"file": r["file"], **card(r)} for r in records]
    output.emit(
        {"checkpoints": records},
        fmt,
        schema="info",
        rows=flat,
        render_table=lambda: output.print_table(_side_by_side(shown, keep_empty=show_all), headers={"field": "field"}),
    )


def _side_by_side(flat: list[dict], keep_empty: bool = True) -> list[dict]:
    """One row per field, one column per checkpoint (named by its file); `keep_empty=False`
    leaves out the fields no checkpoint has a value for."""
    fields: dict[str, None] = {}
    for record in sorted(flat, key=len, reverse=True):  # the fullest record's order first
        fields.update(dict.fromkeys(k for k in record if k != "file"))
    names = _column_names([record["file"] for record in flat])
    rows = []
    for field in fields:
        row = {"field": field}
        for name, record in zip(names, flat):
            row[name] = _cell(field, record.get(field))
        if keep_empty or any(row[name] is not None for name in names):
            rows.append(row)
    return rows


def _column_names(files_: list[str]) -> list[str]:
    """File names as column names, numbered when the same file is shown twice."""
    seen: dict[str, int] = {}
    out = []
    for name in files_:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def _cell(field: str, value):
    if field == "classes" and isinstance(value, list) and len(value) > _TABLE_CLASSES:
        return " ".join(value[:_TABLE_CLASSES]) + f" ... ({len(value)} in all)"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return " ".join(output.format_cell(v) for v in value)
    if value == {}:
        return None
    return value
