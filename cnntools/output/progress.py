"""Progress bars on stderr: the one helper every bar is made with (`progress_bar`, `start_bar`),
and train's line built on it, which says what a run is doing and how long the whole of it has left.

    epoch 3/20 ━━━━━━━━━━━━━━       12/41  612 img/s  loss 0.4321  acc 0.8765  lr 0.001  left 0:03:12

Shown only on a terminal (a redirected stderr would collect every redraw) and never under
--quiet. The time left covers the whole run, not the epoch: it is the mean time per update
of this run so far, validation passes between epochs included, times the updates still to
come.
"""

from __future__ import annotations

import contextlib
import time


def plural(count: int, noun: str) -> str:
    """`1 epoch`, `2 epochs` (regular English nouns)."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def format_duration(seconds: float) -> str:
    """h:mm:ss (and `Nd h:mm:ss` past a day), the way rich and tqdm show times."""
    seconds = max(0, int(round(seconds)))
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    text = f"{hours}:{minutes:02d}:{seconds:02d}"
    return f"{days}d {text}" if days else text


class Bar:
    """One rich progress bar on stderr, or nothing at all (`Bar()`: under --quiet, off a terminal).

    `update(completed=N)` / `update(advance=N)` move it, `stats=` sets the text after the count;
    calling it, `bar(done)`, is `update(completed=done)`, so a bar serves as the `progress(n)`
    callback of `inference.batches.predict`.
    """

    def __init__(self, progress=None, task=None):
        self.progress, self.task = progress, task

    @property
    def shown(self) -> bool:
        """Whether a bar is drawn (callers skip work that only feeds it, like formatting stats)."""
        return self.progress is not None

    def update(self, completed: int | None = None, *, advance: int | None = None, stats: str | None = None) -> None:
        if self.progress is None:
            return
        fields = {} if stats is None else {"stats": stats}
        self.progress.update(self.task, completed=completed, advance=advance, **fields)

    def __call__(self, done: int) -> None:
        self.update(completed=done)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def start_bar(label: str, total: int, *, completed: int = 0, rate: str | None = None, elapsed: bool = False,
              remaining: bool = False, stats: bool = False, bar_width: int = 40, console=None) -> Bar:
    """A started bar `label ━━━━  done/total` on stderr, the bar gone once stopped; a silent
    `Bar()` under --quiet or when stderr is not a terminal (a redirected stderr would collect
    every redraw).

    rate: a unit ("images") to show the speed in; elapsed/remaining: the time columns;
    stats: a text column set by `update(stats=...)`; console: draw there instead (tests).
    """
    if console is None:
        from cnntools.output import emitter as output

        console = output.err_console()
        if console is None or not console.is_terminal:
            return Bar()
    from rich.markup import escape
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns = [TextColumn(escape(label)), BarColumn(bar_width=bar_width), MofNCompleteColumn()]
    if rate:
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task):
                return Text(f"{task.speed:,.0f} {rate}/s" if task.speed else "")

        columns.append(Rate())
    if elapsed:
        columns.append(TimeElapsedColumn())
    if remaining:
        columns.append(TimeRemainingColumn())
    if stats:
        columns.append(TextColumn("{task.fields[stats]}"))
    progress = Progress(*columns, console=console, transient=True)
    task = progress.add_task(label, total=total, completed=completed, stats="")
    progress.start()
    return Bar(progress, task)


@contextlib.contextmanager
def progress_bar(label: str, total: int, **columns):
    """`start_bar` as a context manager: yields the Bar and stops it however the block ends."""
    bar = start_bar(label, total, **columns)
    try:
        yield bar
    finally:
        bar.stop()


class TrainProgress:
    """The per-epoch bar of a run of `epochs` epochs of `steps_per_epoch` updates each.

    The trainer calls `start(epoch, steps, done)`, `advance(images, running)` after every
    update (`running`: None, or {"loss", "acc", "lr"} of the epoch so far where it read them),
    and `stop()`.
    """

    def __init__(self, console, epochs: int, steps_per_epoch: int, clock=time.perf_counter):
        self.console = console
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.clock = clock
        self.bar: Bar | None = None
        self.run_start: float | None = None
        self.run_steps = 0  # updates made by this process since it started (a resumed run counts from there)
        self.epoch = 0
        self.epoch_start = 0.0
        self.epoch_images = 0

    @classmethod
    def create(cls, epochs: int, steps_per_epoch: int) -> "TrainProgress | None":
        from cnntools.output import emitter as output

        console = output.err_console()
        return cls(console, epochs, steps_per_epoch) if console is not None and console.is_terminal else None

    def start(self, epoch: int, total: int, done: int = 0) -> None:
        self.stop()
        now = self.clock()
        if self.run_start is None:
            self.run_start = now
        self.epoch, self.epoch_start, self.epoch_images = epoch, now, 0
        self.position = done
        self.bar = start_bar(f"epoch {epoch}/{self.epochs}", total, completed=done, stats=True, bar_width=20,
                             console=self.console)
        self.running: dict = {}

    def advance(self, images: int, running: dict | None = None) -> None:
        if self.bar is None:
            return
        self.run_steps += 1
        self.position += 1
        self.epoch_images += images
        if running:
            self.running = running
        self.bar.update(advance=1, stats=self.stats())

    def stats(self) -> str:
        now = self.clock()
        parts = []
        seconds = now - self.epoch_start
        if seconds > 0:
            parts.append(f"{self.epoch_images / seconds:,.0f} img/s")
        for key, spec in (("loss", ".4f"), ("acc", ".4f"), ("lr", ".3g")):
            if self.running.get(key) is not None:
                parts.append(f"{key} {format(self.running[key], spec)}")
        left = self.time_left(now)
        if left is not None:
            parts.append(f"left {format_duration(left)}")
        return "  ".join(parts)

    def time_left(self, now: float) -> float | None:
        """Seconds until the last epoch ends, from this run's mean time per update."""
        if self.run_start is None or self.run_steps == 0:
            return None
        remaining = (self.epochs - self.epoch) * self.steps_per_epoch + (self.steps_per_epoch - self.position)
        return (now - self.run_start) / self.run_steps * max(0, remaining)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
