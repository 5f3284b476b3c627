"""Folders of image files: `root/CLASS/*` or `root/{train,valid|val,test}/CLASS/*`.

Every file PIL knows by its extension is decoded once (by cnntools.data.images): grayscale,
RGBA, palette, CMYK and 16-bit images are converted consistently (L when every image is grey, else RGB; transparency is
composited over white), images of different sizes are resized (bilinear, antialiased, aspect
not kept) to one common size — `image_size` when given, else the median height and the median
width of the readable files — and files that cannot be decoded are reported with the reason
and skipped. The decoded images are written, chunk by chunk as they are decoded, into a
store on disk (cnntools.data.cache) that later runs map instead of decoding again.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from cnntools.output import files
from cnntools.data import cache
from cnntools.data.images import image_extensions
from cnntools.data.imageset import ImageSet, chunk_rows, mapped_tensor
from cnntools.data.parallel import decode_progress, decode_workers, ordered_map
from cnntools.core.errors import CnnError
from cnntools.output.emitter import info, warn

SPLIT_DIRS = {"train": ("train", "training"), "val": ("valid", "val", "validation"), "test": ("test", "testing")}
_GROUP = 8  # files per task given to a decoder thread
_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def _visible_dirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as error:
        raise CnnError(f"{path}: cannot list the folder ({error.strerror})") from None


def _layout(root: Path) -> dict[str, Path]:
    """split name → folder holding that split's class folders."""
    by_name = {p.name.lower(): p for p in _visible_dirs(root)}
    splits = {}
    for split, names in SPLIT_DIRS.items():
        for name in names:
            if name in by_name and _visible_dirs(by_name[name]):
                splits[split] = by_name[name]
                break
    if splits:
        return splits
    return {"train": root}


def open_folder(root: Path, image_size=None):
    """The source for a folder: CIFAR python batches when it has them, else image class folders."""
    from cnntools.data.torchvision_layouts import cifar_folder

    source = cifar_folder(root, str(root))
    return source if source is not None else FolderSource(root, image_size)


def _size_request(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


class FolderWalk:
    """One walk of a folder: its layout, the image files of each split with their class, the
    size and mtime of each from the walk's own stat (the store key needs no other), the file
    headers once read and the splits once loaded at each size."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.layout = _layout(root)
        exts = image_extensions()
        self.files: dict[str, list[tuple[Path, str]]] = {}
        self.skipped: list[tuple[Path, str]] = []  # FIFOs, devices, dead links: never opened
        self.stats: dict[Path, os.stat_result] = {}
        class_names: set[str] = set()
        for split, folder in self.layout.items():
            entries = []
            for class_dir in _visible_dirs(folder):
                found, skipped = files.walk_files(class_dir, lambda name: os.path.splitext(name)[1].lower() in exts,
                                                  self.stats)
                for path, reason in skipped:
                    warn(f"{path}: {reason}; skipped")
                self.skipped.extend(skipped)
                if not found:
                    warn(f"{class_dir}: no image files; class folder ignored")
                    continue
                class_names.add(class_dir.name)
                entries.extend((f, class_dir.name) for f in found)
            if entries:
                self.files[split] = entries
        self.files, class_names = count_once(self.files, self.layout, class_names, self.stats)
        if not self.files:
            raise CnnError(
                f"{root}: no images found; expected class folders (root/CLASS/*.png, *.jpg ...) "
                "or train/, valid/ or val/, test/ folders each holding class folders"
            )
        self.classes = sorted(class_names)
        if len(self.classes) < 2:
            raise CnnError(
                f"{root}: only one class ({self.classes[0]}) found; a classifier needs at least two class folders"
            )
        self.headers: list[tuple] | None = None
        self.loaded: dict[tuple[int, int] | None, dict[str, ImageSet]] = {}


# Walks shared by every source opened inside `shared_walks()`, by real path; None outside.
_shared: dict[str, FolderWalk] | None = None


@contextlib.contextmanager
def shared_walks():
    """Inside, every source opened on one folder shares one walk of it (and the splits it
    loaded): `train --test-each-epoch` opens the folder for train and again for test. Outside,
    each source walks the folder afresh, so files changed between two opens are seen."""
    global _shared
    if _shared is not None:
        yield
        return
    _shared = {}
    try:
        yield
    finally:
        _shared = None


def folder_walk(root: Path) -> FolderWalk:
    """The walk of `root`: the shared one inside `shared_walks()`, else a new one."""
    if _shared is None:
        return FolderWalk(root)
    key = os.path.realpath(root)
    if key not in _shared:
        _shared[key] = FolderWalk(root)
    return _shared[key]


class FolderSource:
    """Image class folders, decoded once into a store on disk (all splits at once) and mapped."""

    decodes_files = True  # its images come from decoding files at a size it is asked for

    def __init__(self, root: Path, image_size=None) -> None:
        self.root = root
        self.spec = str(root)
        self.request = _size_request(image_size)
        self.walk = folder_walk(root)
        self.layout, self.files, self.skipped, self.classes = (self.walk.layout, self.walk.files, self.walk.skipped,
                                                               self.walk.classes)

    def splits(self) -> list[str]:
        return [s for s in ("train", "val", "test") if s in self.files]

    def decode_size(self) -> tuple[int, int]:
        """(height, width) the images are decoded at: the requested size, else the median of
        the files' sizes (from a store that already holds it, or from the files' headers)
        — known before anything is decoded."""
        if self.request is not None:
            return self.request
        prefix, key = cache.cache_key(self.root, "median", self._listing())
        found = cache.open_existing(cache.cache_file(prefix, key), key)
        if found is not None:
            return tuple(found[1]["common_size"])
        return self._common_size([h for h in self._headers() if h[0] is not None])[:2]

    def at_size(self, image_size) -> "FolderSource":
        """This folder decoded at `image_size` instead (the file headers already read are kept)."""
        self.request = _size_request(image_size)
        return self

    def load(self, split: str) -> ImageSet:
        if self.request not in self.walk.loaded:
            self.walk.loaded[self.request] = self._load_all()
        return self.walk.loaded[self.request][split]

    # ------------------------------------------------------------------ decoding into the store

    def _relative(self, path: Path) -> str:
        text, prefix = str(path), os.path.join(str(self.root), "")
        return text[len(prefix):] if text.startswith(prefix) else str(path.relative_to(self.root))  # (pathlib's is slow)

    def _listing(self) -> list[tuple[str, int, int]]:
        """(relative path, size, mtime_ns) of every file, from the walk's stat of it."""
        stats = self.walk.stats
        return [(self._relative(path), stats[path].st_size, stats[path].st_mtime_ns)
                for split in self.splits() for path, _ in self.files[split]]

    def _load_all(self) -> dict[str, ImageSet]:
        listing = self._listing()
        prefix, key = cache.cache_key(self.root, "median", listing)
        found = None
        if self.request is not None:
            # The median-size store holds the same pixels when the median is what is asked for.
            found = cache.open_existing(cache.cache_file(prefix, key), key)
            if found is not None and tuple(found[1]["common_size"]) != self.request:
                found = None
            if found is None:
                prefix, key = cache.cache_key(self.root, f"{self.request[0]}x{self.request[1]}", listing)
        arrays, meta, cache_info = found or cache.open_or_build(cache.cache_file(prefix, key), key, self._decode, self._store_bytes)
        for bad_path, reason, _ in meta["unreadable"]:
            warn(f"{bad_path}: cannot decode ({reason}); skipped")
        result = {}
        for split in meta["splits"]:
            result[split] = ImageSet(
                images=mapped_tensor(arrays[f"{split}.images"]),
                mapped=True,
                labels=torch.from_numpy(arrays[f"{split}.labels"]),
                classes=list(meta["classes"]),
                paths=[str(self.root / p) for p in meta["paths"][split]],
                spec=self.spec,
                split=split,
                meta={
                    "per_image_original_size": [tuple(s) for s in meta["sizes"][split]],
                    "unreadable": [u for u in meta["unreadable"] if u[2] == split],
                    "common_size": meta["common_size"],
                    "size_rule": meta["size_rule"],
                    "cache": cache_info,
                },
            )
        return result

    def _all_files(self) -> list[tuple[str, Path, str]]:
        return [(split, p, c) for split in self.splits() for p, c in self.files[split]]

    def _headers(self) -> list[tuple]:
        """(size (w, h), mode, None) or (None, None, reason) of every file, from its header
        only; read once, on threads."""
        if self.walk.headers is None:
            from cnntools.data.images import displayed_size, pil

            Image = pil()  # the decompression-bomb limit, set before the worker threads start

            def header(path):
                try:
                    with Image.open(path) as im:
                        return displayed_size(im), im.mode, None  # as displayed: EXIF orientation applied
                except Exception as error:  # noqa: BLE001 - every decoder error is a report, not a crash
                    return None, None, _reason(error, path)

            all_files = self._all_files()
            # A header is a fraction of a millisecond: files go to the threads in groups, so
            # the pool's own overhead does not outweigh the work.
            groups = [all_files[i:i + _GROUP] for i in range(0, len(all_files), _GROUP)]
            with ThreadPoolExecutor(decode_workers()) as pool:
                self.walk.headers = [h for found in pool.map(lambda g: [header(p) for _, p, _ in g], groups) for h in found]
            if not any(h[0] is not None for h in self.walk.headers):
                raise CnnError(f"{self.root}: none of the {len(all_files)} image files could be decoded")
        return self.walk.headers

    @staticmethod
    def _common_size(good: list[tuple]) -> tuple[int, int, str]:
        """(height, width, rule): the median height and width of the readable files."""
        widths = np.array([s[0] for s, _, _ in good])
        heights = np.array([s[1] for s, _, _ in good])
        height, width = int(round(float(np.median(heights)))), int(round(float(np.median(widths))))
        rule = "all files" if widths.min() == widths.max() and heights.min() == heights.max() else "median"
        return height, width, rule

    def _plan(self) -> tuple[int, int, str, str, int]:
        """(height, width, size rule, mode, channels) the files are decoded to, from their headers."""
        good = [h for h in self._headers() if h[0] is not None]
        grey = all(mode in _GREY_MODES for _, mode, _ in good)
        if self.request is not None:
            height, width = self.request
            rule = "requested"
        else:
            height, width, rule = self._common_size(good)
        return height, width, rule, ("L" if grey else "RGB"), (1 if grey else 3)

    def _store_bytes(self) -> int:
        """At most the bytes the store will hold (claimed on disk before decoding starts):
        every file's pixels and label, its entry in the meta document (a JSON escape is at most 6
        bytes a character), the checksums."""
        height, width, _, _, channels = self._plan()
        files = self._all_files()
        pixels = len(files) * channels * height * width
        return pixels + pixels // (1 << 18) + 4096 + sum(8 + 64 + 6 * len(self._relative(p)) for _, p, _ in files)

    def _decode(self, writer) -> dict:
        """Decode every file into `writer`, chunk by chunk; returns the store's meta document."""
        from cnntools.data.images import decode_file

        all_files = self._all_files()
        headers = self._headers()
        height, width, rule, target_mode, channels = self._plan()

        # Workers decode groups of files straight into one of two chunk buffers, already
        # N×C×H×W: the main thread only writes full buffers out. With at most one buffer's
        # worth of files in flight, no worker reaches the buffer being written.
        workers = decode_workers()
        rows = _GROUP * math.ceil(max(chunk_rows(channels * height * width), 2 * workers * _GROUP) / _GROUP)
        buffers = [np.empty((rows, channels, height, width), dtype=np.uint8) for _ in range(2)]

        def decode_one(slot, path, reason):
            if reason is not None:
                return reason
            try:
                array = decode_file(path, target_mode, (width, height))
            except Exception as error:  # noqa: BLE001
                return _reason(error, path)
            buffers[(slot // rows) % 2][slot % rows] = array[None] if channels == 1 else array.transpose(2, 0, 1)
            return None

        def decode(group):
            return [decode_one(*job) for job in group]

        class_index = {c: i for i, c in enumerate(self.classes)}
        meta = {"classes": self.classes, "splits": [], "paths": {}, "sizes": {}, "unreadable": [],
                "common_size": [height, width], "size_rule": rule, "mode": target_mode}
        info(f"Decoding {len(all_files)} images from {self.root} ({target_mode} {height}x{width}) ...")
        with ThreadPoolExecutor(workers) as pool, decode_progress(len(all_files)) as advance, _no_gc():
            done = 0
            for split in self.splits():
                jobs = [(i, f) for i, f in enumerate(all_files) if f[0] == split]
                labels, paths, sizes = [], [], []
                filled = np.zeros(rows, dtype=bool)
                writer.begin(f"{split}.images", (channels, height, width))
                todo = [(slot, p, headers[i][2]) for slot, (i, (_, p, _)) in enumerate(jobs)]
                groups = ordered_map(pool, decode, (todo[a:a + _GROUP] for a in range(0, len(todo), _GROUP)),
                                     window=rows // _GROUP)
                results = (reason for group in groups for reason in group)
                for slot, ((i, (_, path, cls)), reason) in enumerate(zip(jobs, results)):
                    done += 1
                    if reason is not None:
                        meta["unreadable"].append([str(path), reason, split])
                    else:
                        filled[slot % rows] = True
                        labels.append(class_index[cls])
                        paths.append(self._relative(path))
                        sizes.append(list(headers[i][0]))
                    if slot % rows == rows - 1 or slot == len(jobs) - 1:
                        count = slot % rows + 1
                        chunk = buffers[(slot // rows) % 2][:count]
                        writer.write(chunk if filled[:count].all() else chunk[filled[:count]])
                        filled[:] = False
                    advance(done)
                writer.end()
                writer.add(f"{split}.labels", np.asarray(labels, dtype=np.int64))
                if not labels:
                    warn(f"{self.layout[split]}: no readable images; the {split} split is left out")
                    continue
                meta["splits"].append(split)
                meta["paths"][split] = paths
                meta["sizes"][split] = sizes
        if not meta["splits"]:
            raise CnnError(f"{self.root}: no readable images in any split")
        return meta


def count_once(files: dict[str, list[tuple[Path, str]]], layout: dict[str, Path], class_names: set[str],
               stats: dict | None = None) -> tuple[dict[str, list[tuple[Path, str]]], set[str]]:
    """(files, class names) with every real file once: a file reached by two paths (a link to
    a folder, a loop back to the root) is kept under its own class, the class folder it
    really lies in, and where the paths disagree on the class a warning names both. Keyed
    by the real file's (st_dev, st_ino); a class left with no file of its own is dropped.
    `stats`: the walk's own stat of each path (links followed), so no file is stat'ed twice."""
    seen: dict[tuple[int, int], list[tuple[str, int]]] = {}
    stats = stats or {}
    for split, entries in files.items():
        for i, (path, _) in enumerate(entries):
            try:
                st = stats.get(path) or os.stat(path)
            except OSError:
                continue  # vanished since the walk: the decoder reports it
            seen.setdefault((st.st_dev, st.st_ino), []).append((split, i))
    dropped: set[tuple[str, int]] = set()
    for reached in seen.values():
        if len(reached) > 1:
            dropped.update(_duplicates(files, layout, reached))
    if not dropped:
        return files, class_names
    kept = {split: [e for i, e in enumerate(entries) if (split, i) not in dropped] for split, entries in files.items()}
    kept = {split: entries for split, entries in kept.items() if entries}
    remaining = {cls for entries in kept.values() for _, cls in entries}
    for cls in sorted(class_names - remaining):
        warn(f"class {cls}: every file in it is reached under another class too; class folder ignored")
    return kept, remaining


def _duplicates(files: dict, layout: dict[str, Path], reached: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The entries of one real file to leave out: all but the one under its own class folder
    (the first one if none is), with a warning when they name other classes."""
    def own(entry: tuple[str, int]) -> bool:
        split, i = entry
        path, cls = files[split][i]
        # Under the split's real folder, in the folder named for its class (a class folder that
        # is a link to another class's folder does not make that folder its own).
        return os.path.realpath(path).startswith(os.path.join(os.path.realpath(layout[split]), cls, ""))

    keep = next((entry for entry in reached if own(entry)), reached[0])
    path, cls = files[keep[0]][keep[1]]
    for split, i in reached:
        other, other_cls = files[split][i]
        if (split, i) != keep and (split, other_cls) != (keep[0], cls):
            where = f"{other_cls}" if split == keep[0] else f"{split}/{other_cls}"
            here = f"{cls}" if split == keep[0] else f"{keep[0]}/{cls}"
            warn(f"{other}: the same file as {path}, which is in class {here}; counted once, "
                 f"there, not again under {where}")
    return [entry for entry in reached if entry != keep]


@contextlib.contextmanager
def _no_gc():
    """The cyclic collector off: decoding makes many small objects and no cycles, and the
    collector's passes over them cost more than the bookkeeping around a decode."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _reason(error: Exception, path: Path | None = None) -> str:
    from cnntools.data.images import is_bomb, max_pixels

    if is_bomb(error):
        return f"more than {max_pixels():,} pixels, the decompression-bomb limit (CNNTOOLS_MAX_IMAGE_PIXELS)"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if path is not None:
        text = text.replace(f" '{path}'", "").replace(f" {path}", "").strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
