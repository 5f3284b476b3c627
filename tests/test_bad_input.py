"""The bad-input matrix: every command, every kind of wrong input → one `Error:` line, the
documented exit status, no traceback, and no output file left behind (SPEC §2 "Errors").

Checkpoints are built with the checkpoint API from untrained models (no training needed to
be refused); image folders and CIFAR layouts are generated here.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnntools.checkpoint import checkpoint_bytes, save_checkpoint
from cnntools.models import create_model
from test_checkpoint import _meta as checkpoint_meta


def meta(arch_name="simple-cnn", channels=1, size=8, **changes):
    """test_checkpoint's metadata for an untrained model, with top-level entries replaced."""
    doc = checkpoint_meta(arch_name, channels, size).to_json()
    doc.update(changes)
    return doc


def raw_safetensors(header: dict, body: bytes = b"") -> bytes:
    """A safetensors file with exactly this header (for headers no writer would produce)."""
    text = __import__("json").dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height pixels (no pixel data): a decompression bomb's front."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


class Evil:
    """Unpickling this creates the marker file: proof that a pickle was (or was not) loaded."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    model = create_model("simple-cnn", 1, 8, 10)
    good = root / "good.safetensors"
    save_checkpoint(str(good), model, meta())
    data = good.read_bytes()
    files = {"good": good}

    def put(name, content):
        path = root / name
        path.write_bytes(content)
        files[name] = path

    put("empty.safetensors", b"")
    (root / "folder.safetensors").mkdir()
    files["folder.safetensors"] = root / "folder.safetensors"
    put("notes.safetensors", b"these are my notes, not a checkpoint\n" * 3)
    put("truncated.safetensors", data[: len(data) // 2])
    put("cut-header.safetensors", data[:40])
    from safetensors.torch import save

    put("foreign.safetensors", save({"w": torch.zeros(3)}, metadata={"framework": "someone else"}))
    put("unknown-arch.safetensors", checkpoint_bytes(model, meta(arch={"arch": "transformer-xxl", "in_channels": 1, "image_size": 8, "num_classes": 10})))
    put("arch-not-object.safetensors", checkpoint_bytes(model, meta(arch="simple-cnn")))
    put("classes-wrong.safetensors", checkpoint_bytes(model, meta(classes=["a", "b"])))
    put("std-zero.safetensors", checkpoint_bytes(model, meta(std=[0.0])))
    not_json = data.replace(b'"classes":"[', b'"classes":"{', 1)
    assert not_json != data
    put("metadata-not-json.safetensors", not_json)
    put("mismatch.safetensors", checkpoint_bytes(
        model, meta(arch={"arch": "lenet", "in_channels": 1, "image_size": 32, "num_classes": 10}, image_size=32)))
    # Metadata that disagrees with itself or asks for impossible numbers (issue 14, class 4).
    put("size-disagrees.safetensors", checkpoint_bytes(model, meta(image_size=16)))
    put("channels-disagree.safetensors", checkpoint_bytes(model, meta(in_channels=3)))
    put("size-65536.safetensors", checkpoint_bytes(
        model, meta(arch={"arch": "simple-cnn", "in_channels": 1, "image_size": 65536, "num_classes": 10}, image_size=65536)))
    put("classes-million.safetensors", checkpoint_bytes(
        model, meta(arch={"arch": "simple-cnn", "in_channels": 1, "image_size": 8, "num_classes": 10**6}, classes=["c"] * 10**6)))
    put("std-subnormal.safetensors", checkpoint_bytes(model, meta(std=[1e-320])))
    put("mean-huge.safetensors", checkpoint_bytes(model, meta(mean=[1e308])))
    put("seed-string.safetensors", checkpoint_bytes(model, meta(data={"spec": "digits", "data_dir": None, "val_split": 0.1, "seed": "x"})))
    put("val-split-string.safetensors", checkpoint_bytes(model, meta(data={"spec": "digits", "data_dir": None, "val_split": "a", "seed": 0})))
    put("wrong-classes-count.safetensors", checkpoint_bytes(
        model, meta(arch={"arch": "simple-cnn", "in_channels": 1, "image_size": 8, "num_classes": 7}, classes=list("abcdefg"))))
    # Untrusted headers: sizes that lie.
    put("huge-header.safetensors", struct.pack("<Q", 2**40) + b'{"a": 1}')
    put("beyond-file.safetensors", raw_safetensors({"w": {"dtype": "F32", "shape": [2**30], "data_offsets": [0, 2**32]}}, b"\0" * 16))
    put("overlap.safetensors", raw_safetensors({
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, b"\0" * 24))
    put("unknown-dtype.safetensors", raw_safetensors({"w": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, b"\0" * 16))
    put("shape-vs-bytes.safetensors", raw_safetensors({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, b"\0" * 16))
    # Pickles: never unpickled. Evil's __reduce__ would create the marker file.
    Evil.marker = root / "PICKLE-WAS-LOADED"
    put("evil.pth", pickle.dumps(Evil(), protocol=4))
    put("evil-legacy.pt", pickle.dumps(Evil(), protocol=0))
    buffer = io.BytesIO()
    torch.save({"evil": Evil()}, buffer)
    put("evil-zip.pt", buffer.getvalue())
    return root, files


# case → the words its one error line must contain
CHECKPOINT_CASES = {
    "missing.safetensors": "no such file",
    "empty.safetensors": "only 0 bytes",
    "folder.safetensors": "is a directory",
    "notes.safetensors": "not a safetensors checkpoint",
    "truncated.safetensors": "truncated",
    "cut-header.safetensors": "truncated",
    "foreign.safetensors": "not a cnntools checkpoint",
    "unknown-arch.safetensors": "unknown architecture 'transformer-xxl'",
    "arch-not-object.safetensors": "malformed cnntools metadata: 'arch'",
    "classes-wrong.safetensors": "2 class names for 10 classes",
    "std-zero.safetensors": "'std' must be a list of numbers in [1e-07, 1000] (not 0)",
    "metadata-not-json.safetensors": "corrupt cnntools metadata entry 'classes'",
    "mismatch.safetensors": "do not match architecture lenet",
    "size-disagrees.safetensors": "'image_size' is 16 but the architecture simple-cnn is built for 8",
    "channels-disagree.safetensors": "'in_channels' is 3 but the architecture simple-cnn is built for 1",
    "size-65536.safetensors": "'arch.image_size' must be a whole number in [1, 16384] (not 65536)",
    "classes-million.safetensors": "'arch.num_classes' must be a whole number in [1, 100000] (not 1000000)",
    "std-subnormal.safetensors": "'std' must be a list of numbers in [1e-07, 1000] (not 9.99989e-321)",
    "mean-huge.safetensors": "'mean' must be a list of numbers in [-1000, 1000] (not 1e+308)",
    "seed-string.safetensors": "'data.seed' must be a whole number",
    "val-split-string.safetensors": "'data.val_split' must be a number in [0, 1) (not \"a\")",
    "wrong-classes-count.safetensors": "do not fit architecture simple-cnn",
    "huge-header.safetensors": "more than the 100 MB limit",
    "beyond-file.safetensors": "truncated",
    "overlap.safetensors": "overlaps",
    "unknown-dtype.safetensors": "unknown dtype 'F128'",
    "shape-vs-bytes.safetensors": "needs 12 bytes but its data offsets span 16",
    "evil.pth": "never unpickles",
    "evil-legacy.pt": "never unpickles",
    "evil-zip.pt": "never unpickles",
}

# command → its arguments around the checkpoint (OUT: a fresh folder that must stay empty)
CHECKPOINT_COMMANDS = {
    "eval": lambda ck, out: ["eval", ck, "-o", out / "p.csv", "--logits-hist", out / "h.png"],
    "confusion": lambda ck, out: ["confusion", ck, "-o", out / "c.png"],
    "saliency": lambda ck, out: ["saliency", ck, "-i", "0", "-o", out / "s.png", "--save", out / "m.safetensors"],
    "featmaps": lambda ck, out: ["featmaps", ck, "-o", out / "f.png", "--save", out / "a.safetensors"],
    "filters": lambda ck, out: ["filters", ck, "-o", out / "k.png", "--top-k", "2", "--top-output", out / "t.png"],
    "tsne": lambda ck, out: ["tsne", "-c", ck, "-n", "20", "-o", out / "t.png", "--embedding", out / "e.csv"],
    "train": lambda ck, out: ["train", "--resume", ck, "--epochs", "2", "--history", out / "h.csv", "--plot", out / "c.png"],
}


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error(result, expected: str, code: int = 1) -> str:
    """Exactly one stderr line, `Error: ...` with the expected words; the status; no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == code, (result.exit_code, result.stderr, result.stdout[:300])
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr and not lines[0].startswith("Error: unexpected "), lines[0]
    assert expected in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("command", sorted(CHECKPOINT_COMMANDS))
def test_bad_checkpoints_in_every_command(cli, work, tmp_path, command):
    root, _ = work
    before = listing(root)
    for case, expected in CHECKPOINT_CASES.items():
        out = tmp_path / case
        out.mkdir()
        one_error(cli(*CHECKPOINT_COMMANDS[command](root / case, out), "-q"), expected)
        assert listing(out) == {}, f"{command} {case} left {list(listing(out))}"
    assert listing(root) == before  # nothing written next to the inputs, no pickle ran
    assert not Evil.marker.exists()


def test_pickle_from_stdin_is_refused_too(cli, work):
    root, files = work
    for name in ("evil.pth", "evil-zip.pt"):
        one_error(cli("eval", "-", "-q", input=files[name].read_bytes()), "never unpickles")
    assert not Evil.marker.exists()


def test_huge_header_claim_is_refused_without_reading_the_file(work, monkeypatch):
    """The header length is checked against the limit before anything else is read."""
    from cnntools import checkpoint
    from cnntools.core.errors import CnnError

    root, files = work
    reads = []
    real_open = open

    class Counting(io.RawIOBase):
        def __init__(self, path):
            self.handle = real_open(path, "rb")

        def read(self, n=-1):
            reads.append(n)
            return self.handle.read(n)

        def fileno(self):
            return self.handle.fileno()

        def close(self):
            self.handle.close()

    monkeypatch.setattr("cnntools.output.files.open_binary", Counting)
    with pytest.raises(CnnError, match="100 MB limit"):
        checkpoint.read_checkpoint(str(files["huge-header.safetensors"]))
    assert reads == [9]
    reads.clear()
    with pytest.raises(CnnError, match="truncated"):  # claims 4 GiB of tensor data: refused before reading it
        checkpoint.read_checkpoint(str(files["beyond-file.safetensors"]))
    assert all(n is not None and 0 <= n < 1000 for n in reads), reads


# ---------------------------------------------------------------------------- data


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    rng = np.random.default_rng(0)

    def rgb():
        return rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)

    made = {}
    made["empty"] = root / "empty"
    made["empty"].mkdir()
    for i in range(3):
        _png(root / "one-class" / "cat" / f"{i}.png", rgb())
    made["one-class"] = root / "one-class"
    for cls in ("cat", "dog"):
        (root / "all-corrupt" / cls).mkdir(parents=True)
        (root / "all-corrupt" / cls / "zero.png").write_bytes(b"")
        buffer = io.BytesIO()
        Image.fromarray(rgb()).save(buffer, "PNG")
        (root / "all-corrupt" / cls / "cut.png").write_bytes(buffer.getvalue()[:50])
        (root / "all-corrupt" / cls / "bomb.png").write_bytes(png_header(20000, 20000))
        (root / "only-text" / cls).mkdir(parents=True)
        (root / "only-text" / cls / "readme.txt").write_text("no images here")
    made["all-corrupt"] = root / "all-corrupt"
    made["only-text"] = root / "only-text"
    (root / "a-file.txt").write_text("not a folder")
    made["a-file"] = root / "a-file.txt"
    made["missing"] = root / "no-such-folder"
    # CIFAR python layout with data_batch_3 missing.
    cifar = root / "cifar-missing-batch"
    cifar.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_4", "data_batch_5", "test_batch"):
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 0, 1]}
        (cifar / name).write_bytes(pickle.dumps(batch, protocol=2))
    (cifar / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a", b"b"]}, protocol=2))
    made["cifar-missing-batch"] = cifar
    return made


FOLDER_CASES = {
    "empty": "no images found",
    "one-class": "only one class (cat)",
    "all-corrupt": "no readable images",
    "only-text": "no images found",
    "a-file": "a-file.txt",
    "missing": "no-such-folder",
    "cifar-missing-batch": "data_batch_3",
}

DATA_COMMANDS = {
    "dataset-stats": lambda data, out: ["dataset-stats", "--data", data, "--grid", out / "g.png"],
    "train": lambda data, out: ["train", "--data", data, "--epochs", "1", "--image-size", "8", "-o", out / "m.safetensors",
                                "--history", out / "h.csv"],
    "tsne": lambda data, out: ["tsne", "--data", data, "--split", "train", "-o", out / "t.png", "--embedding", out / "e.csv"],
    "eval": lambda data, out: ["eval", "GOOD", "--data", data, "--split", "train", "-o", out / "p.csv"],
}


@pytest.mark.parametrize("command", sorted(DATA_COMMANDS))
def test_bad_image_folders_in_every_data_command(cli, work, folders, tmp_path, monkeypatch, command):
    monkeypatch.setenv("CNNTOOLS_CACHE", "off")
    _, files = work
    for case, expected in FOLDER_CASES.items():
        out = tmp_path / case
        out.mkdir()
        args = [files["good"] if a == "GOOD" else a for a in DATA_COMMANDS[command](folders[case], out)]
        one_error(cli(*args, "-q"), expected)
        assert listing(out) == {}, f"{command} {case} left {list(listing(out))}"


def test_damaged_files_in_a_good_folder_are_skipped_and_named(tmp_path, monkeypatch):
    """Zero-byte, truncated, bomb and non-image files beside good images: loaded without them, each named."""
    from cnntools.data import load_split

    monkeypatch.setenv("CNNTOOLS_CACHE", "off")
    rng = np.random.default_rng(1)
    for cls in ("cat", "dog"):
        for i in range(2):
            _png(tmp_path / cls / f"{i}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    (tmp_path / "cat" / "zero.png").write_bytes(b"")
    (tmp_path / "dog" / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 no more")
    (tmp_path / "dog" / "bomb.png").write_bytes(png_header(20000, 20000))
    (tmp_path / "dog" / "notes.txt").write_text("ignored: not an image extension")
    train = load_split(str(tmp_path), "train")
    assert len(train) == 4 and train.class_counts() == [2, 2]
    reasons = {Path(p).name: reason for p, reason, _ in train.meta["unreadable"]}
    assert set(reasons) == {"zero.png", "cut.jpg", "bomb.png"}
    assert "decompression-bomb limit" in reasons["bomb.png"]


def test_16_bit_and_cmyk_images_are_converted(tmp_path, monkeypatch):
    """16-bit PNGs keep their top 8 bits; CMYK JPEGs come out as PIL's RGB conversion."""
    from cnntools.data import load_split

    monkeypatch.setenv("CNNTOOLS_CACHE", "off")
    rng = np.random.default_rng(2)
    deep = {}
    for cls in ("a", "b"):
        for i in range(2):
            values = rng.integers(0, 65536, (6, 6), dtype=np.uint16)
            deep[f"{cls}/{i}.png"] = values
            _png(tmp_path / "deep" / cls / f"{i}.png", values)
            (tmp_path / "cmyk" / cls).mkdir(parents=True, exist_ok=True)
            cmyk = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).convert("CMYK")
            cmyk.save(tmp_path / "cmyk" / cls / f"{i}.jpg")
    assert Image.open(tmp_path / "deep" / "a" / "0.png").mode.startswith("I")
    grey = load_split(str(tmp_path / "deep"), "train")
    assert grey.channels == 1
    for image, path in zip(grey.images, grey.paths):
        rel = os.path.relpath(path, tmp_path / "deep")
        assert np.array_equal(image[0].numpy(), (deep[rel] >> 8).astype(np.uint8))
    colour = load_split(str(tmp_path / "cmyk"), "train")
    assert colour.channels == 3 and Image.open(colour.paths[0]).mode == "CMYK"
    for image, path in zip(colour.images, colour.paths):
        assert np.array_equal(image.permute(1, 2, 0).numpy(), np.asarray(Image.open(path).convert("RGB")))


def test_image_files_bad_and_odd(cli, work, tmp_path):
    """--image: missing, empty, not an image, a bomb → one line; 16-bit and CMYK → a result."""
    _, files = work
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "bomb.png").write_bytes(png_header(10000, 10000))  # between 1x and 2x Pillow's limit: only a warning there
    _png(tmp_path / "deep.png", np.full((8, 8), 40000, dtype=np.uint16))
    Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    cases = {"missing.png": "no such image file", "zero.png": "empty file", "text.png": "not a readable image",
             "bomb.png": "decompression-bomb limit"}
    for name, expected in cases.items():
        for command in (["eval", files["good"]], ["saliency", files["good"], "-o", tmp_path / "s.png"], ["featmaps", files["good"]]):
            one_error(cli(*command, "--image", tmp_path / name, "-q"), expected)
    assert not (tmp_path / "s.png").exists()
    for name in ("deep.png", "cmyk.jpg"):
        result = cli("eval", files["good"], "--image", tmp_path / name, "--format", "json", "-q")
        assert result.exit_code == 0, result.stderr
        assert len(result.json()["predictions"]) == 5


# ---------------------------------------------------------------------------- calculators, indices, layers


CALCULATOR_CASES = [
    (["conv-calc", "--in", "32", "-k", "0"], "kernel size must be at least 1"),
    (["conv-calc", "--in", "32", "-k", "-3"], "kernel size must be at least 1"),
    (["conv-calc", "--in", "32", "-k", "3", "-s", "0"], "stride must be at least 1"),
    (["conv-calc", "--in", "32", "-k", "3", "-s", "-2"], "stride must be at least 1"),
    (["conv-calc", "--in", "32", "-k", "3", "-p", "-1"], "padding cannot be negative"),
    (["conv-calc", "--in", "0", "-k", "3"], "input size must be positive"),
    (["conv-calc", "--in", "-5", "-k", "3"], "input size must be positive"),
    (["conv-calc", "--in", "2", "-k", "5"], "non-positive size"),
    (["conv-calc", "--in", "4", "--layers", "conv3,conv3,conv3"], "layer 2"),
    (["conv-calc", "--in", "8", "--layers", "conv0"], "kernel size must be at least 1"),
    (["conv-calc", "--input", "1 2; 3 4", "-k", "1 0 0; 0 1 0; 0 0 1"], "does not fit"),
    (["conv-calc", "--input", "1", "-k", "1", "-p", "100000"], "multiply-adds"),
    (["rf-calc", "-k", "0"], "impossible layer"),
    (["rf-calc", "-k", "-3"], "impossible layer"),
    (["rf-calc", "-k", "3", "-s", "0"], "impossible layer"),
    (["rf-calc", "-k", "3", "-d", "0"], "impossible layer"),
    (["rf-calc", "-k", "3", "-n", "0"], "-n must be at least 1"),
    (["rf-calc", "-k", "3", "-n", "1000000000"], "at most 100,000 layers"),
    (["rf-calc", "--layers", "conv3,maxpool0"], "kernel size must be at least 1"),
    (["rf-calc", "-k", ""], "give the kernel size"),
    (["rf-calc", "--layers", "conv3,0\r0"], "cannot read layer '0\\r0'"),  # a quoted \r stays escaped: one line
]


@pytest.mark.parametrize("args,expected", CALCULATOR_CASES, ids=[" ".join(a) for a, _ in CALCULATOR_CASES])
def test_impossible_layer_parameters(cli, args, expected):
    one_error(cli(*args), expected, code=2)  # the calculators' input is options: bad values are bad usage


def test_classes_layers_and_indices_that_do_not_exist(cli, work, tmp_path):
    _, files = work
    good = files["good"]
    out = tmp_path / "out"
    out.mkdir()
    cases = [
        (["saliency", good, "-i", "359", "-o", out / "s.png"], "index 359 is out of range: digits test has 359 images"),
        (["saliency", good, "-i", "0,5,100000", "-o", out / "s.png"], "index 100000 is out of range"),
        (["saliency", good, "-i", "0-x", "-o", out / "s.png"], "expected integers"),
        (["saliency", good, "-i", "0", "--target", "10", "-o", out / "s.png"], "--target 10: the model has classes 0..9", 2),
        (["saliency", good, "-i", "0", "--target", "zebra", "-o", out / "s.png"], "--target 'zebra'", 2),
        (["saliency", good, "-i", "0", "--layer", "features.99", "-o", out / "s.png"], "no layer named 'features.99'"),
        (["featmaps", good, "-i", "5000", "-o", out / "f.png"], "index 5000 is out of range"),
        (["featmaps", good, "-l", "head.fc", "-o", out / "f.png"], "no layer named 'head.fc'"),
        (["filters", good, "-l", "conv9", "-o", out / "k.png"], "no layer named 'conv9'"),
        (["filters", good, "-f", "999", "--top-k", "2", "-o", out / "k.png"], "index 999 is out of range: layer 'features.0' has 32 filters (0..31)"),
        (["tsne", "-c", good, "--layer", "nope", "-n", "20", "-o", out / "t.png"], "no layer named 'nope'"),
    ]
    for args, expected, *code in cases:  # a bad option value: 2
        one_error(cli(*args, "-q"), expected, *code)
    assert listing(out) == {}
    one_error(cli("featmaps", good, "-i", "-1"), "index -1 is out of range")  # -i is a LIST, as in saliency


# ---------------------------------------------------------------------------- output paths

OUTPUTS = {
    "eval --predictions": lambda good, path: ["eval", good, "-o", path],
    "eval --logits-hist": lambda good, path: ["eval", good, "--logits-hist", path.with_suffix(".png")],
    "confusion --plot": lambda good, path: ["confusion", good, "-o", path.with_suffix(".png")],
    "saliency -o": lambda good, path: ["saliency", good, "-i", "0", "-o", path.with_suffix(".png")],
    "saliency --save-maps": lambda good, path: ["saliency", good, "-i", "0", "--save", path],
    "featmaps -o": lambda good, path: ["featmaps", good, "-o", path.with_suffix(".png")],
    "featmaps --save": lambda good, path: ["featmaps", good, "--save", path],
    "filters -o": lambda good, path: ["filters", good, "-o", path.with_suffix(".png")],
    "filters --top-output": lambda good, path: ["filters", good, "--top-k", "2", "--top-output", path.with_suffix(".png")],
    "tsne -o": lambda good, path: ["tsne", "-n", "20", "-o", path.with_suffix(".png")],
    "tsne --embedding": lambda good, path: ["tsne", "-n", "20", "--embedding", path],
    "dataset-stats --grid": lambda good, path: ["dataset-stats", "--grid", path.with_suffix(".png")],
    "dataset-stats --augment-preview": lambda good, path: ["dataset-stats", "--augment-preview", path.with_suffix(".png")],
    "train -o": lambda good, path: ["train", "--epochs", "1", "-o", path.with_suffix(".safetensors")],
    "train --history": lambda good, path: ["train", "--epochs", "1", "-o", path.parent.parent / "ok.safetensors", "--history", path.with_suffix(".csv")],
    "train --plot": lambda good, path: ["train", "--epochs", "1", "-o", path.parent.parent / "ok.safetensors", "--plot", path.with_suffix(".png")],
}


@pytest.mark.parametrize("option", sorted(OUTPUTS))
def test_unwritable_and_missing_output_folders(cli, work, tmp_path, option):
    """Refused before any work is done (train: before the first epoch, so nothing is on stdout)."""
    _, files = work
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where a folder is expected")
    (tmp_path / "a-folder.csv").mkdir()
    (tmp_path / "a-folder.png").mkdir()
    (tmp_path / "a-folder.safetensors").mkdir()
    cases = {
        tmp_path / "missing" / "out.csv": "does not exist",
        blocker / "out.csv": "does not exist",
        tmp_path / "a-folder.csv": "is a folder",
    }
    if Path("/proc/self").is_dir():  # a folder nobody may create files in, not even root
        cases[Path("/proc/out.csv")] = "cannot write in folder /proc"
    before = listing(tmp_path)
    for path, expected in cases.items():
        result = cli(*OUTPUTS[option](files["good"], path), "-q")
        one_error(result, expected)
        assert result.stdout == ""
    assert listing(tmp_path) == before
    assert not (tmp_path / "ok.safetensors").exists()
