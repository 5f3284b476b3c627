"""The image store and its cache folder as untrusted input (issue 25, items 1 and 2).

Every byte of a store is checked before use: the header, labels and meta document on open (a
digest, then their consistency), the pixels chunk by chunk before first use (CRC-32). The cache
folder may be hostile: links, FIFOs, devices and sockets planted at a store's or lock's name are
never followed or opened, a folder of another user or writable by everyone holds no store, a
read-only or full folder sends the store to TMPDIR (one decode), no room anywhere is one
`Error:` line, and the temporary files of killed builds are removed on the next run. Full and
read-only file systems are small tmpfs mounts made (and unmounted) by the tests themselves.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnntools.core.errors import CnnError
from cnntools.data import channel_stats, load_split
from cnntools.data import folders as folders_mod
from cnntools.data import store as store_mod
from cnntools.data.store import DATA_START, StoreCorrupted, StoreDamaged, StoreWriter, open_store

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from test_data_store import _folder as make_folder, cache  # noqa: E402,F401  (the cache fixture too)


def _folder(root: Path, n_per_class: int = 10, size=(40, 30), classes=("cat", "dog")) -> Path:
    """test_data_store's class folder, in PNG: lossless, so a flipped byte is a flipped pixel."""
    return make_folder(root, n_per_class, size, fmt="png", classes=classes)


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """TMPDIR for this test (tempfile caches its choice, so it is set there too)."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def deadline():
    """Fail instead of hanging: a FIFO opened for reading would block forever."""
    def expired(*_):
        raise TimeoutError("blocked for 60 s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "1m", read_only: bool = False):
    """A small tmpfs mounted at `folder` for the block (remounted read-only when asked)."""
    folder.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip()})")
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _store(cache: Path) -> Path:
    (path,) = [p for p in cache.glob("*.safetensors") if not p.name.startswith(".")]
    return path


def _layout(path: Path) -> tuple[dict, int]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), 8 + length


def _reference(root: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels as decoding the files gives them, without any store."""
    from cnntools.data.images import decode_file, pil

    pil()
    paths = sorted(root.glob("*/*.png"))
    images = torch.stack([torch.from_numpy(decode_file(p, "RGB", (size, size)).copy()).permute(2, 0, 1) for p in paths])
    return images, torch.tensor([0 if p.parent.name == "cat" else 1 for p in paths])


def _no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".tmp-store-")]


# ----------------------------------------------------------------------------- bytes of the store


def _flip(path: Path, start: int, count: int) -> None:
    data = bytearray(path.read_bytes())
    for i in range(start, start + count):
        data[i] ^= 0xFF  # same size: only a checksum can tell
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["issue: 3000 bytes", "last pixel byte"])
def test_corrupted_pixels_stop_dataset_stats_with_one_line_and_the_rerun_is_right(cli, tmp_path, cache, where):
    root = _folder(tmp_path / "f")
    args = ("dataset-stats", "--data", root, "--image-size", "16", "--format", "json")
    good = cli(*args)
    assert good.exit_code == 0, good.stderr
    path = _store(cache)
    header, base = _layout(path)
    begin, stop = header["train.images"]["data_offsets"]
    _flip(path, base + begin + 3000, 3000) if where.startswith("issue") else _flip(path, base + stop - 1, 1)
    bad = cli(*args)
    assert bad.exit_code == 1 and bad.stdout == ""
    lines = bad.stderr.strip().splitlines()
    assert lines[-1].startswith(f"Error: {path}: the image store is damaged") and "run the command again" in lines[-1]
    assert "unexpected" not in bad.stderr and len([l for l in lines if l.startswith("Error")]) == 1
    again = cli(*args)  # the damaged store was removed: decoded anew, the same numbers as before
    assert again.exit_code == 0 and "Decoding" in again.stderr
    assert again.json()["mean"] == good.json()["mean"] and again.json()["std"] == good.json()["std"]


def test_corrupted_pixels_stop_train_with_one_line(cli, tmp_path, cache):
    root = _folder(tmp_path / "f")
    args = ("train", "--data", root, "--arch", "lenet", "--image-size", "32", "--epochs", "1", "--device", "cpu",
            "--val-split", "0", "-q", "-o", tmp_path / "m.safetensors")
    assert cli(*args).exit_code == 0
    path = _store(cache)
    header, base = _layout(path)
    _flip(path, base + header["train.images"]["data_offsets"][0] + 3000, 3000)
    (tmp_path / "m.safetensors").unlink()
    bad = cli(*args)
    assert bad.exit_code == 1 and bad.stderr.strip().splitlines()[-1].startswith(f"Error: {path}: the image store is damaged")
    assert "IndexError" not in bad.stderr and "unexpected" not in bad.stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_pixels_are_checked_lazily_chunk_by_chunk(tmp_path, monkeypatch):
    """Only the chunks a read touches are checked, each once; a bad chunk is found when its
    rows are first read, not before, and the check agrees with zlib's CRC-32 of the bytes."""
    from cnntools.data.imageset import mapped_tensor

    monkeypatch.setattr(store_mod, "CHUNK_BYTES", 4096)
    path = tmp_path / "s.safetensors"
    pixels = np.random.default_rng(1).integers(0, 256, (40, 3, 16, 16), dtype=np.uint8)  # 768 B each: 30 KiB, 8 chunks
    with StoreWriter(path) as writer:
        writer.begin("x.images", (3, 16, 16))
        writer.write(pixels[:7])
        writer.write(pixels[7:])  # writes that straddle chunk edges
        writer.end()
        writer.commit({}, {})
    arrays, _, _ = open_store(path)
    checks = arrays["x.images"].checks
    import zlib

    flat = pixels.reshape(-1)
    assert checks.crcs.tolist() == [zlib.crc32(flat[i : i + 4096].tobytes()) for i in range(0, flat.size, 4096)]
    images = mapped_tensor(arrays["x.images"])
    assert images.shape == (40, 3, 16, 16) and checks.checked.sum() == 0  # shape, dtype: no pixels read
    assert torch.equal(images[torch.tensor([0, 1])], torch.from_numpy(pixels[[0, 1]]))
    assert checks.checked.tolist() == [True] + [False] * 7
    assert type(images[5:12]) is torch.Tensor and checks.checked[:3].all() and not checks.checked[3:].any()
    # Damage chunk 6 (rows 32..37) on disk: rows elsewhere still read, row 33 stops the run.
    _flip(path, DATA_START + 6 * 4096 + 100, 1)
    arrays, _, _ = open_store(path)  # the header, labels and meta are fine: it opens
    images = mapped_tensor(arrays["x.images"])
    assert torch.equal(images[:30], torch.from_numpy(pixels[:30]))
    with pytest.raises(StoreCorrupted, match=r"x\.images: bytes 24,576-28,671 do not match"):
        images[[2, 33]]
    assert not path.exists()  # removed, so the next run decodes again


@pytest.mark.parametrize("op", ["sum", "float", "numpy", "clone", "cat", "subset"])
def test_every_way_of_reading_pixels_is_checked(tmp_path, monkeypatch, op):
    from cnntools.data.imageset import ImageSet, mapped_tensor

    monkeypatch.setattr(store_mod, "CHUNK_BYTES", 4096)
    path = tmp_path / "s.safetensors"
    with StoreWriter(path) as writer:
        writer.add("x.images", np.zeros((20, 1, 16, 16), dtype=np.uint8))
        writer.commit({}, {})
    _flip(path, DATA_START + 5000, 1)
    images = mapped_tensor(open_store(path)[0]["x.images"])
    calls = {"sum": lambda t: t.sum(), "float": lambda t: t.float(), "numpy": lambda t: np.asarray(t),
             "clone": lambda t: t.clone(), "cat": lambda t: torch.cat([t[:1], t]),
             "subset": lambda t: ImageSet(images=t, labels=torch.zeros(20, dtype=torch.long), classes=["a"], mapped=True).subset([19, 0])}
    with pytest.raises(StoreCorrupted):
        calls[op](images)


def _label_edit(value):
    def edit(path):
        header, base = _layout(path)
        data = bytearray(path.read_bytes())
        begin = base + header["train.labels"]["data_offsets"][0]
        data[begin + 8 * 3 : begin + 8 * 4] = struct.pack("<q", value)
        path.write_bytes(bytes(data))
    return edit


def _swap_labels(path):
    header, base = _layout(path)
    data = bytearray(path.read_bytes())
    begin = base + header["train.labels"]["data_offsets"][0]
    labels = np.frombuffer(bytes(data[begin : begin + 8 * 20]), dtype=np.int64).copy()
    i, j = int(np.argmin(labels)), int(np.argmax(labels))
    labels[[i, j]] = labels[[j, i]]
    data[begin : begin + 8 * 20] = labels.tobytes()
    path.write_bytes(bytes(data))


def _text_edit(old: bytes, new: bytes):
    def edit(path):
        data = path.read_bytes()
        assert len(old) == len(new) and data.count(old) >= 1, old
        path.write_bytes(data.replace(old, new, 1))
    return edit


def _digest_edit(path) -> tuple[bytes, bytes]:
    at = path.read_bytes().index(b'"digest":"') + len(b'"digest":"')
    old = path.read_bytes()[at - 10 : at + 1]
    return old, old[:-1] + (b"0" if old[-1:] != b"0" else b"1")


def _drop_first_path(path):
    data = path.read_bytes()
    at = data.index(b'"paths": {"train": [') + len(b'"paths": {"train": [')
    end = data.index(b", ", at) + 2
    path.write_bytes(data[:at] + b" " * (end - at) + data[end:])


@pytest.mark.parametrize("name, edit", [
    ("label 7 of 2 classes", _label_edit(7)),
    ("label -1", _label_edit(-1)),
    ("label 2**62", _label_edit(2**62)),
    ("two labels swapped", _swap_labels),
    ("class list cut to one name", _text_edit(b'"classes": ["cat", "dog"]', b'"classes": ["cat"]       ')),
    ("class renamed", _text_edit(b'"classes": ["cat", "dog"]', b'"classes": ["cat", "cow"]')),
    ("image shape, same bytes", _text_edit(b'"shape":[20,3,16,16]', b'"shape":[10,3,32,16]')),
    ("paths list shortened", _drop_first_path),
    ("chunk size", _text_edit(b'"chunk_bytes":"1048576"', b'"chunk_bytes":"1048575"')),
    ("digest", lambda path: _text_edit(*_digest_edit(path))(path)),
    ("another format", _text_edit(b'"format":"cnntools.store/2"', b'"format":"cnntools.stork/2"')),
])
def test_an_edited_header_meta_or_label_is_found_on_open_and_rebuilt(tmp_path, cache, capsys, name, edit):
    root = _folder(tmp_path / "f")
    first = load_split(str(root), "train", image_size=16)
    reference, labels = _reference(root, 16)
    assert torch.equal(first.images, reference) and torch.equal(first.labels, labels)
    path = _store(cache)
    edit(path)
    capsys.readouterr()
    again = load_split(str(root), "train", image_size=16)
    err = capsys.readouterr().err
    assert f"{path}: damaged image store" in err and "decoding again" in err, err
    assert not again.meta["cache"]["hit"] and again.meta["cache"]["written"]
    assert torch.equal(again.images, reference) and torch.equal(again.labels, labels)
    assert again.classes == ["cat", "dog"] and again.class_counts() == [10, 10]


def test_a_store_of_the_previous_format_is_rebuilt_without_alarm(tmp_path, cache, capsys):
    """Format 1 stores (no checksums) are decoded again after an upgrade: a note, no warning."""
    root = _folder(tmp_path / "f")
    load_split(str(root), "train", image_size=16)
    path = _store(cache)
    _text_edit(b'"format":"cnntools.store/2"', b'"format":"cnntools.store/1"')(path)
    capsys.readouterr()
    again = load_split(str(root), "train", image_size=16)
    err = capsys.readouterr().err
    assert "Warning" not in err and f"{path}: an image store of an older format" in err
    assert again.meta["cache"]["written"] and torch.equal(again.images, _reference(root, 16)[0])


def _write(path: Path, images: np.ndarray, labels, meta: dict, extra=None) -> None:
    with StoreWriter(path) as writer:
        writer.add("train.images", images)
        if labels is not None:
            writer.add("train.labels", np.asarray(labels, dtype=np.int64))
        for name, array in (extra or {}).items():
            writer.add(name, array)
        writer.commit({"key": "k"}, meta)


def _meta(n: int, **changes) -> dict:
    meta = {"classes": ["cat", "dog"], "splits": ["train"], "paths": {"train": [f"c/{i}.png" for i in range(n)]},
            "sizes": {"train": [[4, 4]] * n}, "unreadable": [], "common_size": [4, 4], "size_rule": "all files", "mode": "RGB"}
    meta.update(changes)
    return meta


@pytest.mark.parametrize("case, labels, meta, extra, message", [
    ("label 7", [0, 1, 7, 0], _meta(4), None, "labels run from 0 to 7"),
    ("label -1", [0, -1, 1, 0], _meta(4), None, "labels run from -1"),
    ("label 2**62", [0, 2**62, 1, 0], _meta(4), None, "outside the 2 classes"),
    ("one label short", [0, 1, 1], _meta(4), None, "3 labels for 4 images"),
    ("no labels", None, _meta(4), None, "has no images or labels"),
    ("paths short", [0, 1, 1, 0], _meta(4, paths={"train": ["a", "b"]}), None, r"paths\[train\]: 2 entries for 4"),
    ("sizes long", [0, 1, 1, 0], _meta(4, sizes={"train": [[4, 4]] * 5}), None, r"sizes\[train\]: 5 entries"),
    ("paths not text", [0, 1, 1, 0], _meta(4, paths={"train": [1, 2, 3, 4]}), None, "not a list of paths"),
    ("duplicate class", [0, 1, 1, 0], _meta(4, classes=["cat", "cat"]), None, "distinct names"),
    ("no classes", [0, 0, 0, 0], _meta(4, classes=[]), None, "distinct names"),
    ("split missing", [0, 1, 1, 0], _meta(4, splits=["train", "test"]), None, "split 'test' has no images"),
    ("common size", [0, 1, 1, 0], _meta(4, common_size=[8, 8]), None, "common_size"),
    ("unreadable", [0, 1, 1, 0], _meta(4, unreadable=[["a", 3]]), None, "unreadable"),
    ("meta a list", [0, 1, 1, 0], [1, 2], None, "not an object"),
    ("foreign tensor", [0, 1, 1, 0], _meta(4), {"evil": np.zeros(3, np.uint8)}, "unexpected tensor 'evil'"),
    ("labels of no images", [0, 1, 1, 0], _meta(4), {"val.labels": np.zeros(2, np.int64)}, "no images they belong to"),
])
def test_a_store_whose_digest_holds_is_still_checked_for_consistency(tmp_path, case, labels, meta, extra, message):
    """A store written by a faulty (or malicious) writer has a valid digest: its contents are
    still checked against each other before anything is used."""
    path = tmp_path / "s.safetensors"
    _write(path, np.zeros((4, 3, 4, 4), dtype=np.uint8), labels, meta, extra)
    with pytest.raises(StoreDamaged, match=message):
        open_store(path, {"key": "k"})


def test_a_consistent_store_opens(tmp_path):
    path = tmp_path / "s.safetensors"
    _write(path, np.arange(192, dtype=np.uint8).reshape(4, 3, 4, 4), [0, 1, 1, 0], _meta(4))
    arrays, meta, metadata = open_store(path, {"key": "k"})
    assert arrays["train.labels"].tolist() == [0, 1, 1, 0] and meta["classes"] == ["cat", "dog"]
    assert "train.images.crc32" not in arrays and metadata["format"] == "cnntools.store/2"


def test_header_offsets_that_overlap_or_leave_gaps_are_refused(tmp_path):
    path = tmp_path / "s.safetensors"
    _write(path, np.zeros((4, 3, 4, 4), dtype=np.uint8), [0, 1, 1, 0], _meta(4))
    header, _ = _layout(path)
    for name, entry in (("train.labels", [0, 32]), ("train.labels", [190, 222])):
        broken = json.loads(json.dumps(header))
        broken[name]["data_offsets"] = entry
        text = json.dumps(broken, separators=(",", ":")).encode().ljust(DATA_START - 8, b" ")
        path.write_bytes(path.read_bytes()[:8] + text + path.read_bytes()[DATA_START:])
        with pytest.raises(StoreDamaged, match="gap or an overlap"):
            open_store(path)


# ----------------------------------------------------------------------------- a hostile cache folder


def _plant(path: Path, kind: str, outside: Path) -> None:
    if kind == "symlink to a new file":
        path.symlink_to(outside)
    elif kind == "symlink to an existing file":
        outside.write_bytes(b"precious")
        path.symlink_to(outside)
    elif kind == "symlink to a folder":
        outside.mkdir()
        path.symlink_to(outside)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "character device":
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    elif kind == "block device":
        os.mknod(path, 0o600 | stat.S_IFBLK, os.makedev(7, 200))
    elif kind == "socket":
        here = os.getcwd()
        os.chdir(path.parent)  # a socket's path is limited to 107 bytes: bind a relative name
        try:
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(path.name)
            sock.close()
        finally:
            os.chdir(here)


def _store_and_lock_removed(tmp_path, cache):
    """A folder whose store was built, then removed with its lock: (root, reference images and
    labels, the store's path, the lock's path) for a test to plant something where they were."""
    root = _folder(tmp_path / "f")
    reference, labels = _reference(root, 16)
    load_split(str(root), "train", image_size=16)
    path = _store(cache)
    lock = path.with_name(path.name + ".lock")
    path.unlink()
    lock.unlink()
    return root, reference, labels, path, lock


KINDS = ["symlink to a new file", "symlink to an existing file", "symlink to a folder", "fifo", "character device",
         "block device", "socket"]


@pytest.mark.parametrize("where", ["lock", "store"])
@pytest.mark.parametrize("kind", KINDS)
def test_nodes_planted_at_the_store_or_lock_are_never_followed_or_opened(tmp_path, cache, capsys, deadline, kind, where):
    root, reference, labels, path, lock = _store_and_lock_removed(tmp_path, cache)
    target = lock if where == "lock" else path
    outside = tmp_path / "outside"
    _plant(target, kind, outside)
    capsys.readouterr()
    again = load_split(str(root), "train", image_size=16)
    err = capsys.readouterr().err
    assert torch.equal(again.images, reference) and torch.equal(again.labels, labels)
    assert again.meta["cache"]["written"], err
    words = {"fifo": "a FIFO", "socket": "a socket"}.get(kind, "a symbolic link" if kind.startswith("symlink") else f"a {kind}")
    belongs = "the image store" if where == "store" else "the image store's lock"
    assert f"{target}: {words} where {belongs} belongs; removed without opening it" in err, err
    # What the link pointed at is as it was: not created, not written, not emptied.
    if kind == "symlink to a new file":
        assert not outside.exists()
    elif kind == "symlink to an existing file":
        assert outside.read_bytes() == b"precious"
    elif kind == "symlink to a folder":
        assert list(outside.iterdir()) == []
    assert stat.S_ISREG(os.lstat(path).st_mode) and stat.S_ISREG(os.lstat(lock).st_mode)


@pytest.mark.parametrize("where", ["lock", "store"])
def test_a_folder_where_the_store_or_lock_belongs_sends_the_store_elsewhere(tmp_path, cache, scratch, capsys, where):
    root, reference, _, path, lock = _store_and_lock_removed(tmp_path, cache)
    (lock if where == "lock" else path).mkdir()
    capsys.readouterr()
    again = load_split(str(root), "train", image_size=16)
    err = capsys.readouterr().err
    assert torch.equal(again.images, reference) and again.meta["cache"]["file"] is None
    assert err.count("Decoding 20 images") == 1 and err.count("Warning") == 1, err
    belongs = "the image store" if where == "store" else "the image store's lock"
    assert f"could not write the image store in {cache} (a folder where {belongs} belongs)" in err
    _no_leftovers(cache)


def test_a_fifo_at_the_store_does_not_block_dataset_stats(cli, tmp_path, cache, deadline):
    root = _folder(tmp_path / "f")
    args = ("dataset-stats", "--data", root, "--image-size", "16", "--format", "json")
    first = cli(*args)
    path = _store(cache)
    path.unlink()
    os.mkfifo(path)
    again = cli(*args)
    assert again.exit_code == 0 and again.json()["mean"] == first.json()["mean"]
    assert again.stderr.count("Warning") == 1 and "a FIFO where the image store belongs" in again.stderr


@pytest.mark.parametrize("problem", ["world-writable", "another user's", "world-writable with sticky bit"])
def test_a_shared_cache_folder_holds_no_store(cli, tmp_path, cache, problem):
    root = _folder(tmp_path / "f")
    cache.mkdir()
    if problem == "another user's":
        os.chown(cache, 4242, 4242)
    else:
        os.chmod(cache, 0o1777 if "sticky" in problem else 0o777)
    result = cli("dataset-stats", "--data", root, "--image-size", "16", "--format", "json")
    assert result.exit_code == 0, result.stderr
    reason = "belongs to another user (uid 4242)" if problem == "another user's" else "is writable by every user"
    assert f"cache folder {cache} {reason}; keeping no image store there" in result.stderr
    assert result.stderr.count("Warning") == 1
    assert list(cache.iterdir()) == [] and result.json()["folder"]["cache"]["file"] is None
    images, _ = _reference(root, 16)
    x = images.double() / 255
    assert np.allclose(result.json()["mean"], x.mean(dim=(0, 2, 3)).numpy(), atol=1e-12)


def test_cnntools_cache_naming_a_file_is_one_clear_warning(cli, tmp_path, monkeypatch):
    root = _folder(tmp_path / "f")
    plain = tmp_path / "not-a-folder"
    plain.write_text("keep me")
    monkeypatch.setenv("CNNTOOLS_CACHE", str(plain))
    result = cli("dataset-stats", "--data", root, "--image-size", "16", "--format", "json")
    assert result.exit_code == 0, result.stderr
    warnings = [l for l in result.stderr.splitlines() if l.startswith("Warning")]
    assert warnings == [f"Warning: cache folder {plain} is a file, not a folder; keeping no image store there "
                        "(each run decodes into a temporary one; set CNNTOOLS_CACHE to a folder of your own)"]
    assert "damaged" not in result.stderr and plain.read_text() == "keep me"


# ----------------------------------------------------------------------------- read-only and full disks

STATS = ("dataset-stats", "--image-size", "128", "--format", "json")  # 24 images at 3x128x128: 1.2 MB, more than 1 MiB


def _expected_mean(root: Path) -> np.ndarray:
    images, _ = _reference(root, 128)
    return (images.double() / 255).mean(dim=(0, 2, 3)).numpy()


@pytest.mark.parametrize("state", ["read-only", "full"])
def test_a_read_only_or_full_cache_folder_falls_back_to_tmpdir_with_one_decode(cli, tmp_path, cache, scratch, state):
    root = _folder(tmp_path / "f", n_per_class=12)
    with tmpfs(cache, read_only=state == "read-only"):
        result = cli(*STATS, "--data", root)
        assert result.exit_code == 0, result.stderr
        assert result.stderr.count("Decoding 24 images") == 1, result.stderr
        assert f"could not write the image store in {cache}" in result.stderr
        assert np.allclose(result.json()["mean"], _expected_mean(root), atol=1e-12)
        assert result.json()["folder"]["cache"]["file"] is None
        if state == "full":
            assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []
    _no_leftovers(scratch)


def test_a_full_cache_folder_found_mid_write_still_ends_right(tmp_path, cache, scratch, monkeypatch, capsys):
    """When the space claimed beforehand falls short (here: nothing is claimed), the write
    fails mid-store: the partial file is removed and the store is built once more in TMPDIR."""
    monkeypatch.setattr(folders_mod.FolderSource, "_store_bytes", lambda self: 0)
    root = _folder(tmp_path / "f", n_per_class=12)
    with tmpfs(cache):
        data = load_split(str(root), "train", image_size=128)
        assert "No space left on device" in capsys.readouterr().err
        assert torch.equal(data.images, _reference(root, 128)[0])
        _no_leftovers(cache)


@pytest.mark.parametrize("caching", ["full cache folder", "CNNTOOLS_CACHE=off"])
def test_no_room_anywhere_is_one_error_line_naming_the_size_and_folders(cli, tmp_path, cache, scratch, monkeypatch, caching):
    root = _folder(tmp_path / "f", n_per_class=12)
    if caching != "full cache folder":
        monkeypatch.setenv("CNNTOOLS_CACHE", "off")
    with tmpfs(cache), tmpfs(scratch):
        result = cli(*STATS, "--data", root)
        assert result.exit_code == 1 and result.stdout == ""
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("Error: no folder can hold the decoded images (1.1 MiB needed); tried ")
        assert f"{scratch} (No space left on device, " in last and "free)" in last
        assert (f"{cache} (No space left on device" in last) == (caching == "full cache folder")
        assert "unexpected" not in result.stderr and "Decoding" not in result.stderr  # nothing decoded in vain
        _no_leftovers(cache)
        _no_leftovers(scratch)


def test_a_derived_store_on_a_full_disk_is_one_error(tmp_path, cache, scratch, monkeypatch):
    root = _folder(tmp_path / "f", n_per_class=12)
    data = load_split(str(root), "train", image_size=64)
    monkeypatch.setenv("CNNTOOLS_CACHE", "off")
    with tmpfs(scratch):
        with pytest.raises(CnnError, match=r"no folder can hold the decoded images \(1\.1 MiB needed\)"):
            data.resized(128)
        _no_leftovers(scratch)


def test_a_write_that_fills_tmpdir_midway_is_one_error(tmp_path, scratch, monkeypatch):
    monkeypatch.setenv("CNNTOOLS_CACHE", "off")
    monkeypatch.setattr(folders_mod.FolderSource, "_store_bytes", lambda self: 0)
    root = _folder(tmp_path / "f", n_per_class=12)
    with tmpfs(scratch):
        with pytest.raises(CnnError, match=rf"tried {scratch} \(No space left on device"):
            load_split(str(root), "train", image_size=128)
        _no_leftovers(scratch)


# ----------------------------------------------------------------------------- killed builds


def _aged(path: Path) -> None:
    old = time.time() - 3600
    os.utime(path, (old, old))


def test_leftovers_of_killed_builds_are_removed_and_live_ones_kept(tmp_path, cache, monkeypatch):
    cache.mkdir()
    dead = cache / ".tmp-store-dead.safetensors"
    dead.write_bytes(b"x" * 1000)
    _aged(dead)
    live = cache / ".tmp-store-live.safetensors"
    live.write_bytes(b"x" * 1000)
    _aged(live)
    fresh = cache / ".tmp-store-fresh.safetensors"  # between mkstemp and its lock: too young to judge
    fresh.write_bytes(b"x")
    link = cache / ".tmp-store-link.safetensors"
    link.symlink_to(tmp_path / "victim")
    os.utime(link, (1, 1), follow_symlinks=False)
    holder = open(live, "rb")
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX)  # its writer is alive
    try:
        root = _folder(tmp_path / "f")
        load_split(str(root), "train", image_size=16)
        names = sorted(p.name for p in cache.iterdir() if p.name.startswith(".tmp"))
        assert names == [fresh.name, live.name]
    finally:
        holder.close()


_SLOW_BUILD = """
import sys, time
import cnntools.data.images as images
decode = images.decode_file
def slow(*args, **kwargs):
    time.sleep(0.05)
    return decode(*args, **kwargs)
images.decode_file = slow
from cnntools.data import load_split
load_split(sys.argv[1], "train", image_size=64)
"""


def test_a_build_killed_with_sigkill_leaves_nothing_after_the_next_run(tmp_path, cache):
    root = _folder(tmp_path / "f", n_per_class=40)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD, str(root)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (cache.exists() and list(cache.glob(".tmp-store-*"))):
            time.sleep(0.05)
        time.sleep(0.3)
        proc.kill()
    finally:
        proc.wait()
    (partial,) = cache.glob(".tmp-store-*.safetensors")
    assert partial.stat().st_size > 0
    _aged(partial)  # the next run is more than a few seconds later
    data = load_split(str(root), "train", image_size=64)
    assert data.meta["cache"]["written"] and len(data) == 80
    _no_leftovers(cache)


def test_a_built_store_passes_its_checks_and_costs_one_check_per_chunk(tmp_path, cache):
    """The whole path: a folder decoded into a store, mapped, every chunk checked once by a
    full pass (channel_stats), which then equals the statistics of the files."""
    root = _folder(tmp_path / "f", n_per_class=12)
    data = load_split(str(root), "train", image_size=128)
    checks = data.images.checks
    assert len(checks.crcs) == 2 and checks.left == 2  # 1.2 MB: two 1 MiB chunks, none checked yet
    mean, _ = channel_stats(data)
    assert checks.done and np.allclose(mean, _expected_mean(root), atol=1e-12)
