"""Property-based fuzzing of everything that reads user input: the calculators' arguments,
mutated checkpoint files and images, generated safetensors headers and checkpoint metadata,
predictions CSVs, matrix files, CIFAR batches and meta files, MNIST idx files and folders
holding links, FIFOs and odd names.

The property is the same everywhere: a command ends with a result (exit 0) or with one clean
`Error:` line (exit 1, or 2 for bad usage) — never a traceback, an "unexpected" error, a hang
or a crash. Shared by the quick in-suite tests (tests/test_fuzz.py, a few dozen examples each)
and the long run (tests/benchmarks/fuzz.py --examples N).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import resource
import shutil
import signal
import struct
import tempfile
import warnings
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SECONDS_PER_CASE = 30  # a case that runs longer counts as a hang
MAX_RSS_BYTES = 6 * 2**30  # the whole fuzzing process: a case that allocates past this is a failure

# What the properties saw, per reader: inputs tried, results (exit 0), clean errors (one line, exit 1 or 2).
COUNTS: dict = {}


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int = SECONDS_PER_CASE):
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum, frame):
        raise Hang(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_cli(args: list, input: bytes | None = None, env: dict | None = None):
    from typer.testing import CliRunner

    from cnntools.cli.app import app

    runner = CliRunner(env={"NO_COLOR": "1", "CNNTOOLS_DEBUG": "", **(env or {})})
    with time_limit(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = runner.invoke(app, [str(a) for a in args], input=input, prog_name="cnntools")
    # A warning from an image decoder would reach the user's stderr as two extra lines.
    noisy = [f"{w.category.__name__}: {w.message}" for w in caught if "PIL" in w.filename]
    assert not noisy, (args, noisy)
    return result


def assert_clean(result, args, reader: str = "other") -> None:
    """A result, or exactly one `Error:` line that is not an unexpected exception; memory bounded."""
    where = " ".join(map(str, args))[:300]
    counts = COUNTS.setdefault(reader, {"tried": 0, "results": 0, "clean_errors": 0})
    counts["tried"] += 1
    assert result.exit_code in (0, 1, 2), (where, result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr, (where, result.stderr)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 < MAX_RSS_BYTES, (where, "memory")
    if result.exit_code == 0:
        counts["results"] += 1
        return
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], (where, result.stderr)
    assert not errors[0].startswith("Error: unexpected "), (where, errors[0])
    if result.exit_code == 1:  # known problems are one line; usage errors may print Usage: first
        assert len(lines) == 1, (where, result.stderr)
    counts["clean_errors"] += 1


# ---------------------------------------------------------------------------- calculators

NUMBER = st.one_of(
    st.integers(-3, 12),
    st.integers(-(10**7), 10**7),
    st.sampled_from(["", "x", "3x", "1e3", "nan", "inf", "2x3", "0x0", "1.5", "99999999999999999999", "-0", " 4 "]),
)
NUMBER_LIST = st.one_of(NUMBER.map(str), st.lists(st.integers(-2, 9), min_size=1, max_size=5).map(lambda v: ",".join(map(str, v))))
LAYER = st.builds(
    lambda kind, k, options: kind + k + "".join("-" + o for o in options),
    st.sampled_from(["conv", "maxpool", "pool", "avgpool", "convT", "conv", "dense", ""]),
    st.sampled_from(["", "0", "1", "2", "3", "5", "7", "100", "-1"]),
    st.lists(st.sampled_from(["s2", "s1", "p1", "p0", "d2", "c16", "op1", "ceil", "s0", "p-1", "zz", "", "c0", "d0"]), max_size=4),
)
LAYERS = st.one_of(st.lists(LAYER, min_size=0, max_size=6).map(",".join), st.text(max_size=30))


def _options(**strategies):
    """A list of CLI arguments: each option present or not."""
    return st.fixed_dictionaries({}, optional=strategies).map(
        lambda chosen: [x for flag, value in chosen.items() for x in ([flag] if value is True else [flag, value])]
    )


MATRIX = st.one_of(
    st.lists(st.lists(st.integers(-3, 3), min_size=1, max_size=5), min_size=1, max_size=5).map(
        lambda rows: "; ".join(" ".join(map(str, r)) for r in rows)
    ),
    st.text(alphabet="0123456789 ;,.-[]e", max_size=25),
)

CONV_CALC_ARGS = st.one_of(
    _options(**{"--in": NUMBER.map(str), "-k": NUMBER.map(str), "-s": NUMBER.map(str), "-p": NUMBER.map(str),
                "-d": NUMBER.map(str), "--type": st.sampled_from(["conv", "maxpool", "avgpool", "convtranspose", "bogus"]),
                "--ceil-mode": st.just(True), "--output-padding": NUMBER.map(str), "--in-channels": NUMBER.map(str),
                "--out-channels": NUMBER.map(str), "--layers": LAYERS, "-q": st.just(True),
                "--format": st.sampled_from(["table", "json", "csv", "xml"])}),
    _options(**{"--input": MATRIX, "-k": MATRIX, "-s": NUMBER.map(str), "-p": st.integers(-2, 60).map(str),
                "-d": NUMBER.map(str), "-b": NUMBER.map(str), "-a": st.sampled_from(["none", "relu", "tanh"]),
                "--explain": st.just(True), "--format": st.sampled_from(["table", "json", "csv"])}),
).map(lambda args: ["conv-calc", *args])

RF_CALC_ARGS = _options(
    **{"-k": NUMBER_LIST, "-s": NUMBER_LIST, "-p": NUMBER_LIST, "-d": NUMBER_LIST, "-n": NUMBER.map(str),
       "--type": st.sampled_from(["conv", "pool", "maxpool", "conv,pool", "bogus"]), "--layers": LAYERS,
       "--arch": st.sampled_from(["lenet", "mlp", "bogus"]), "--input-size": NUMBER.map(str),
       "-q": st.just(True), "--format": st.sampled_from(["table", "json", "csv"])}
).map(lambda args: ["rf-calc", *args])


def check_calculator(args: list) -> None:
    assert_clean(run_cli(args), args, args[0])


# ---------------------------------------------------------------------------- file mutations


@st.composite
def mutations(draw, size: int, hot: int):
    """(name, function bytes → bytes): bit flips (mostly in the first `hot` bytes), truncation,
    or header edits (bytes replaced, deleted or inserted where the parser looks)."""
    kind = draw(st.sampled_from(["flip", "flip", "truncate", "replace", "delete", "insert", "length"]))
    anywhere = st.integers(0, size - 1)
    in_header = st.integers(0, max(0, min(hot, size) - 1))
    where = st.one_of(in_header, in_header, in_header, anywhere)
    if kind == "flip":
        flips = draw(st.lists(st.tuples(where, st.integers(0, 7)), min_size=1, max_size=8))

        def apply(data: bytes) -> bytes:
            out = bytearray(data)
            for position, bit in flips:
                out[position] ^= 1 << bit
            return bytes(out)

        return f"flip {flips}", apply
    if kind == "truncate":
        length = draw(st.one_of(st.integers(0, size - 1), st.integers(0, min(size, hot + 16))))
        return f"truncate to {length}", lambda data: data[:length]
    if kind == "length":  # the 8-byte safetensors header length (or a format's magic number)
        value = draw(st.binary(min_size=8, max_size=8))
        return f"first 8 bytes {value!r}", lambda data: value + data[8:]
    position = draw(where)
    if kind == "delete":
        count = draw(st.integers(1, 16))
        return f"delete {count} at {position}", lambda data: data[:position] + data[position + count :]
    chunk = draw(st.one_of(st.binary(min_size=1, max_size=8), st.sampled_from([b"{", b"}", b"[", b"]", b'"', b":", b",", b"9", b"-1", b"1e308", b"null", b"\x00", b"\xff"])))
    if kind == "replace":
        return f"replace at {position} with {chunk!r}", lambda data: data[:position] + chunk + data[position + len(chunk) :]
    return f"insert {chunk!r} at {position}", lambda data: data[:position] + chunk + data[position:]


_BASE: dict = {}


def base_files() -> dict:
    """Small files made once per process: a checkpoint, an image of each common format, a folder."""
    if _BASE:
        return _BASE
    import numpy as np
    import torch
    from PIL import Image

    from cnntools.checkpoint import CheckpointMeta, DataRecipe, save_checkpoint
    from cnntools.models import create_model

    folder = Path(tempfile.mkdtemp(prefix="cnntools-fuzz-"))
    torch.manual_seed(0)
    model = create_model("simple-cnn", 1, 8, 10)
    meta = CheckpointMeta(
        arch={"arch": "simple-cnn", "in_channels": 1, "image_size": 8, "num_classes": 10},
        classes=[str(i) for i in range(10)], mean=[0.3], std=[0.2], data=DataRecipe("digits", None, 0.1, 0),
        train_config={"seed": 0, "lr": 0.001}, metrics={"val_acc": 0.5},
        history=[{"epoch": 1, "train_loss": 1.5, "val_acc": 0.5}],
    )
    checkpoint = folder / "model.safetensors"
    save_checkpoint(str(checkpoint), model, meta)
    data = checkpoint.read_bytes()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    images = {}
    for fmt, mode in (("PNG", "RGB"), ("JPEG", "RGB"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "RGB"), ("PNG", "I;16"), ("JPEG", "CMYK")):
        buffer = io.BytesIO()
        image = Image.fromarray(pixels) if mode != "I;16" else Image.fromarray(rng.integers(0, 65536, (8, 8), dtype=np.uint16))
        (image.convert(mode) if mode not in ("RGB", "I;16") else image).save(buffer, fmt)
        images[f"{fmt.lower()}-{mode.replace(';', '')}"] = buffer.getvalue()
    image_folder = folder / "images"
    for cls in ("a", "b"):
        for i in range(2):
            (image_folder / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(image_folder / cls / f"{i}.png")
    picture = folder / "picture.png"
    picture.write_bytes(images["png-RGB"])
    _BASE.update(folder=folder, checkpoint=checkpoint, checkpoint_bytes=data, header_end=8 + int.from_bytes(data[:8], "little"),
                 images=images, image_folder=image_folder, picture=picture)
    return _BASE


def check_checkpoint(mutation) -> None:
    name, apply = mutation
    base = base_files()
    path = base["folder"] / "mutated.safetensors"
    path.write_bytes(apply(base["checkpoint_bytes"]))
    args = ["eval", path, "--image", base["picture"], "-q", "--format", "json"]
    assert_clean(run_cli(args), [name, *args], "checkpoint bytes")


def check_image(fmt: str, mutation) -> None:
    name, apply = mutation
    base = base_files()
    mutated = apply(base["images"][fmt])
    path = base["folder"] / f"mutated-{fmt}"
    path.write_bytes(mutated)
    args = ["eval", base["checkpoint"], "--image", path, "-q", "--format", "json"]
    assert_clean(run_cli(args), [fmt, name, *args], "image files")
    # In a folder of good images a damaged file is skipped and named; the folder still loads.
    target = base["image_folder"] / "a" / "mutated.png"
    target.write_bytes(mutated)
    try:
        folder_args = ["dataset-stats", "--data", base["image_folder"], "-q", "--format", "json"]
        result = run_cli(folder_args, env={"CNNTOOLS_CACHE": "off"})
        assert result.exit_code == 0, ([fmt, name], result.stderr)
        assert_clean(result, folder_args, "image folders")
    finally:
        target.unlink()


# ---------------------------------------------------------------------------- properties


def _checkpoint_mutations():
    base = base_files()
    return mutations(len(base["checkpoint_bytes"]), base["header_end"])


@st.composite
def _image_cases(draw):
    base = base_files()
    fmt = draw(st.sampled_from(sorted(base["images"])))
    data = base["images"][fmt]
    return fmt, draw(mutations(len(data), 64))


def properties(examples: int, derandomize: bool = True) -> dict:
    """name → a hypothesis test running `examples` cases (call it with no arguments).

    `derandomize`: the same cases every run (the test suite); False draws new ones (long runs).
    """
    config = settings(max_examples=examples, deadline=None, derandomize=derandomize,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
                      database=None)
    return {
        "conv-calc arguments": config(given(CONV_CALC_ARGS)(check_calculator)),
        "rf-calc arguments": config(given(RF_CALC_ARGS)(check_calculator)),
        "mutated checkpoints": config(given(st.deferred(_checkpoint_mutations))(check_checkpoint)),
        "mutated images": config(given(_image_cases())(lambda case: check_image(*case))),
        "safetensors headers": config(given(SAFETENSORS_HEADERS)(check_safetensors_header)),
        "checkpoint metadata": config(given(METADATA_EDITS)(check_metadata)),
        "predictions CSV": config(given(PREDICTIONS_CSV)(check_predictions)),
        "matrix files": config(given(MATRIX_FILES)(check_matrix_file)),
        "history files": config(given(HISTORY_FILES)(check_history)),
        "CIFAR batches": config(given(CIFAR_CASES)(check_cifar)),
        "MNIST idx": config(given(IDX_CASES)(check_idx)),
        "folders": config(given(FOLDER_CASES)(check_folder)),
    }


def _scratch(name: str) -> Path:
    """A fresh, empty folder for one case."""
    path = base_files()["folder"] / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# ---------------------------------------------------------------------------- safetensors header and metadata

JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
                      st.text(max_size=12), st.sampled_from([1e308, -1e308, 1e-320, 0, -1, 2**31, 2**63, "nan", "x", "", "\x1b[31m"]))
JSON_VALUE = st.recursive(JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                          max_leaves=12)
DTYPE = st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "C64", "X", "", "f32"])
TENSOR_ENTRY = st.one_of(
    st.fixed_dictionaries({"dtype": DTYPE, "shape": st.lists(st.integers(-2, 2**40), max_size=4),
                           "data_offsets": st.lists(st.integers(-5, 2**40), min_size=0, max_size=3)}),
    JSON_VALUE,
)
SAFETENSORS_HEADERS = st.tuples(
    st.dictionaries(st.sampled_from(["features.0.weight", "features.0.bias", "classifier.weight", "x", "__metadata__"]),
                    TENSOR_ENTRY, max_size=4),
    st.one_of(st.none(), st.dictionaries(st.sampled_from(["format", "arch", "classes", "mean", "std", "image_size", "x"]),
                                         st.one_of(st.text(max_size=20), JSON_VALUE), max_size=4)),
    st.integers(0, 256),  # bytes of tensor data after the header
    st.sampled_from(["exact", "longer", "shorter", "huge"]),  # the 8-byte length against the header
)


def check_safetensors_header(case) -> None:
    tensors, metadata, body, length = case
    header = dict(tensors)
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    claimed = {"exact": len(raw), "longer": len(raw) + 7, "shorter": max(0, len(raw) - 3), "huge": 2**62}[length]
    path = base_files()["folder"] / "header.safetensors"
    path.write_bytes(struct.pack("<Q", claimed) + raw + b"\0" * body)
    args = ["eval", path, "--image", base_files()["picture"], "-q", "--format", "json"]
    assert_clean(run_cli(args), [repr(case)[:200], *args], "safetensors header")


METADATA_KEYS = ["format", "format_version", "arch", "classes", "mean", "std", "image_size", "in_channels", "data",
                 "train_config", "metrics", "history", "normalize", "label"]
METADATA_EDITS = st.dictionaries(st.sampled_from(METADATA_KEYS),
                                 st.one_of(JSON_VALUE.map(json.dumps), st.text(max_size=20)), min_size=1, max_size=3)


def check_metadata(edits: dict) -> None:
    from safetensors import safe_open
    from safetensors.torch import save

    base = base_files()
    with safe_open(str(base["checkpoint"]), framework="pt") as handle:
        meta = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    meta.update(edits)
    path = base["folder"] / "metadata.safetensors"
    path.write_bytes(save(tensors, metadata=meta))
    args = ["eval", path, "--image", base["picture"], "-q", "--format", "json"]
    assert_clean(run_cli(args), [repr(edits)[:300], *args], "checkpoint metadata")


# ---------------------------------------------------------------------------- predictions CSV and matrix files

CELL = st.one_of(st.integers(0, 9).map(str), st.integers(-3, 12).map(str), st.sampled_from(["", "x", "1e9", "nan", "-1", "2.5", "999999999999", '"', "a,b", "\x1b[2J", "\n"]),
                 st.text(max_size=6))
_PREDICTION_COLUMNS = st.lists(st.sampled_from(["index", "path", "label", "label_name", "pred", "pred_name", "prob", "loss", "model", "x"]),
                               min_size=0, max_size=8, unique=True)
PREDICTIONS_CSV = st.tuples(
    st.one_of(_PREDICTION_COLUMNS,  # mostly a real header, so the rows are what gets tested
              _PREDICTION_COLUMNS.map(lambda cols: ["label", "pred"] + [c for c in cols if c not in ("label", "pred")]),
              _PREDICTION_COLUMNS.map(lambda cols: ["label", "pred"] + [c for c in cols if c not in ("label", "pred")])),
    st.lists(st.lists(CELL, min_size=0, max_size=9), max_size=12),
    st.sampled_from(["table", "json", "csv"]),
)


def check_predictions(case) -> None:
    import csv

    columns, rows, fmt = case
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    path = base_files()["folder"] / "predictions.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8", errors="surrogateescape")
    args = ["confusion", path, "--format", fmt, "-q"]
    assert_clean(run_cli(args), [repr(case)[:300], *args], "predictions CSV")


MATRIX_FILES = st.one_of(
    MATRIX,
    JSON_VALUE.map(json.dumps),
    st.lists(st.lists(st.one_of(st.integers(-9, 9), st.floats(), st.text(max_size=3)), max_size=5), max_size=5).map(json.dumps),
    st.binary(max_size=40).map(lambda b: b.decode("latin1")),
)


def check_matrix_file(text: str) -> None:
    path = base_files()["folder"] / "matrix.txt"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    args = ["conv-calc", "--input", path, "-k", "1 0; 0 1", "--format", "json"]
    assert_clean(run_cli(args), [repr(text)[:200], *args], "matrix files")


HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "updates", "kind", "label", "x"]
HISTORY_FILES = st.one_of(
    st.tuples(st.just(".csv"), st.tuples(
        st.lists(st.sampled_from(HISTORY_COLUMNS), max_size=7, unique=True).map(lambda c: ["epoch"] + [x for x in c if x != "epoch"]),
        st.lists(st.lists(st.one_of(st.integers(1, 5).map(str), CELL), max_size=8), max_size=6))),
    st.tuples(st.just(".jsonl"), st.lists(st.one_of(
        st.fixed_dictionaries({"epoch": st.one_of(st.integers(1, 5), JSON_LEAF)},
                              optional={k: st.one_of(st.floats(0, 2), JSON_VALUE) for k in HISTORY_COLUMNS[1:]}), JSON_VALUE), max_size=5)),
    st.tuples(st.sampled_from([".csv", ".jsonl"]), st.just("[" * 100_000)),  # nesting past the recursion limit
)


def check_history(case) -> None:
    import csv

    suffix, content = case
    if isinstance(content, str):
        text = content
    elif suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(content[0])
        writer.writerows(content[1])
        text = buffer.getvalue()
    else:
        text = "".join(json.dumps(record) + "\n" for record in content)
    path = base_files()["folder"] / f"history{suffix}"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    args = ["curves", path, "--format", "json", "-q"]
    assert_clean(run_cli(args), [repr(case)[:300], *args], "history files")


# ---------------------------------------------------------------------------- CIFAR batches and meta, MNIST idx


@st.composite
def _array(draw):
    import numpy as np

    dtype = draw(st.sampled_from(["uint8", "int64", "float64", "float32", "bool", "int8", "uint16", "complex64"]))
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=3))
    if draw(st.booleans()):
        shape = [draw(st.integers(1, 3)), 3 * 4 * 4]
    size = int(np.prod(shape)) if shape else 1
    values = draw(st.lists(st.floats(-1e6, 1e6) if dtype.startswith(("float", "complex")) else st.integers(0, 300),
                           min_size=size, max_size=size))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array(values).astype(dtype).reshape(shape)


CIFAR_VALUE = st.one_of(_array(), st.text(max_size=8), st.integers(-5, 300), st.none(),
                        st.lists(st.one_of(st.integers(-2, 5), st.text(max_size=3), st.floats(-3, 3)), max_size=4),
                        st.binary(max_size=8))
CIFAR_CASES = st.tuples(
    st.dictionaries(st.sampled_from(["data", "labels", "fine_labels", "batch_label", "filenames"]), CIFAR_VALUE, max_size=4),
    st.one_of(st.none(), st.dictionaries(st.sampled_from(["label_names", "fine_label_names", "num_cases_per_batch"]),
                                         CIFAR_VALUE, max_size=3), st.just("not a dict")),
)


def check_cifar(case) -> None:
    batch, meta = case
    folder = _scratch("cifar")
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    if meta is not None:
        (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    args = ["dataset-stats", "--data", folder, "-q", "--format", "json"]
    assert_clean(run_cli(args, env={"CNNTOOLS_CACHE": "off"}), [repr(case)[:300], *args], "CIFAR batches")


IDX_CASES = st.tuples(
    st.sampled_from(["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"]),
    st.binary(min_size=0, max_size=3).map(lambda b: b + b"\0" * 0),
    st.one_of(st.integers(0, 255), st.sampled_from([1, 3])),
    st.lists(st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1)), max_size=5),
    st.integers(0, 200),
    st.booleans(),
)


def _idx_bytes(dims: list, body: bytes, magic: bytes = b"\0\0\x08") -> bytes:
    return magic + bytes([len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims) + body


def check_idx(case) -> None:
    import gzip

    target, magic, ndim, dims, body, gz = case
    raw_dir = _scratch("mnist") / "MNIST" / "raw"
    raw_dir.mkdir(parents=True)
    good = {"train-images-idx3-ubyte": _idx_bytes([2, 4, 4], bytes(32)), "train-labels-idx1-ubyte": _idx_bytes([2], b"\1\2"),
            "t10k-images-idx3-ubyte": _idx_bytes([1, 4, 4], bytes(16)), "t10k-labels-idx1-ubyte": _idx_bytes([1], b"\3")}
    header = (magic + b"\0\0\x08")[:3] + bytes([ndim]) + b"".join(d.to_bytes(4, "big") for d in dims)
    good[target] = header + bytes(range(256)) * (body // 256) + bytes(body % 256)
    for name, data in good.items():
        if gz and name == target:
            (raw_dir / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (raw_dir / name).write_bytes(data)
    args = ["dataset-stats", "--data", "mnist", "--data-dir", raw_dir.parent.parent, "-q", "--format", "json"]
    assert_clean(run_cli(args, env={"CNNTOOLS_CACHE": "off"}), [repr(case)[:300], *args], "MNIST idx")


# ---------------------------------------------------------------------------- folders

ENTRY = st.sampled_from(["png", "png", "junk.png", "empty.png", "fifo.png", "link-dot", "link-up", "dead.png", "subdir",
                         "badname.png", "escape.png", "link-file.png", "txt", "hidden.png"])
FOLDER_CASES = st.lists(st.tuples(st.sampled_from(["a", "b", "c\nd", "\x1b[31mred"]), ENTRY), min_size=0, max_size=10)


def check_folder(entries) -> None:
    root = _scratch("tree")
    picture = base_files()["picture"]
    for i, (cls, kind) in enumerate(entries):
        folder = root / cls
        folder.mkdir(exist_ok=True)
        name = folder / f"{i}-{kind}"
        with contextlib.suppress(FileExistsError):
            if kind in ("png", "subdir"):
                target = folder / f"{i}.png" if kind == "png" else folder / f"sub{i}" / "x.png"
                target.parent.mkdir(exist_ok=True)
                shutil.copy(picture, target)
            elif kind == "junk.png":
                name.write_bytes(os.urandom(64))
            elif kind == "empty.png":
                name.write_bytes(b"")
            elif kind == "fifo.png":
                os.mkfifo(name)
            elif kind == "link-dot":
                name.symlink_to(".")
            elif kind == "link-up":
                name.symlink_to("..")
            elif kind == "dead.png":
                name.symlink_to("nowhere.png")
            elif kind == "badname.png":
                shutil.copy(picture, os.fsencode(folder) + f"/{i}-\xff\xfe".encode("latin1") + b".png")
            elif kind == "escape.png":
                shutil.copy(picture, folder / f"{i}-\x1b[2J\n.png")
            elif kind == "link-file.png":
                shutil.copy(picture, folder / f"{i}.png")
                name.symlink_to(f"{i}.png")
            elif kind == "txt":
                (folder / f"{i}.txt").write_text("not an image")
            elif kind == "hidden.png":
                shutil.copy(picture, folder / f".{i}.png")
    args = ["dataset-stats", "--data", root, "-q", "--format", "json"]
    result = run_cli(args, env={"CNNTOOLS_CACHE": "off"})
    assert_clean(result, [repr(entries)[:300], *args], "folders")
    assert "\x1b" not in result.stderr, result.stderr  # names are escaped in messages
