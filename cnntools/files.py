"""File arguments: `-` for stdin/stdout, atomic writes, nothing half-written on failure."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cnntools.output import CnnError, claim_stdout

STDIO = "-"


def display_name(path: str | os.PathLike) -> str:
    """How messages name a file argument: `stdin` for `-`, else the path."""
    return "stdin" if str(path) == STDIO else str(path)


def open_binary(path: str | os.PathLike):
    """A binary file object for reading (not stdin), with a one-line error when it cannot be opened."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise CnnError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CnnError(f"{path}: is a directory, expected a file") from None
    except OSError as error:
        raise CnnError(f"{path}: cannot read ({error.strerror})") from None


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole file, or all of stdin for `-`, with a one-line error when it cannot be read."""
    if str(path) == STDIO:
        data = sys.stdin.buffer.read()
        if not data:
            raise CnnError("nothing arrived on stdin (expected a file piped into '-')")
        return data
    with open_binary(path) as handle:
        try:
            return handle.read()
        except OSError as error:
            raise CnnError(f"{path}: cannot read ({error.strerror})") from None


def read_text(path: str | os.PathLike) -> str:
    """Text of a file or of stdin for `-` (UTF-8)."""
    data = read_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CnnError(f"{display_name(path)}: not UTF-8 text") from None


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write atomically (temporary file, then rename); `-` writes to stdout and claims it."""
    if str(path) == STDIO:
        claim_stdout()
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    with atomic_path(path) as tmp:
        _write_file(tmp, data)


def _write_file(tmp: str, data: bytes) -> None:
    # One function for the bytes of every atomic write, so the kill -9 test can stall it mid-file.
    with open(tmp, "wb") as handle:
        handle.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path next to `path` that is renamed onto it only if the block succeeds.

    The temporary file is fsynced before the rename and the folder after it, so after a crash
    or `kill -9` the target holds either its old content or the complete new one. The
    temporary name keeps the extension, so writers that pick a format by suffix (matplotlib's
    savefig) still do the right thing.
    """
    target = Path(path)
    directory = _check_target(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=directory)
    except OSError as error:
        raise CnnError(f"{path}: cannot write in folder {directory} ({error.strerror})") from None
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _new_file_mode(target))
        _fsync(tmp)
        os.replace(tmp, target)
        _fsync(directory, directory=True)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise CnnError(f"{path}: cannot write ({error.strerror or error})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _check_target(path: str | os.PathLike) -> Path:
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise CnnError(f"{path}: folder {directory} does not exist; create it first or write elsewhere")
    if target.is_dir():
        raise CnnError(f"{path}: is a folder; name a file to write")
    return directory


def _fsync(path: str | os.PathLike, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:  # some platforms cannot open folders; the rename is still atomic
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def check_output(*paths: str | os.PathLike | None) -> None:
    """Refuse output paths that cannot be written, before any work is done.

    Catches a missing folder, a folder given as the file, and a folder this process may not
    write in (by creating and removing a probe file: permission bits lie for root and
    read-only mounts). `-` and None pass.
    """
    for path in paths:
        if path is None or str(path) == STDIO:
            continue
        directory = _check_target(path)
        try:
            fd, probe = tempfile.mkstemp(prefix=".cnntools-probe.", dir=directory)
        except OSError as error:
            raise CnnError(f"{path}: cannot write in folder {directory} ({error.strerror})") from None
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)


def figure_format(path: str | os.PathLike) -> str:
    """The image format named by a figure path's extension (png, svg or pdf); the path must be writable."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in ("png", "svg", "pdf"):
        raise CnnError(f"{path}: figures are written as .png, .svg or .pdf (got '{suffix or 'no extension'}')")
    check_output(path)
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


# The folder walker of issue 14 (branch i14-reliability), the same code, so the two meet as one.
def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "not a regular file"


def walk_files(root: str | os.PathLike, wanted=lambda name: True) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(files, skipped) under `root`: the regular files whose name `wanted` accepts, and the
    wanted names that are not readable files, each with its reason.

    Hidden names (a leading dot) are left out. Links to folders are followed, but each real
    folder (by device and inode) is entered once, so `l -> .` or two links to one another
    cannot loop; each real file is listed once. Nothing is opened: a FIFO, socket or device
    is skipped on what stat says, so listing never blocks. Names are kept as Python decodes
    them (undecodable bytes as surrogates), so every byte of a name survives. Files of a
    folder come sorted, before its sub-folders (as os.walk lists them).
    """
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()
    pending = [Path(root)]
    while pending:
        folder = pending.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen_dirs:
                continue  # a link back to a folder already walked
            seen_dirs.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as listing:
                names = sorted(entry.name for entry in listing if not entry.name.startswith("."))
        except OSError as error:
            skipped.append((folder, f"cannot list the folder ({error.strerror})"))
            continue
        subfolders = []
        for name in names:
            path = folder / name
            try:
                st = os.stat(path)
            except OSError as error:
                if wanted(name):
                    reason = "a link to nothing" if os.path.islink(path) else error.strerror
                    skipped.append((path, f"cannot read ({reason})"))
                continue
            if stat.S_ISDIR(st.st_mode):
                subfolders.append(path)
            elif not wanted(name):
                continue
            elif not stat.S_ISREG(st.st_mode):
                skipped.append((path, f"{_kind(st.st_mode)}, not a regular file"))
            elif (st.st_dev, st.st_ino) not in seen_files:
                seen_files.add((st.st_dev, st.st_ino))
                files.append(path)
        pending.extend(reversed(subfolders))
    return files, skipped
