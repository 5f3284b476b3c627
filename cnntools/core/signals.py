"""Ctrl-C and SIGTERM from a command's first line to its last: raised, and remembered.

Python's own SIGINT handler raises KeyboardInterrupt wherever the main thread happens to
be, and an exception raised inside a weakref finalizer, a `__del__` or a library's bare
`except:` is swallowed there ("Exception ignored in ..."): the interrupt is lost and the
command runs on (train's memory estimate releases every tensor through a finalizer). The
handlers installed here, before any work starts, raise as Python's do and also record the
signal, so a command that reaches its next check point (train, before its first batch) or
its end still stops with 128 + the signal's number.
"""

from __future__ import annotations

import signal

from cnntools.core.errors import Terminated

_received: list[int] = []


def install() -> None:
    """SIGINT raises KeyboardInterrupt (unless it was ignored when the process started, as for
    a background job), SIGTERM raises `Terminated`; both are recorded (`received`)."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _raise)
    signal.signal(signal.SIGTERM, _raise)


def _raise(signum, frame) -> None:
    _received.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def received() -> int | None:
    """The first SIGINT or SIGTERM this process received through these handlers, or None."""
    return _received[0] if _received else None


def forget() -> None:
    """Clear the record (for in-process tests that send signals to themselves)."""
    _received.clear()
