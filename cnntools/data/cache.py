"""Where decoded stores live, how they are named, and building one exactly once.

The key hashes the source's absolute path, the requested image size and every image file's
relative path, size and modification time, so adding, removing, replacing or touching a file
gives a new key and the source is decoded again. Older stores of the same source are removed
when a new one is written. Location: $CNNTOOLS_CACHE, else $XDG_CACHE_HOME/cnntools, else
~/.cache/cnntools; CNNTOOLS_CACHE=off keeps no store between runs (each run decodes into an
unlinked temporary file, still read memory-mapped).

Two processes that need the same store at once (DDP ranks, two shells) take turns on a lock
file: the first builds it into a temporary file and renames it into place, the others wait
and then map the finished file. A store that is truncated or otherwise damaged is reported
and rebuilt.

The cache folder is not trusted: it holds stores only when it is a folder owned by this user
and not writable by everyone (otherwise one warning, and each run decodes into a temporary
store); locks and stores are opened without following symbolic links and only as regular
files (a link, FIFO, device or socket planted at their names is removed, never opened); the
space a store needs is claimed before decoding starts, so a read-only or full folder is
noticed at once and the store goes to the temporary folder instead (one decode); when no
folder has room, one error names the size and the folders tried; the temporary files of
builds that were killed are removed on the next run (their writer's lock is free).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cnntools.core.errors import CnnError
from cnntools.core.runtime import human_bytes
from cnntools.data.store import StoreDamaged, StoreOutdated, StoreWriter, node_kind, open_regular, open_store, remove_stale
from cnntools.output.emitter import info, warn

CACHE_VERSION = "2"
# Sources that decode to more than this (image folders always) are read through a store on
# disk; smaller ones (digits, CIFAR-10, MNIST) are faster held in memory.
STORE_THRESHOLD = 256 * 1024**2


def cache_dir() -> Path | None:
    """The cache folder as configured, or None when caching is switched off."""
    env = os.environ.get("CNNTOOLS_CACHE")
    if env is not None and env.strip().lower() in ("off", "0", "none", "false", "no"):
        return None
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cnntools"


_warned: set[str] = set()
_swept: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warn(message)


def unsafe_reason(folder: Path) -> str | None:
    """Why `folder` must not hold stores (not a folder, someone else's, writable by everyone),
    or None when it may (or does not exist yet)."""
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        return None
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    if not stat.S_ISDIR(st.st_mode):
        return f"is {node_kind(st.st_mode)}, not a folder"
    if st.st_uid != os.geteuid():
        return f"belongs to another user (uid {st.st_uid})"
    if st.st_mode & stat.S_IWOTH:
        return "is writable by every user"
    return None


def store_dir() -> Path | None:
    """The cache folder when it may hold stores (created when missing; leftovers of killed
    builds removed once per process), else None: caching is off, or the folder is unusable
    (one warning saying why)."""
    folder = cache_dir()
    if folder is None:
        return None
    reason = unsafe_reason(folder)
    if reason is None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            reason = unsafe_reason(folder)  # what was made (or raced in) is checked too
        except OSError as error:
            reason = f"cannot be created ({error.strerror})"
    if reason is not None:
        _warn_once(f"cache folder {folder} {reason}; keeping no image store there "
                   "(each run decodes into a temporary one; set CNNTOOLS_CACHE to a folder of your own)")
        return None
    if str(folder) not in _swept:
        _swept.add(str(folder))
        remove_stale(folder)
    return folder


def cache_key(root: Path, request: str, listing) -> tuple[str, str]:
    """(source prefix, full key) for a folder, a size request and its files' (path, size, mtime_ns)."""
    from cnntools.data import images  # the decoder's version: a store of older pixels is rebuilt

    version = f"{CACHE_VERSION}.{images.DECODER_VERSION}"
    prefix = hashlib.sha256(f"{version}\0{root.resolve()}\0{request}".encode("utf-8", "surrogateescape")).hexdigest()[:16]
    digest = hashlib.sha256(prefix.encode())
    for rel, size, mtime in listing:
        digest.update(f"{rel}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))  # any byte in a name
    return prefix, digest.hexdigest()[:24]


def cache_file(prefix: str, key: str) -> Path | None:
    folder = store_dir()
    return None if folder is None else folder / f"folder-{prefix}-{key}.safetensors"


def _clear_node(path: Path, what: str = "the image store") -> None:
    """Remove what is not a regular file where a store or its lock belongs (a planted link,
    FIFO, device or socket), never following or opening it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode):
        return
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(21, f"a folder where {what} belongs", str(path))
    warn(f"{path}: {node_kind(st.st_mode)} where {what} belongs; removed without opening it")
    os.unlink(path)


@contextlib.contextmanager
def _locked(path: Path):
    import fcntl

    lock = path.with_name(path.name + ".lock")
    _clear_node(lock, "the image store's lock")
    fd = open_regular(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _try_open(path: Path, key: str):
    try:
        _clear_node(path)
        return open_store(path, {"key": key})
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise  # nothing can be built there either: the caller goes elsewhere
    except (StoreDamaged, ValueError) as error:
        if isinstance(error, StoreOutdated):
            info(f"{path}: an image store of an older format ({error}); decoding again")
        else:
            warn(f"{path}: damaged image store ({error}); decoding again")
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    except OSError as error:
        warn(f"{path}: cannot read the image store ({error.strerror or error}); decoding again")
        return None


def open_existing(path: Path | None, key: str):
    """(arrays, meta, info) of the store at `path` when it is there and whole, else None."""
    try:
        hit = _try_open(path, key) if path is not None else None
    except OSError:
        hit = None
    return None if hit is None else (hit[0], hit[1], {"file": str(path), "hit": True, "written": False})


def open_or_build(path: Path | None, key: str, build: Callable[[StoreWriter], dict], nbytes: int | Callable[[], int] = 0):
    """(arrays, meta, info) of the store at `path`, built by `build(writer) -> meta` when absent.

    `info` says where it is and whether it was found or written. With `path=None` (caching
    off, or the folder unusable) the store is built anonymous, for this process only.
    `nbytes` (or a function giving it, called only when a build is needed): the tensor bytes
    the store will hold, claimed on disk before `build` runs, so a read-only or full cache
    folder sends the build to the temporary folder before anything is decoded.
    """
    tried: list[tuple[Path, str]] = []
    need = None
    if path is not None:
        try:
            hit = _try_open(path, key)
            if hit is not None:
                return hit[0], hit[1], {"file": str(path), "hit": True, "written": False}
            path.parent.mkdir(parents=True, exist_ok=True)
            with _locked(path):
                hit = _try_open(path, key)  # another process may have built it while we waited
                if hit is not None:
                    return hit[0], hit[1], {"file": str(path), "hit": True, "written": False}
                need = nbytes() if callable(nbytes) else nbytes
                with StoreWriter(path, reserve=need) as writer:
                    writer.commit({"key": key}, build(writer))
            _remove_older(path)
            arrays, meta, _ = open_store(path, {"key": key})
            return arrays, meta, {"file": str(path), "hit": False, "written": True}
        except OSError as error:
            tried.append((path.parent, error.strerror or str(error)))
            warn(f"could not write the image store in {path.parent} ({error.strerror or error}); "
                 "decoding into a temporary store instead (the next run decodes again)")
    if need is None:
        need = nbytes() if callable(nbytes) else nbytes
    with scratch_store(need, tried) as writer:
        handle = writer.commit({"key": key}, build(writer))
    arrays, meta, _ = open_store(handle, {"key": key})
    handle.close()
    return arrays, meta, {"file": None, "hit": False, "written": False}


def _scratch_folders() -> list[Path]:
    """Where anonymous (unlinked) stores may go, in order: the cache folder (usually a disk;
    the temporary folder is often memory), then the temporary folder."""
    folders = [f for f in (store_dir(), Path(tempfile.gettempdir())) if f is not None]
    return [f for i, f in enumerate(folders) if f not in folders[:i]]


@contextlib.contextmanager
def scratch_store(nbytes: int, tried: list[tuple[Path, str]] | None = None):
    """A StoreWriter for an anonymous store, `nbytes` claimed in the first folder with room
    (folders in `tried` already failed and are skipped). No folder with room, or a write
    that fails later: one CnnError naming the size and the folders."""
    tried = list(tried or [])
    writer = None
    for folder in _scratch_folders():
        if any(folder == failed for failed, _ in tried):
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if str(folder) not in _swept:
                _swept.add(str(folder))
                remove_stale(folder)
            writer = StoreWriter(None, folder, reserve=nbytes)
            break
        except OSError as error:
            tried.append((folder, error.strerror or str(error)))
    if writer is None:
        raise CnnError(_no_room(nbytes, tried))
    try:
        with writer:
            yield writer
    except OSError as error:
        if error.errno not in _NO_ROOM:
            raise
        tried.append((writer.folder, error.strerror or str(error)))
        raise CnnError(_no_room(nbytes, tried)) from None


_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def _no_room(nbytes: int, tried: list[tuple[Path, str]]) -> str:
    def free(folder: Path) -> str:
        try:
            st = os.statvfs(folder)
        except OSError:
            return ""
        return f", {human_bytes(st.f_bavail * st.f_frsize)} free"

    places = "; ".join(f"{folder} ({reason}{free(folder)})" for folder, reason in tried)
    return (f"no folder can hold the decoded images ({human_bytes(nbytes)} needed); tried {places}. "
            "Free some space, or point CNNTOOLS_CACHE or TMPDIR at a folder with room")


def _remove_older(path: Path) -> None:
    prefix = path.name.rsplit("-", 1)[0]
    for old in path.parent.glob(f"{prefix}-*.safetensors*"):
        if not old.name.startswith(path.name):
            with contextlib.suppress(OSError):
                old.unlink()


# ---------------------------------------------------------------------------- listing and clearing

# The only names cnntools writes into the cache folder: stores (`cache_file`), their lock files
# (`_locked`) and the temporary file of a build that was killed (StoreWriter's mkstemp).
# Anything else there is someone else's and is never listed or removed.
_OWNED = (
    ("store", re.compile(r"folder-[0-9a-f]{16}-[0-9a-f]{24}\.safetensors")),
    ("lock", re.compile(r"folder-[0-9a-f]{16}-[0-9a-f]{24}\.safetensors\.lock")),
    ("partial", re.compile(r"\.tmp-store-[A-Za-z0-9_]+\.safetensors")),
)
# A temporary file written to in the last hour may be a build in progress: `clear` leaves it.
PARTIAL_GRACE_S = 3600
_DAY_S = 86400


def _kind(name: str) -> str | None:
    return next((kind for kind, pattern in _OWNED if pattern.fullmatch(name)), None)


def cache_entries(older_than_days: float | None = None, now: float | None = None) -> list[dict]:
    """The files cnntools keeps in the cache folder, oldest first: file, kind (store, lock, or
    partial: a build that was killed), bytes, modified (UTC, ISO 8601) and age_days; only those
    not modified for `older_than_days` when given. Empty when caching is off."""
    import datetime

    folder = cache_dir()
    now = time.time() if now is None else now
    entries = []
    try:
        found = list(os.scandir(folder)) if folder is not None else []
    except OSError:  # no cache folder yet
        found = []
    for entry in found:
        kind = _kind(entry.name)
        if kind is None or not entry.is_file(follow_symlinks=False):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:  # removed meanwhile
            continue
        age = (now - st.st_mtime) / _DAY_S
        if older_than_days is not None and age < older_than_days:
            continue
        modified = datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc)
        entries.append({"file": entry.path, "kind": kind, "bytes": st.st_size,
                         "modified": modified.isoformat(timespec="seconds"), "age_days": round(age, 3)})
    return sorted(entries, key=lambda e: (-e["age_days"], e["file"]))


def clear_cache(older_than_days: float | None = None, now: float | None = None) -> dict:
    """Remove what `cache_entries` lists (only cnntools' own files). A store another process
    holds the lock of (being built) is kept, and so is a partial file written in the last hour.
    Returns {"removed": entries, "kept": entries} (kept: the listed files left in place)."""
    now = time.time() if now is None else now
    entries = cache_entries(older_than_days, now)
    removed, kept = [], []
    for entry in sorted(entries, key=lambda e: e["kind"] == "lock"):  # a store before its lock
        path = Path(entry["file"])
        if entry["kind"] == "partial" and entry["age_days"] * _DAY_S < PARTIAL_GRACE_S:
            kept.append(entry)
        elif entry["kind"] == "store":
            (removed if _remove_unlocked(path, path.with_name(path.name + ".lock")) else kept).append(entry)
        elif entry["kind"] == "lock" and path.with_name(path.name[: -len(".lock")]).exists():
            kept.append(entry)  # its store stays (in use, or newer than --older-than)
        elif entry["kind"] == "lock":
            (removed if _remove_unlocked(path, path) else kept).append(entry)
        else:  # a partial store: its writer holds a lock on it while it builds
            (removed if _remove_unlocked(path, path) else kept).append(entry)
    return {"removed": removed, "kept": kept}


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _remove_unlocked(target: Path, lock: Path) -> bool:
    """Unlink `target` (a store, a lock file, or a killed build's temporary file, which holds its
    own lock) unless another process holds `lock` (a build in progress). The lock is opened as
    a regular file only, never through a link or on a FIFO. A process that has the store
    mapped keeps reading it: unlinking only drops the name."""
    import fcntl

    try:
        fd = open_regular(lock)
    except OSError:  # gone, or not a regular file: nobody can hold it
        fd = None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False
        return _unlink(target)
    finally:
        if fd is not None:
            os.close(fd)


def cache_summary() -> dict:
    """The cache folder ({"folder": None} when caching is off), how many files cnntools keeps
    there and their bytes."""
    folder = cache_dir()
    entries = cache_entries()
    return {"folder": None if folder is None else str(folder), "files": len(entries),
            "bytes": sum(e["bytes"] for e in entries)}
