"""Property-based fuzzing of everything that reads user input: the calculators' arguments,
mutated checkpoint files and mutated images.

The property is the same everywhere: a command ends with a result (exit 0) or with one clean
`Error:` line (exit 1, or 2 for bad usage) — never a traceback, an "unexpected" error, a hang
or a crash. Shared by the quick in-suite tests (tests/test_fuzz.py, a few dozen examples each)
and the long run (tests/benchmarks/fuzz.py --examples N).
"""

from __future__ import annotations

import contextlib
import io
import signal
import tempfile
import warnings
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SECONDS_PER_CASE = 30  # a case that runs longer counts as a hang


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

    from cnntools.cli import app

    runner = CliRunner(env={"NO_COLOR": "1", "CNNTOOLS_DEBUG": "", **(env or {})})
    with time_limit(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = runner.invoke(app, [str(a) for a in args], input=input, prog_name="cnntools")
    # A warning from an image decoder would reach the user's stderr as two extra lines.
    noisy = [f"{w.category.__name__}: {w.message}" for w in caught if "PIL" in w.filename]
    assert not noisy, (args, noisy)
    return result


def assert_clean(result, args) -> None:
    """A result, or exactly one `Error:` line that is not an unexpected exception."""
    where = " ".join(map(str, args))[:300]
    assert result.exit_code in (0, 1, 2), (where, result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr, (where, result.stderr)
    if result.exit_code == 0:
        return
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], (where, result.stderr)
    assert not errors[0].startswith("Error: unexpected "), (where, errors[0])
    if result.exit_code == 1:  # known problems are one line; usage errors may print Usage: first
        assert len(lines) == 1, (where, result.stderr)


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
    assert_clean(run_cli(args), args)


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
    assert_clean(run_cli(args), [name, *args])


def check_image(fmt: str, mutation) -> None:
    name, apply = mutation
    base = base_files()
    mutated = apply(base["images"][fmt])
    path = base["folder"] / f"mutated-{fmt}"
    path.write_bytes(mutated)
    args = ["eval", base["checkpoint"], "--image", path, "-q", "--format", "json"]
    assert_clean(run_cli(args), [fmt, name, *args])
    # In a folder of good images a damaged file is skipped and named; the folder still loads.
    target = base["image_folder"] / "a" / "mutated.png"
    target.write_bytes(mutated)
    try:
        folder_args = ["dataset-stats", "--data", base["image_folder"], "-q", "--format", "json"]
        result = run_cli(folder_args, env={"CNNTOOLS_CACHE": "off"})
        assert result.exit_code == 0, ([fmt, name], result.stderr)
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
    }
