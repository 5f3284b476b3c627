"""The decoded image store: a safetensors file written chunk by chunk and read memory-mapped.

Layout (a valid safetensors file, so `safetensors.safe_open` reads it too): an 8-byte
little-endian header length, the JSON header padded with spaces to a fixed reserve (so the
pixel data starts page-aligned and the header can be written last, once the number of
readable images is known), then the tensors back to back. Images are uint8 N×C×H×W; small
per-image arrays (labels) and one uint8 tensor holding a JSON document (`meta`: class
names, paths, original sizes ...) follow them.

Reading never unpickles and never loads the pixels: `open_store` returns NumPy memmaps of
the image tensors, so the operating system's page cache holds the pixels, shared by every
process reading the same store, and a process's own memory stays flat in the number of
images. A file whose header, sizes or meta document do not add up raises `StoreDamaged`.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

FORMAT = "cnntools.store/1"
DATA_START = 16384  # 8-byte length + header reserve: the data region starts on a page boundary
_DTYPES = {np.dtype(np.uint8): "U8", np.dtype(np.int64): "I64"}
_NUMPY = {v: k for k, v in _DTYPES.items()}


class StoreDamaged(Exception):
    """The file is not a complete store (truncated, overwritten, or another format)."""


class StoreWriter:
    """Write a store to a temporary file next to `path`, array by array, then rename it.

        with StoreWriter(path) as w:
            w.begin("train.images", (3, 128, 128))
            w.write(chunk)                  # uint8 n×3×128×128, as many times as needed
            w.end()
            w.add("train.labels", labels)   # small arrays in one piece
            w.commit({"key": ...}, meta)   # header written, file renamed into place

    Leaving the `with` block without `commit` removes the temporary file. With `path=None`
    the store is anonymous: `commit` returns an open file whose name is already unlinked
    (a store for one process, gone when it exits).
    """

    def __init__(self, path: Path | None, folder: Path | None = None) -> None:
        self.path = path
        folder = path.parent if path is not None else (folder or Path(tempfile.gettempdir()))
        folder.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=".tmp-store-", suffix=".safetensors", dir=folder)
        self.handle = os.fdopen(fd, "r+b")
        self.handle.truncate(DATA_START)
        self.handle.seek(DATA_START)
        self.entries: dict[str, dict] = {}
        self.offset = 0
        self._open: tuple[str, tuple[int, ...], int] | None = None
        self.committed = False

    def begin(self, name: str, item_shape: tuple[int, ...], dtype=np.uint8) -> None:
        """Start tensor `name` of items shaped `item_shape`; `write` appends items to it."""
        if self._open is not None:
            raise RuntimeError("end() the previous tensor first")
        self._open = (name, tuple(int(s) for s in item_shape), 0)
        self._dtype = np.dtype(dtype)
        self._start = self.offset

    def write(self, items: np.ndarray) -> None:
        name, shape, count = self._open
        items = np.ascontiguousarray(items, dtype=self._dtype)
        if tuple(items.shape[1:]) != shape:
            raise ValueError(f"{name}: items of shape {items.shape[1:]}, expected {shape}")
        if items.size:
            self.handle.write(memoryview(items).cast("B"))
            if self.path is not None:  # an anonymous store is never fsynced: no writeback to hurry
                self.handle.flush()
                _start_writeback(self.handle.fileno(), DATA_START + self.offset, items.nbytes)
        self.offset += items.nbytes
        self._open = (name, shape, count + len(items))

    def end(self) -> int:
        """Close the current tensor; returns how many items it holds."""
        name, shape, count = self._open
        self.entries[name] = {"dtype": _DTYPES[self._dtype], "shape": [count, *shape], "data_offsets": [self._start, self.offset]}
        self._open = None
        return count

    def add(self, name: str, array: np.ndarray) -> None:
        """A whole (small) tensor at once."""
        array = np.asarray(array)
        self.begin(name, array.shape[1:], array.dtype)
        if array.size:
            self.write(array)
        self.end()

    def commit(self, metadata: dict, meta: dict):
        """Write the header and the meta document, flush, and move the file into place."""
        self.add("meta", np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        header = dict(self.entries)
        header["__metadata__"] = {"format": FORMAT, **{k: str(v) for k, v in metadata.items()}}
        text = json.dumps(header, separators=(",", ":")).encode()
        if len(text) > DATA_START - 8:
            raise ValueError(f"store header of {len(text)} bytes does not fit its {DATA_START - 8}-byte reserve")
        self.handle.seek(0)
        self.handle.write(struct.pack("<Q", DATA_START - 8) + text.ljust(DATA_START - 8, b" "))
        self.handle.flush()
        self.committed = True
        if self.path is None:
            os.unlink(self.tmp)  # anonymous: the open file lives on until the process closes it
            return self.handle
        os.fsync(self.handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(self.handle.fileno(), 0o666 & ~umask)  # mkstemp's 0600 would hide a shared store
        self.handle.close()
        os.replace(self.tmp, self.path)
        return None

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        if not self.committed:
            self.handle.close()
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask Linux to start writing this range to disk now (sync_file_range, asynchronous), so
    the fsync before the store is renamed into place finds little left to write; elsewhere,
    or where the call is missing, nothing happens."""
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = False
        with contextlib.suppress(Exception):
            import ctypes

            call = ctypes.CDLL(None, use_errno=True).sync_file_range
            call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
            _sync_file_range = call
    if _sync_file_range:
        _sync_file_range(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE


_sync_file_range = None


def open_store(file, expect: dict | None = None) -> tuple[dict[str, np.ndarray], dict, dict]:
    """(arrays, meta, metadata) of a store: `*.images` tensors as read-only-to-disk memmaps
    (copy-on-write, so writes stay private), other tensors as small in-memory arrays.

    `file` is a path or an open binary file (an anonymous store). `expect`: header metadata
    entries that must match (a cache key); a mismatch or any inconsistency raises StoreDamaged.
    """
    handle = open(file, "rb") if not hasattr(file, "fileno") else file
    try:
        size = os.fstat(handle.fileno()).st_size
        handle.seek(0)
        head = handle.read(8)
        if len(head) < 8:
            raise StoreDamaged("shorter than a header")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, 1 << 24):
            raise StoreDamaged("header length past the end of the file")
        try:
            header = json.loads(handle.read(length))
            metadata = header.pop("__metadata__")
        except (ValueError, KeyError, UnicodeDecodeError):
            raise StoreDamaged("unreadable header") from None
        if metadata.get("format") != FORMAT:
            raise StoreDamaged(f"format {metadata.get('format')!r}, expected {FORMAT}")
        for key, value in (expect or {}).items():
            if metadata.get(key) != str(value):
                raise StoreDamaged(f"{key} does not match")
        base = 8 + length
        end = max((e["data_offsets"][1] for e in header.values()), default=0)
        if size != base + end:
            raise StoreDamaged(f"{size} bytes, the header describes {base + end} (truncated or padded)")
        arrays: dict[str, np.ndarray] = {}
        for name, entry in header.items():
            dtype = _NUMPY[entry["dtype"]]
            begin, stop = entry["data_offsets"]
            shape = tuple(entry["shape"])
            if int(np.prod(shape)) * dtype.itemsize != stop - begin:
                raise StoreDamaged(f"{name}: shape {shape} does not fill its {stop - begin} bytes")
            if name.endswith(".images") and stop > begin:
                arrays[name] = np.memmap(handle, dtype=dtype, mode="c", offset=base + begin, shape=shape)
            else:
                handle.seek(base + begin)
                raw = handle.read(stop - begin)
                arrays[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        try:
            meta = json.loads(arrays.pop("meta").tobytes())
        except (KeyError, ValueError, UnicodeDecodeError):
            raise StoreDamaged("unreadable meta document") from None
        return arrays, meta, metadata
    finally:
        if handle is not file:
            handle.close()  # the memmaps keep their own mapping
