"""On-disk cache of decoded image folders: safetensors files (tensors + JSON metadata, never pickle).

The key hashes the folder's absolute path, the requested image size and every image file's
relative path, size and modification time, so adding, removing, replacing or touching a file
gives a new key and the folder is decoded again. Older entries for the same folder are removed
when a new one is written. Location: $CNNTOOLS_CACHE, else $XDG_CACHE_HOME/cnntools, else
~/.cache/cnntools; CNNTOOLS_CACHE=off disables it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from cnntools.output import warn

CACHE_VERSION = "1"


def cache_dir() -> Path | None:
    """The cache folder, or None when caching is switched off."""
    env = os.environ.get("CNNTOOLS_CACHE")
    if env is not None and env.strip().lower() in ("off", "0", "none", "false", "no"):
        return None
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cnntools"


def cache_key(root: Path, request: str, listing: list[tuple[str, int, int]]) -> tuple[str, str]:
    """(folder prefix, full key) for a folder, a size request and its files' (path, size, mtime_ns)."""
    prefix = hashlib.sha256(f"{CACHE_VERSION}\0{root.resolve()}\0{request}".encode("utf-8", "surrogateescape")).hexdigest()[:16]
    digest = hashlib.sha256(prefix.encode())
    for rel, size, mtime in listing:
        digest.update(f"{rel}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))  # any byte in a name
    return prefix, digest.hexdigest()[:24]


def cache_file(prefix: str, key: str) -> Path | None:
    folder = cache_dir()
    return None if folder is None else folder / f"folder-{prefix}-{key}.safetensors"


def load(path: Path | None) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The cached tensors and metadata, or None when absent or unreadable (then it is rebuilt)."""
    if path is None or not path.is_file():
        return None
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads(handle.metadata()["cnntools"])
        return load_file(str(path)), meta
    except Exception:  # noqa: BLE001 - a damaged cache entry is simply rebuilt
        with contextlib.suppress(OSError):
            path.unlink()
        return None


def store(path: Path | None, tensors: dict[str, torch.Tensor], meta: dict) -> bool:
    """Write an entry atomically and drop older entries of the same folder; False if not possible."""
    if path is None:
        return False
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
        os.close(fd)
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={"cnntools": json.dumps(meta)})
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        prefix = path.name.rsplit("-", 1)[0]
        for old in path.parent.glob(f"{prefix}-*.safetensors"):
            if old != path:
                with contextlib.suppress(OSError):
                    old.unlink()
        return True
    except OSError as error:
        warn(f"could not write the image cache in {path.parent} ({error.strerror}); the next run decodes again")
        return False
