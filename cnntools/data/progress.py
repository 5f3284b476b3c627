"""Parallel decoding helpers: how many workers, results in order with bounded memory, a progress bar."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator


def decode_workers() -> int:
    """Decoder threads: the threads this run may use (Pillow releases the GIL while it decodes
    and resizes, so threads scale without the copies a process pool would make)."""
    from cnntools.core.runtime import thread_count

    return max(1, thread_count())


def ordered_map(pool, fn: Callable, items: Iterable, window: int) -> Iterator:
    """`fn(item)` for each item on `pool`, yielded in order, with at most `window` in flight
    (so decoded images waiting to be written never pile up)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= max(1, window):
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@contextlib.contextmanager
def decode_progress(total: int, label: str = "Decoding"):
    """A rich bar on stderr with images/s (nothing under --quiet or off a terminal); yields
    `advance(done)`."""
    from cnntools.output import emitter as output

    console = output.err_console()
    if console is None or not console.is_terminal:
        yield lambda done: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:,.0f} images/s" if task.speed else "")

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), Rate(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done: bar.update(task, completed=done)
