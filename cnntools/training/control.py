"""How a training run stops: Ctrl-C/SIGTERM handling, the exceptions that end a run, and the
cheap non-finite gradient check."""

from __future__ import annotations

import signal
import threading

import torch

from cnntools.core import signals
from cnntools.core.errors import CnnError


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during training, after a resumable checkpoint was written.

    `exit_code` is 128 + the signal number: 130 for SIGINT, 143 for SIGTERM.
    """

    exit_code = 128 + signal.SIGINT


class NonFiniteLoss(CnnError):
    """The loss became NaN or infinite."""


def gradient_sum(model) -> torch.Tensor | None:
    """The sum of every gradient entry: NaN or inf exactly when some entry is (a finite sum
    overflows only past 3e38). 40x cheaper on CPU than the max-abs norm."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return None
    return torch.stack([g.sum(dtype=torch.float32) for g in grads]).sum()


def install_stop_signals(trainer) -> dict:
    """First Ctrl-C or SIGTERM: finish the batch, save, stop. A second: stop at once.

    A signal that arrived during start-up and whose KeyboardInterrupt was swallowed where it
    landed (a finalizer, a library's bare except) stops the run here, before its first batch.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    early = signals.received()
    if early is not None:
        stop = TrainingInterrupted()  # no message: "Interrupted." / "Terminated.", nothing was trained
        stop.exit_code = 128 + int(early)
        raise stop

    def handler(signum, frame):
        if trainer._stop.is_set():
            raise TrainingInterrupted(f"stopped at once by a second signal {signal.Signals(signum).name}")
        trainer._stop_signal = signum
        trainer._stop.set()

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, handler)
        except (ValueError, OSError):
            pass
    return previous


def restore_signals(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
