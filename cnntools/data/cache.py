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
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from cnntools.data.store import StoreDamaged, StoreWriter, open_store
from cnntools.output.emitter import warn

CACHE_VERSION = "2"
# Sources that decode to more than this (image folders always) are read through a store on
# disk; smaller ones (digits, CIFAR-10, MNIST) are faster held in memory.
STORE_THRESHOLD = 256 * 1024**2


def cache_dir() -> Path | None:
    """The cache folder, or None when caching is switched off."""
    env = os.environ.get("CNNTOOLS_CACHE")
    if env is not None and env.strip().lower() in ("off", "0", "none", "false", "no"):
        return None
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cnntools"


def scratch_dir() -> Path:
    """Where anonymous (unlinked) stores are written: the cache folder, else the temp folder."""
    folder = cache_dir()
    if folder is not None:
        with contextlib.suppress(OSError):
            folder.mkdir(parents=True, exist_ok=True)
            return folder
    return Path(tempfile.gettempdir())


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
    folder = cache_dir()
    return None if folder is None else folder / f"folder-{prefix}-{key}.safetensors"


@contextlib.contextmanager
def _locked(path: Path):
    import fcntl

    lock = path.with_name(path.name + ".lock")
    with open(lock, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _try_open(path: Path, key: str):
    try:
        return open_store(path, {"key": key})
    except FileNotFoundError:
        return None
    except (StoreDamaged, OSError, ValueError) as error:
        warn(f"{path}: damaged image store ({error}); decoding again")
        with contextlib.suppress(OSError):
            path.unlink()
        return None


def open_existing(path: Path | None, key: str):
    """(arrays, meta, info) of the store at `path` when it is there and whole, else None."""
    hit = _try_open(path, key) if path is not None else None
    return None if hit is None else (hit[0], hit[1], {"file": str(path), "hit": True, "written": False})


def open_or_build(path: Path | None, key: str, build: Callable[[StoreWriter], dict]):
    """(arrays, meta, info) of the store at `path`, built by `build(writer) -> meta` when absent.

    `info` says where it is and whether it was found or written. With `path=None` (caching
    off, or the folder not writable) the store is built anonymous, for this process only.
    """
    if path is not None:
        hit = _try_open(path, key)
        if hit is not None:
            return hit[0], hit[1], {"file": str(path), "hit": True, "written": False}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with _locked(path):
                hit = _try_open(path, key)  # another process may have built it while we waited
                if hit is not None:
                    return hit[0], hit[1], {"file": str(path), "hit": True, "written": False}
                with StoreWriter(path) as writer:
                    writer.commit({"key": key}, build(writer))
            _remove_older(path)
            arrays, meta, _ = open_store(path, {"key": key})
            return arrays, meta, {"file": str(path), "hit": False, "written": True}
        except OSError as error:
            warn(f"could not write the image store in {path.parent} ({error.strerror}); the next run decodes again")
    with StoreWriter(None, scratch_dir()) as writer:
        handle = writer.commit({"key": key}, build(writer))
    arrays, meta, _ = open_store(handle, {"key": key})
    handle.close()
    return arrays, meta, {"file": None, "hit": False, "written": False}


def _remove_older(path: Path) -> None:
    prefix = path.name.rsplit("-", 1)[0]
    for old in path.parent.glob(f"{prefix}-*.safetensors*"):
        if not old.name.startswith(path.name):
            with contextlib.suppress(OSError):
                old.unlink()
