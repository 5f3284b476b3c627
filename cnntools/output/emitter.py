"""The one emitter: data to stdout (table, JSON, CSV), messages to stderr, errors and exit codes.

Every command hands its result here. Stdout carries data only; everything a person reads
while a command runs (progress, warnings, notes) goes to stderr and is silenced by
`-q/--quiet`. When a file argument is `-`, that file owns stdout and the command's table
or summary moves to stderr (`claim_stdout`).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from cnntools.core import job
from cnntools.core.errors import (  # noqa: F401  (re-used here; raised everywhere)
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    CnnError,
    Terminated,
)


class _State:
    quiet = False
    debug = False
    stdout_claimed = False


_state = _State()


def configure(quiet: bool = False, debug: bool = False) -> None:
    """Set the per-invocation switches shared by every command."""
    _state.quiet = quiet
    _state.debug = debug
    _state.stdout_claimed = False


def is_quiet() -> bool:
    return _state.quiet


def debug_enabled() -> bool:
    return _state.debug or os.environ.get("CNNTOOLS_DEBUG", "") not in ("", "0")


def claim_stdout() -> None:
    """Mark stdout as taken by a file argument `-`; tables and summaries go to stderr."""
    _state.stdout_claimed = True


def data_stream():
    """Where tables and JSON documents go: stdout unless a `-` file argument owns it.

    Moved to stderr they are chatter beside the real output, so --quiet silences them.
    """
    if not _state.stdout_claimed:
        return stdout()
    return io.StringIO() if _state.quiet else sys.stderr


def stdout():
    """sys.stdout, or one clean error when the shell closed it (`>&-` leaves it None)."""
    if sys.stdout is None:
        raise CnnError("stdout: cannot write (it is closed); redirect it to a file or to /dev/null")
    return sys.stdout


def write_data(text: str, stream=None) -> None:
    """Write and flush data text; a failing stdout (disk full, closed, I/O error) is one `Error:` line.

    A file name that is not valid UTF-8 is written back as its original bytes (lossless), where
    a strict UTF-8 stream would refuse it.
    """
    stream = stream or data_stream()

    def write() -> None:
        try:
            stream.write(text)
        except UnicodeEncodeError:
            stream.flush()
            buffer = getattr(stream, "buffer", None)
            if buffer is None:
                stream.write(text.encode("utf-8", "backslashreplace").decode("ascii", "replace"))
            else:
                buffer.write(text.encode("utf-8", "surrogateescape"))
        stream.flush()

    guarded_write(write, stream)


def guarded_write(write: Callable[[], None], stream=None) -> None:
    """Run `write`; an OSError from the stream becomes one `Error: stdout: cannot write (...)` line."""
    try:
        write()
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as error:  # ValueError: the stream was closed under us
        name = {id(sys.stdout): "stdout", id(sys.stderr): "stderr"}.get(id(stream), "stdout")
        reason = getattr(error, "strerror", None) or str(error)
        raise CnnError(f"{name}: cannot write ({reason})") from None


def use_color(stream) -> bool:
    """Colour for a terminal, never with NO_COLOR set (no-color.org) or TERM=dumb; FORCE_COLOR
    set and not empty (force-color.org) colours a pipe or a dumb terminal too (NO_COLOR wins)."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    if os.environ.get("TERM") == "dumb":
        return False
    return hasattr(stream, "isatty") and stream.isatty()


def console_color(stream) -> dict:
    """rich Console arguments that follow `use_color` (rich alone would not colour a pipe under
    FORCE_COLOR, nor anything under TERM=dumb)."""
    if not use_color(stream):
        return {"no_color": True}
    return {"force_terminal": True, "color_system": "standard" if os.environ.get("TERM") == "dumb" else "auto"}


# ---------------------------------------------------------------------------- messages


def info(message: str) -> None:
    """A progress note for people, on stderr; silent under --quiet."""
    if not _state.quiet:
        print(escape(message), file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A warning on stderr; silent under --quiet."""
    if not _state.quiet:
        print(f"Warning: {escape(message)}", file=sys.stderr, flush=True)


def err_console():
    """A rich Console on stderr for progress bars (None under --quiet)."""
    if _state.quiet:
        return None
    from rich.console import Console

    return Console(stderr=True, highlight=False, **console_color(sys.stderr))


# ---------------------------------------------------------------------------- data


def to_jsonable(value: Any) -> Any:
    """Plain JSON types from numpy/torch scalars, tuples and non-finite floats (-> null)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return to_jsonable(value.tolist())
    if hasattr(value, "item"):
        return to_jsonable(value.item())
    return str(value)


def format_cell(value: Any, digits: int = 4) -> str:
    """A table cell: floats to `digits` significant decimals, None as blank."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 10**-digits):
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return " ".join(format_cell(v, digits) for v in value)
    return escape(str(value))


def _columns_of(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        return list(columns)
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def print_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    title: str | None = None,
    stream=None,
    headers: Mapping[str, str] | None = None,
    numeric_text: Sequence[str] = (),
) -> None:
    """Rows as a table: rich on a terminal, plain aligned text when redirected. Number columns
    are right-aligned, and so are `numeric_text` columns (numbers the caller wrote as text)."""
    stream = stream or data_stream()
    cols = _columns_of(rows, columns)
    headers = headers or {}
    names = [escape(str(headers.get(c, c))) for c in cols]
    title = escape(title) if title else title
    cells = [[format_cell(row.get(c)) for c in cols] for row in rows]
    numeric = [
        c in numeric_text
        or all(isinstance(row.get(c), (int, float)) and not isinstance(row.get(c), bool) for row in rows if row.get(c) is not None)
        for c in cols
    ]
    if use_color(stream):
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, title_justify="left", header_style="bold")
        for name, is_num in zip(names, numeric):
            table.add_column(name, justify="right" if is_num else "left")
        for line in cells:
            table.add_row(*line)
        # markup=False: a class name such as "[red]" is text, not a style
        guarded_write(lambda: Console(file=stream, highlight=False, markup=False, **console_color(stream)).print(table), stream)
        return
    widths = [max([len(n)] + [len(line[i]) for line in cells]) for i, n in enumerate(names)]

    def fmt(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    out = []
    if title:
        out.append(title)
    out.append(fmt(names))
    out.extend(fmt(line) for line in cells)
    write_data("\n".join(out) + "\n", stream)


SCHEMA_VERSION = 1


def schema_id(name: str) -> str:
    """`cnntools.NAME/1`, the `schema` every JSON document carries (docs/schemas/NAME.md).

    NAME is the command's name; a command with a second kind of document names it
    `COMMAND.KIND` (`featmaps.layers`).
    """
    return f"cnntools.{name}/{SCHEMA_VERSION}"


def stamped(doc: Mapping[str, Any], schema: str) -> dict:
    """The document with `"schema"` as its first key."""
    return {"schema": schema_id(schema), **{k: v for k, v in doc.items() if k != "schema"}}


def print_json(doc: Mapping[str, Any], *, schema: str, stream=None) -> None:
    """One JSON document, stamped with its schema (non-finite floats become null)."""
    write_data(json.dumps(to_jsonable(stamped(doc, schema)), indent=2, allow_nan=False) + "\n", stream)


def print_jsonl(record: Mapping[str, Any], *, schema: str, stream=None) -> None:
    """One JSON object on one line (streams such as `train --format jsonl`), stamped with its schema."""
    write_data(json.dumps(to_jsonable(stamped(record, schema)), allow_nan=False) + "\n", stream)


def csv_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows as CSV text with a header line."""
    rows = list(rows)
    cols = _columns_of(rows, columns)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(cols)
    for row in rows:
        writer.writerow([csv_cell(row.get(c)) for c in cols])
    return buffer.getvalue()


def csv_cell(value: Any) -> str:
    """A CSV cell as JSON spells it: true/false, lists and objects as JSON text, None empty."""
    value = to_jsonable(value)
    if value is None:
        return ""
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def flatten(doc: Mapping[str, Any], prefix: str = "", lists: bool = False) -> dict[str, Any]:
    """Nested objects as dotted keys (`bytes.weights`): the names of a document's values in
    tables and CSV. With `lists`, list items too (`mean.0`); otherwise lists stay values."""
    out: dict[str, Any] = {}
    items = enumerate(doc) if isinstance(doc, list) else doc.items()
    for key, value in items:
        name = f"{prefix}{key}"
        if (isinstance(value, Mapping) or (lists and isinstance(value, list))) and value:
            out.update(flatten(value, name + ".", lists))
        else:
            out[name] = value
    return out


def long_rows(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A document as long-format rows `{"field": PATH, "value": V}`, one per value it holds."""
    return [{"field": k, "value": v} for k, v in flatten(doc, lists=True).items() if k != "schema"]


def print_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None, stream=None) -> None:
    write_data(csv_text(rows, columns), stream)


def emit(
    doc: Mapping[str, Any],
    fmt: str,
    *,
    schema: str,
    rows: Sequence[Mapping[str, Any]] | None = None,
    columns: Sequence[str] | None = None,
    title: str | None = None,
    render_table: Callable[[], None] | None = None,
) -> None:
    """Write a command's result in the chosen format.

    `doc` is the JSON document; `rows`/`columns` the table (and CSV) view of it;
    `render_table` replaces the default table rendering when a command shows more than
    one table. `schema` names the document's kind (see `schema_id`).
    """
    if fmt == "json":
        print_json(doc, schema=schema)
    elif fmt == "csv":
        if rows is None:
            raise CnnError("this command's result is not a table; use --format json or table")
        print_csv(rows, columns)
    elif render_table is not None:
        render_table()
    elif rows is not None:
        print_table(rows, columns, title=title)
    else:
        print_json(doc, schema=schema)


# ---------------------------------------------------------------------------- errors


def handle_errors(func: Callable) -> Callable:
    """Wrap a command: known errors as one line (exit 1; bad usage 2), Ctrl-C as 130, SIGTERM as 143, quiet broken pipes.

    Any other exception is a bug: one line too, unless --debug/CNNTOOLS_DEBUG asks for
    the traceback.
    """
    import typer

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except CnnError as error:
            if debug_enabled():
                traceback.print_exc()
            report_error(str(error), secondary=getattr(error, "secondary", False))
            raise typer.Exit(getattr(error, "exit_code", EXIT_ERROR)) from None  # UsageError: 2
        except KeyboardInterrupt as stop:
            code = getattr(stop, "exit_code", EXIT_INTERRUPTED)
            # A stop with a message (train's) has already said what it saved; under a
            # distributed job only rank 0 speaks, and `train --nproc`'s launcher for all.
            if not str(stop) and _speaks_for_the_job():
                print("Terminated." if code == EXIT_TERMINATED else "Interrupted.", file=sys.stderr)
            raise typer.Exit(code) from None
        except BrokenPipeError:
            _silence_broken_pipe()
            raise typer.Exit(EXIT_ERROR) from None
        except Exception as error:  # noqa: BLE001 - the last line of defence
            if debug_enabled():
                traceback.print_exc()
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            report_error(f"unexpected {type(error).__name__}: {message} (run with --debug for the traceback)")
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper


def escape(text: str) -> str:
    """Text safe to show on a terminal: control characters as `\\x1b`, `\\n`, `\\t`; the bytes of a
    file name that is not valid UTF-8 (decoded by Python as lone surrogates) as `\\xff`.

    Every string that came from a file (class names, paths, CSV cells) passes through here
    before it reaches a table or a message, so it can neither recolour nor rewrite the
    user's terminal nor split a row. JSON and CSV keep the exact value.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape_char(c) for c in text)


def _escape_char(c: str) -> str:
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's surrogateescape of one undecodable byte
        return f"\\x{code - 0xDC00:02x}"
    return repr(c)[1:-1] if c != "'" else c


def one_line(message: str) -> str:
    """The message with control characters escaped, so an error stays one line whatever the
    input it quotes (a file name or argument with a newline or carriage return in it)."""
    return escape(message)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _speaks_for_the_job() -> bool:
    """Alone, or rank 0 of a torchrun job; not a process of `train --nproc` (its launcher speaks)."""
    return job.rank_name() in (None, "0") and not job.launched_by_nproc()


def report_error(message: str, secondary: bool = False) -> None:
    """The one `Error: ...` line on stderr (`rank N: ` first on the other ranks of a job).

    In a distributed job the error is also recorded for the launcher (`job.record_error`);
    `secondary` marks an error caused by another process. A process started by `train --nproc`
    prints nothing: its launcher reports the job's root cause as the one line.
    """
    job.record_error(message, secondary)
    if job.launched_by_nproc():
        return
    rank = job.rank_name()
    prefix = f"rank {rank}: " if rank not in (None, "0") else ""
    print(f"Error: {prefix}{one_line(message)}", file=sys.stderr)


def _silence_broken_pipe() -> None:
    # Python flushes stdout at exit and would complain again; point it at devnull.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def plug_closed_stdio() -> None:
    """Give a closed fd 0, 1 or 2 (`cnntools ... >&-`) a harmless stand-in.

    Otherwise the next file opened (a checkpoint being written) would get fd 1, and anything
    written to "stdout" by a library or a child process would land inside it. The stand-in is
    /dev/null opened read-only, so writes to it still fail (EBADF) and are reported, never
    silently lost. Python has already set sys.stdout to None, which `stdout()` reports.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            try:
                stand_in = os.open(os.devnull, os.O_RDONLY)
            except OSError:
                return
            if stand_in != fd:
                os.dup2(stand_in, fd)
                os.close(stand_in)
