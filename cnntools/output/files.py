"""File arguments: `-` for stdin/stdout, atomic writes, nothing half-written on failure, safe reads
and folder walks (no blocking on a FIFO, no symlink loops, any byte in a name)."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cnntools.core.errors import CnnError, UsageError
from cnntools.output.emitter import claim_stdout, escape

STDIO = "-"


# Reading any input stops here: enough for every real checkpoint, CSV or matrix, and a bound
# on what a pipe or a device that never ends can make this process allocate.
READ_LIMIT = 2 * 2**30


def display_name(path: str | os.PathLike) -> str:
    """How messages name a file argument: `stdin` for `-`, else the path, escaped for the terminal
    (control characters and the bytes of a name that is not valid UTF-8 shown as `\\x..`)."""
    return "stdin" if str(path) == STDIO else escape(os.fsdecode(path))


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "not a regular file"


def open_binary(path: str | os.PathLike):
    """A binary file object for reading (not stdin), with a one-line error when it cannot be opened.

    The path is looked at before it is opened: a folder or a device is refused, and a FIFO (a
    pipe, as `<(command)` gives) is opened without waiting for a writer, so opening never blocks.
    """
    name = display_name(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CnnError(f"{name}: no such file") from None
    except OSError as error:
        raise CnnError(f"{name}: cannot read ({error.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise CnnError(f"{name}: is a directory, expected a file")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        raise CnnError(f"{name}: is {_kind(st.st_mode)}, not a file; give a regular file, a pipe, or - for stdin")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
        if not stat.S_ISREG(os.fstat(fd).st_mode) and not stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)  # swapped for something else since the stat
            raise CnnError(f"{name}: is not a regular file or a pipe")
        os.set_blocking(fd, True)  # reads wait for a writer that is there; a FIFO with none reads as empty
        return os.fdopen(fd, "rb")
    except OSError as error:
        raise CnnError(f"{name}: cannot read ({error.strerror})") from None


def read_bytes(path: str | os.PathLike, limit: int = READ_LIMIT) -> bytes:
    """The whole file, or all of stdin for `-`, with a one-line error when it cannot be read.

    At most `limit` bytes are read: a larger input (or one that never ends) is refused.
    """
    name = display_name(path)
    if str(path) == STDIO:
        data = _read_capped(sys.stdin.buffer, limit, name)
        if not data:
            raise CnnError("nothing arrived on stdin (expected a file piped into '-')")
        return data
    with open_binary(path) as handle:
        return _read_capped(handle, limit, name)


def _read_capped(handle, limit: int, name: str) -> bytes:
    try:
        data = handle.read(limit + 1)
    except OSError as error:
        raise CnnError(f"{name}: cannot read ({error.strerror})") from None
    if len(data) > limit:
        raise CnnError(f"{name}: more than {limit:,} bytes, larger than any input of this kind; not read")
    return data


def read_text(path: str | os.PathLike, limit: int = READ_LIMIT) -> str:
    """Text of a file or of stdin for `-` (UTF-8)."""
    data = read_bytes(path, limit)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CnnError(f"{display_name(path)}: not UTF-8 text") from None


def walk_files(root: str | os.PathLike, wanted=lambda name: True,
               stats: dict | None = None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(files, skipped) under `root`: the regular files whose name `wanted` accepts, and the
    wanted names that are not readable files, each with its reason; `stats`, when given,
    gets each listed file's stat result (the one stat the walk made of it).

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
                if stats is not None:
                    stats[path] = st
        pending.extend(reversed(subfolders))
    return files, skipped


# ---------------------------------------------------------------------------- writing


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path`: `-` (or the path of this process's stdout) writes to stdout and
    claims it; a regular file, or a path that does not exist yet, is replaced atomically
    (temporary file, then rename); a character device, FIFO or socket is written through; anything
    else is refused. Every failure is one `Error:` line naming the path, and leaves the
    previous file as it was."""
    where = output_target(path)
    if where in ("stdout", "stderr"):
        _write_stdio(where, data)
    elif where == "stream":
        _write_through(path, data)
    else:
        with atomic_path(path) as tmp:
            _write_file(tmp, data)


def _write_file(tmp: str, data: bytes) -> None:
    # One function for the bytes of every atomic write, so the kill -9 test can stall it mid-file.
    with open(tmp, "wb") as handle:
        handle.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    # surrogateescape: a file name that is not valid UTF-8 is written back as its own bytes
    write_bytes(path, text.encode("utf-8", "surrogateescape"))


def output_target(path: str | os.PathLike) -> str:
    """How `path` is written: "stdout"/"stderr" (`-`, or the path of this process's own stream,
    such as /dev/stdout), "stream" (a character device, FIFO or socket: written through), or
    "file" (a regular file or a new path: replaced atomically). Anything else is refused."""
    if str(path) == STDIO:
        return "stdout"
    name = display_name(path)
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "file"  # a new file; its folder is checked where it is written
    except OSError as error:
        raise CnnError(f"{name}: cannot write ({error.strerror})") from None
    for fd, stream in ((1, "stdout"), (2, "stderr")):
        with contextlib.suppress(OSError):
            own = os.fstat(fd)
            if (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino):
                return stream
    if stat.S_ISREG(st.st_mode):
        return "file"
    if stat.S_ISDIR(st.st_mode):
        raise CnnError(f"{name}: is a folder; name a file to write")
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
        return "stream"
    raise CnnError(f"{name}: is {_kind(st.st_mode)}; cnntools writes regular files, and writes through "
                   "character devices, FIFOs and sockets, nothing else")


def _write_stdio(which: str, data: bytes) -> None:
    from cnntools.output import emitter as output

    if which == "stdout":
        claim_stdout()
        stream = output.stdout()
    else:
        stream = sys.stderr

    def write() -> None:
        stream.flush()
        stream.buffer.write(data)
        stream.buffer.flush()

    output.guarded_write(write, stream)


def _write_through(path: str | os.PathLike, data: bytes) -> None:
    """Write to a character device, FIFO or socket as it is (a FIFO waits for its reader, as
    `echo > fifo` does); a write error is one line, not a quiet loss."""
    name = display_name(path)
    restore = _ignore_sigpipe()  # a reader that goes away is an error here, not a silent death
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            import socket

            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(os.fspath(path))
                sock.sendall(data)
            return
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "wb") as handle:
            if stat.S_ISREG(os.fstat(fd).st_mode) or stat.S_ISDIR(os.fstat(fd).st_mode):
                raise CnnError(f"{name}: changed into a regular file while being written; nothing written")
            handle.write(data)
    except OSError as error:
        raise CnnError(f"{name}: cannot write ({error.strerror or error})") from None
    finally:
        restore()


def _ignore_sigpipe():
    import signal
    import threading

    if not hasattr(signal, "SIGPIPE") or threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    return lambda: signal.signal(signal.SIGPIPE, previous)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path whose content ends up at `path` only if the block succeeds.

    For a regular file (or a new path) the temporary file sits next to the target, is fsynced
    and renamed onto it, and the folder is fsynced after, so after a crash or `kill -9` the
    target holds either its old content or the complete new one. A symbolic link keeps
    pointing where it did: the file it names is replaced. For stdout, a device, a FIFO or a
    socket the temporary file is private and its bytes are written through at the end. The
    temporary name keeps the extension, so writers that pick a format by suffix (matplotlib's
    savefig) still do the right thing.
    """
    where = output_target(path)
    if where != "file":
        with tempfile.TemporaryDirectory(prefix="cnntools-") as private:
            tmp = os.path.join(private, f"out{Path(path).suffix}")
            yield tmp
            try:
                with open(tmp, "rb") as handle:
                    data = handle.read()
            except OSError as error:
                raise CnnError(f"{display_name(path)}: cannot write ({error.strerror})") from None
            if where == "stream":
                _write_through(path, data)
            else:
                _write_stdio(where, data)
        return
    name = display_name(path)
    target = Path(os.path.realpath(path))  # a link keeps pointing where it did; its file is replaced
    directory = _check_target(path, target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=directory)
    except OSError as error:
        raise CnnError(f"{name}: cannot write in folder {display_name(directory)} ({error.strerror})") from None
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
        raise CnnError(f"{name}: cannot write ({error.strerror or error})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _check_target(path: str | os.PathLike, target: Path | None = None) -> Path:
    target = target or Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise CnnError(f"{display_name(path)}: folder {display_name(directory)} does not exist; create it first or write elsewhere")
    if target.is_dir():
        raise CnnError(f"{display_name(path)}: is a folder; name a file to write")
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

    Catches a block device or other non-file given as the output, a missing folder, a folder
    given as the file, and a folder this process may not write in (by creating and removing a
    probe file: permission bits lie for root and read-only mounts). `-`, None and paths that
    are written through (stdout, devices, FIFOs, sockets) pass.
    """
    for path in paths:
        if path is None or output_target(path) != "file":
            continue  # stdout, a device, FIFO or socket: written through, nothing to probe
        directory = _check_target(path, Path(os.path.realpath(path)))
        try:
            fd, probe = tempfile.mkstemp(prefix=".cnntools-probe.", dir=directory)
        except OSError as error:
            raise CnnError(f"{display_name(path)}: cannot write in folder {display_name(directory)} ({error.strerror})") from None
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)


def figure_format(path: str | os.PathLike) -> str:
    """The image format named by a figure path's extension (png, svg or pdf); the path must be writable."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in ("png", "svg", "pdf"):
        raise UsageError(f"{path}: figures are written as .png, .svg or .pdf (got '{suffix or 'no extension'}')")
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
