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
images.

Nothing in a store is trusted. Every image tensor `S.images` has a table `S.images.crc32` of
one CRC-32 per `chunk_bytes` of its pixels (written while the pixels are written), and the
header metadata holds a BLAKE2b `digest` of the header itself, the labels, the CRC tables and
the meta document. Opening a store by name checks all of that, and the meta document's and
labels' consistency (labels in range, one label, path and size per image), before anything
is used — a mismatch raises `StoreDamaged`; the pixels are checked lazily, a chunk before it is
first read in this process (`ChunkChecks`, which `imageset.mapped_tensor` consults), and a
chunk that fails stops the run with one line (`StoreCorrupted`). A store is opened without
following symbolic links and only when it is a regular file (never blocking on a FIFO).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import stat
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

from cnntools.core.errors import CnnError

FORMAT = "cnntools.store/2"  # 2: per-chunk CRC-32 of the pixels, a digest of everything else
DATA_START = 16384  # 8-byte length + header reserve: the data region starts on a page boundary
CHUNK_BYTES = 1 << 20  # pixels checked per CRC-32 (tests/benchmarks/bench_store.py --cases checksum)
_DTYPES = {np.dtype(np.uint8): "U8", np.dtype(np.int64): "I64", np.dtype(np.uint32): "U32"}
_NUMPY = {v: k for k, v in _DTYPES.items()}
# Every tensor a store may hold, by name suffix: (dtype, number of dimensions).
_KINDS = {".images": ("U8", 4), ".images.crc32": ("U32", 1), ".labels": ("I64", 1)}


class StoreDamaged(Exception):
    """The file is not a complete, consistent store (truncated, overwritten, edited, another
    format, or not a regular file)."""


class StoreOutdated(StoreDamaged):
    """A store written by an earlier version of the format: rebuilt without alarm."""


class StoreCorrupted(CnnError):
    """A chunk of pixels failed its checksum while a command was using the store."""


def node_kind(mode: int) -> str:
    """What a file system node is, in words ("a FIFO", "a symbolic link", ...)."""
    for test, name in ((stat.S_ISREG, "a file"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path, flags: int = os.O_RDONLY, mode: int = 0o666) -> int:
    """A descriptor of `path` opened without following a symbolic link and without blocking
    (a FIFO or device never stalls the open), kept only when it is a regular file; otherwise
    OSError (ELOOP for a link, EINVAL naming the node's kind)."""
    fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0), mode)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{node_kind(st.st_mode)}, not a regular file", str(path))
    return fd


TMP_PREFIX, TMP_SUFFIX = ".tmp-store-", ".safetensors"


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
    (a store for one process, gone when it exits). `reserve`: the bytes of tensor data
    expected; they are claimed on disk first (posix_fallocate), so a folder without room
    fails here (OSError ENOSPC) and not after the images were decoded. The temporary file is
    locked (flock) while it is written: one whose lock nobody holds is the leftover of a
    killed build (`remove_stale`).
    """

    def __init__(self, path: Path | None, folder: Path | None = None, reserve: int = 0) -> None:
        import fcntl

        self.path = path
        folder = path.parent if path is not None else (folder or Path(tempfile.gettempdir()))
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=TMP_SUFFIX, dir=folder)
        self.handle = os.fdopen(fd, "r+b")
        self.committed = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.handle.truncate(DATA_START)
            if reserve > 0:
                _reserve(fd, DATA_START + int(reserve))
        except BaseException:
            self.__exit__()
            raise
        self.handle.seek(DATA_START)
        self.entries: dict[str, dict] = {}
        self.offset = 0
        self._open: tuple[str, tuple[int, ...], int] | None = None
        self._digest = hashlib.blake2b(digest_size=16)  # of every tensor but the pixels, in file order
        self._tables: dict[str, np.ndarray] = {}  # image tensor -> its per-chunk CRC-32s

    def begin(self, name: str, item_shape: tuple[int, ...], dtype=np.uint8) -> None:
        """Start tensor `name` of items shaped `item_shape`; `write` appends items to it."""
        if self._open is not None:
            raise RuntimeError("end() the previous tensor first")
        self._open = (name, tuple(int(s) for s in item_shape), 0)
        self._dtype = np.dtype(dtype)
        self._start = self.offset
        self._crcs: list[int] | None = [] if name.endswith(".images") else None
        self._crc, self._fill = 0, 0

    def write(self, items: np.ndarray) -> None:
        name, shape, count = self._open
        items = np.ascontiguousarray(items, dtype=self._dtype)
        if tuple(items.shape[1:]) != shape:
            raise ValueError(f"{name}: items of shape {items.shape[1:]}, expected {shape}")
        if items.size:
            data = memoryview(items).cast("B")
            self.handle.write(data)
            if self._crcs is not None:
                self._checksum(data)
            else:
                self._digest.update(data)
            if self.path is not None:  # an anonymous store is never fsynced: no writeback to hurry
                self.handle.flush()
                _start_writeback(self.handle.fileno(), DATA_START + self.offset, items.nbytes)
        self.offset += items.nbytes
        self._open = (name, shape, count + len(items))

    def _checksum(self, data: memoryview) -> None:
        """Carry the CRC-32 of the current CHUNK_BYTES piece across writes of any size."""
        pos = 0
        while pos < len(data):
            take = min(CHUNK_BYTES - self._fill, len(data) - pos)
            self._crc = zlib.crc32(data[pos : pos + take], self._crc)
            self._fill += take
            pos += take
            if self._fill == CHUNK_BYTES:
                self._crcs.append(self._crc)
                self._crc, self._fill = 0, 0

    def end(self) -> int:
        """Close the current tensor; returns how many items it holds."""
        name, shape, count = self._open
        self.entries[name] = {"dtype": _DTYPES[self._dtype], "shape": [count, *shape], "data_offsets": [self._start, self.offset]}
        if self._crcs is not None:
            self._tables[name] = np.array(self._crcs + ([self._crc] if self._fill else []), dtype=np.uint32)
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
        """Write the checksum tables, the meta document and the header, flush, and move the
        file into place."""
        for name, table in list(self._tables.items()):
            self.add(f"{name}.crc32", table)
        self.add("meta", np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        self.handle.truncate(DATA_START + self.offset)  # what `reserve` claimed beyond the data goes back
        header = dict(self.entries)
        header["__metadata__"] = {"format": FORMAT, "chunk_bytes": str(CHUNK_BYTES), **{k: str(v) for k, v in metadata.items()}}
        self._digest.update(_canonical(header))
        header["__metadata__"]["digest"] = self._digest.hexdigest()
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


def _reserve(fd: int, nbytes: int) -> None:
    """Claim `nbytes` of disk for the file now (ENOSPC at once when they are not there);
    file systems that cannot preallocate are written to as they are."""
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    except AttributeError:  # no posix_fallocate on this platform
        pass


def _canonical(header: dict) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def remove_stale(folder: Path, min_age_s: float = 5.0) -> list[str]:
    """Remove the temporary files of builds that were killed (their writer's lock is free) from
    `folder`; returns their names. Only this user's files are touched, never through a link,
    and files younger than `min_age_s` are left (a writer may be between creating and locking)."""
    import fcntl
    import time

    removed = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if not (entry.name.startswith(TMP_PREFIX) and entry.name.endswith(TMP_SUFFIX)):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
                if st.st_uid != os.geteuid() or time.time() - st.st_mtime < min_age_s:
                    continue
                if not stat.S_ISREG(st.st_mode):  # nothing a build makes: a planted node
                    os.unlink(entry.path)
                    removed.append(entry.name)
                    continue
                fd = open_regular(entry.path)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if (os.fstat(fd).st_ino, os.fstat(fd).st_dev) == (st.st_ino, st.st_dev):
                    os.unlink(entry.path)
                    removed.append(entry.name)
            except OSError:  # BlockingIOError: its writer is alive
                pass
            finally:
                os.close(fd)
    return removed


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


class ChunkChecks:
    """The lazy check of one mapped image tensor's pixels: each CHUNK_BYTES piece is compared
    with its CRC-32 the first time any of its rows is asked for (`rows`, `span`, `everything`),
    so memory stays flat and a warm epoch pays one check per chunk per process."""

    def __init__(self, store: str, name: str, pixels: np.ndarray, crcs: np.ndarray, chunk_bytes: int, identity) -> None:
        self.store, self.name, self.chunk_bytes, self.identity = store, name, chunk_bytes, identity
        self.flat = np.asarray(pixels).reshape(-1)
        self.item_bytes = int(np.prod(pixels.shape[1:]))
        self.crcs = crcs
        self.checked = np.zeros(len(crcs), dtype=bool)
        self.left = len(crcs)

    @property
    def done(self) -> bool:
        return self.left == 0

    def span(self, first: int, stop: int) -> None:
        """Check the chunks under rows first..stop-1."""
        if stop > first and not self.done:
            self._check(np.arange(first * self.item_bytes // self.chunk_bytes,
                                  (stop * self.item_bytes - 1) // self.chunk_bytes + 1))

    def rows(self, rows: np.ndarray) -> None:
        """Check the chunks under the given rows (any order, repeats allowed)."""
        if self.done or not len(rows):
            return
        rows = rows.astype(np.int64, copy=False)
        starts = rows * self.item_bytes // self.chunk_bytes
        ends = ((rows + 1) * self.item_bytes - 1) // self.chunk_bytes
        if self.item_bytes > self.chunk_bytes or (starts != ends).any():
            counts = ends - starts + 1
            starts = np.repeat(starts, counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        self._check(np.unique(starts))

    def everything(self) -> None:
        self._check(np.arange(len(self.crcs)))

    def _check(self, chunks: np.ndarray) -> None:
        for c in chunks[~self.checked[chunks]].tolist():
            piece = self.flat[c * self.chunk_bytes : (c + 1) * self.chunk_bytes]
            if zlib.crc32(piece) != int(self.crcs[c]):
                self._fail(c, len(piece))
            self.checked[c] = True
            self.left -= 1

    def _fail(self, chunk: int, length: int):
        begin = chunk * self.chunk_bytes
        removed = False
        with contextlib.suppress(OSError):
            st = os.stat(self.store, follow_symlinks=False)
            if (st.st_ino, st.st_dev) == self.identity:  # still this file, not a newer build
                os.unlink(self.store)
                removed = True
        todo = "it has been removed: run the command again to decode the images anew" if removed else \
            "remove it and run the command again to decode the images anew"
        raise StoreCorrupted(f"{self.store}: the image store is damaged ({self.name}: bytes {begin:,}-{begin + length - 1:,} "
                             f"do not match their checksum); {todo}")


def open_store(file, expect: dict | None = None) -> tuple[dict[str, np.ndarray], dict, dict]:
    """(arrays, meta, metadata) of a store: `*.images` tensors as read-only-to-disk memmaps
    (copy-on-write, so writes stay private), other tensors as small in-memory arrays.

    `file` is a path or an open binary file (an anonymous store this process wrote). `expect`:
    header metadata entries that must match (a cache key). The header, the digest of every
    tensor but the pixels, the meta document and the labels are checked completely; any
    inconsistency raises StoreDamaged. A store opened by path is opened without following a
    link and only when it is a regular file, and its image memmaps carry `.checks`
    (ChunkChecks) for the pixels.
    """
    named = not hasattr(file, "fileno")
    if named:
        try:
            handle = os.fdopen(open_regular(file), "rb")
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise StoreDamaged("a symbolic link, not a regular file") from None
            if error.errno == errno.EINVAL:
                raise StoreDamaged(error.strerror) from None
            raise
    else:
        handle = file
    try:
        st = os.fstat(handle.fileno())
        size = st.st_size
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
        except (ValueError, KeyError, UnicodeDecodeError, AttributeError, TypeError):
            raise StoreDamaged("unreadable header") from None
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise StoreDamaged("unreadable header metadata")
        if metadata.get("format") != FORMAT:
            older = str(metadata.get("format", "")).startswith(FORMAT.split("/")[0] + "/")
            raise (StoreOutdated if older else StoreDamaged)(f"format {metadata.get('format')!r}, expected {FORMAT}")
        for key, value in (expect or {}).items():
            if metadata.get(key) != str(value):
                raise StoreDamaged(f"{key} does not match")
        base = 8 + length
        entries = _check_layout(header, size - base)
        chunk = _int(metadata.get("chunk_bytes"), "chunk_bytes")
        digest = hashlib.blake2b(digest_size=16)
        arrays: dict[str, np.ndarray] = {}
        for name, dtype, shape, begin, stop in entries:
            if name.endswith(".images") and stop > begin:
                arrays[name] = np.memmap(handle, dtype=dtype, mode="c", offset=base + begin, shape=shape)
                continue
            handle.seek(base + begin)
            raw = handle.read(stop - begin)
            if len(raw) != stop - begin:
                raise StoreDamaged(f"{name}: shorter than its header says")
            if not name.endswith(".images"):
                digest.update(raw)
            arrays[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        digest.update(_canonical({**header, "__metadata__": {k: v for k, v in metadata.items() if k != "digest"}}))
        if metadata.get("digest") != digest.hexdigest():
            raise StoreDamaged("header, labels or meta document do not match their digest")
        try:
            meta = json.loads(arrays.pop("meta").tobytes())
        except (ValueError, UnicodeDecodeError):
            raise StoreDamaged("unreadable meta document") from None
        _check_contents(arrays, meta, chunk)
        for name in [n for n in arrays if n.endswith(".images")]:
            table = arrays.pop(f"{name}.crc32")
            if named and isinstance(arrays[name], np.memmap):
                arrays[name].checks = ChunkChecks(str(file), name, arrays[name], table, chunk, (st.st_ino, st.st_dev))
        return arrays, meta, metadata
    finally:
        if handle is not file:
            handle.close()  # the memmaps keep their own mapping


def _int(value, what: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise StoreDamaged(f"{what} is not a number") from None
    if number <= 0:
        raise StoreDamaged(f"{what} is not positive")
    return number


def _kind(name: str) -> tuple[str, int] | None:
    if name == "meta":
        return "U8", 1
    for suffix in sorted(_KINDS, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return _KINDS[suffix]
    return None


def _check_layout(header, data_bytes: int) -> list[tuple]:
    """(name, dtype, shape, begin, stop) of every tensor, in file order, after checking that
    each is a kind a store holds, that its shape fills its bytes exactly, and that the tensors
    tile the data region with no gap, overlap or excess."""
    if not isinstance(header, dict):
        raise StoreDamaged("unreadable header")
    entries = []
    for name, entry in header.items():
        kind = _kind(name)
        if kind is None:
            raise StoreDamaged(f"unexpected tensor {name!r}")
        try:
            dtype, shape, (begin, stop) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise StoreDamaged(f"{name}: unreadable entry") from None
        if dtype != kind[0] or not isinstance(shape, list) or len(shape) != kind[1]:
            raise StoreDamaged(f"{name}: {dtype} of {len(shape) if isinstance(shape, list) else '?'} dimensions, expected {kind[0]} of {kind[1]}")
        if not all(type(v) is int and v >= 0 for v in (*shape, begin, stop)):
            raise StoreDamaged(f"{name}: shape and offsets must be non-negative integers")
        dt = _NUMPY[dtype]
        if math.prod(shape) * dt.itemsize != stop - begin:
            raise StoreDamaged(f"{name}: shape {tuple(shape)} does not fill its {stop - begin} bytes")
        entries.append((name, dt, tuple(shape), begin, stop))
    entries.sort(key=lambda e: (e[3], e[4]))
    position = 0
    for name, _, _, begin, stop in entries:
        if begin != position:
            raise StoreDamaged(f"{name}: starts at byte {begin}, expected {position} (a gap or an overlap)")
        position = stop
    if position != data_bytes:
        raise StoreDamaged(f"{data_bytes} bytes of data, the header describes {position} (truncated or padded)")
    if "meta" not in header:
        raise StoreDamaged("no meta document")
    return entries


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise StoreDamaged(message)


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_contents(arrays: dict, meta, chunk: int) -> None:
    """The meta document and the labels agree with the images: one label, path and size per
    image, labels naming a class, splits and their tensors present, CRC tables of the right
    length."""
    _require(isinstance(meta, dict), "the meta document is not an object")
    for name, array in arrays.items():
        if name.endswith(".images.crc32"):
            images = arrays.get(name[: -len(".crc32")])
            _require(images is not None, f"{name}: no images it belongs to")
            _require(len(array) == math.ceil(images.nbytes / chunk), f"{name}: {len(array)} checksums for {images.nbytes} bytes")
        elif name.endswith(".images"):
            _require(f"{name}.crc32" in arrays, f"{name}: no checksums")
    classes = meta.get("classes")
    if classes is not None:
        _require(_strings(classes) and len(classes) >= 1 and len(set(classes)) == len(classes),
                 "the class list is not a list of distinct names")
    for name, labels in arrays.items():
        if not name.endswith(".labels"):
            continue
        images = arrays.get(name[: -len(".labels")] + ".images")
        _require(images is not None, f"{name}: no images they belong to")
        _require(len(labels) == len(images), f"{name}: {len(labels)} labels for {len(images)} images")
        if len(labels):
            top = len(classes) if classes is not None else 1 << 62
            _require(int(labels.min()) >= 0 and int(labels.max()) < top,
                     f"{name}: labels run from {int(labels.min())} to {int(labels.max())}, outside the {top} classes")
    splits = meta.get("splits")
    if splits is None:
        return
    _require(_strings(splits) and len(set(splits)) == len(splits), "the split list is not a list of distinct names")
    for split in splits:
        _require(f"{split}.images" in arrays and f"{split}.labels" in arrays, f"split {split!r} has no images or labels")
    n = {split: len(arrays[f"{split}.images"]) for split in splits}
    for key in ("paths", "sizes"):
        value = meta.get(key)
        _require(isinstance(value, dict) and set(value) == set(splits), f"{key}: not one list per split")
        for split in splits:
            _require(isinstance(value[split], list) and len(value[split]) == n[split],
                     f"{key}[{split}]: {len(value[split]) if isinstance(value[split], list) else '?'} entries for {n[split]} images")
    for split in splits:
        _require(_strings(meta["paths"][split]), f"paths[{split}]: not a list of paths")
        _require(all(isinstance(s, list) and len(s) == 2 and all(type(v) is int and v > 0 for v in s) for s in meta["sizes"][split]),
                 f"sizes[{split}]: not a list of (width, height)")
    size = meta.get("common_size")
    _require(isinstance(size, list) and len(size) == 2 and all(type(v) is int and v > 0 for v in size), "common_size: not (height, width)")
    unreadable = meta.get("unreadable", [])
    _require(isinstance(unreadable, list) and all(isinstance(u, list) and len(u) == 3 and _strings(u) for u in unreadable),
             "unreadable: not a list of (path, reason, split)")
    images = arrays[f"{splits[0]}.images"]
    _require(list(images.shape[2:]) == size, f"common_size {size} is not the images' {list(images.shape[2:])}")
