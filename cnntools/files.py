"""File arguments: `-` for stdin/stdout, atomic writes, nothing half-written on failure."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cnntools.output import CnnError, claim_stdout

STDIO = "-"


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole file, or all of stdin for `-`, with a one-line error when it cannot be read."""
    if str(path) == STDIO:
        data = sys.stdin.buffer.read()
        if not data:
            raise CnnError("nothing arrived on stdin (expected a file piped into '-')")
        return data
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CnnError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CnnError(f"{path}: is a directory, expected a file") from None
    except OSError as error:
        raise CnnError(f"{path}: cannot read ({error.strerror})") from None


def read_text(path: str | os.PathLike) -> str:
    """Text of a file or of stdin for `-` (UTF-8)."""
    data = read_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CnnError(f"{'stdin' if str(path) == STDIO else path}: not UTF-8 text") from None


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write atomically (temporary file, then rename); `-` writes to stdout and claims it."""
    if str(path) == STDIO:
        claim_stdout()
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path next to `path` that is renamed onto it only if the block succeeds.

    The temporary name keeps the extension, so writers that pick a format by suffix
    (matplotlib's savefig) still do the right thing.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise CnnError(f"{path}: folder {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _new_file_mode(target))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def figure_format(path: str | os.PathLike) -> str:
    """The image format named by a figure path's extension (png, svg or pdf)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in ("png", "svg", "pdf"):
        raise CnnError(f"{path}: figures are written as .png, .svg or .pdf (got '{suffix or 'no extension'}')")
    return suffix


def _new_file_mode(target: Path) -> int:
    """The permissions a plainly written file would get: the old file's, else 0666 minus the umask.

    mkstemp creates its file 0600, which would leave every figure and checkpoint unreadable
    to the rest of a course's group.
    """
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask
