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
    """A bar on stderr with images/s and the time left (nothing under --quiet or off a
    terminal); yields `advance(done)`."""
    from cnntools.output.progress import progress_bar

    with progress_bar(label, total, rate="images", remaining=True) as bar:
        yield bar
