"""Issue 14: outputs that never clobber what is not a file, inputs that never hang, closed or full
stdout, strings from files escaped for the terminal, any byte in a file name.

Every device node, FIFO, socket and link here is made inside the test's own temporary folder
(the tests run as root: never touch /dev)."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnntools.output import files
from cnntools.output import emitter as output
from cnntools.core.errors import CnnError

NULL, ZERO, FULL = (1, 3), (1, 5), (1, 7)  # the kernel's null, zero and full character devices


def make_char(folder: Path, name: str, numbers: tuple[int, int]) -> Path:
    path = folder / name
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(*numbers))
    return path


def is_char(path: Path) -> bool:
    return stat.S_ISCHR(os.lstat(path).st_mode)


def png(path: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(os.fsencode(path), "PNG")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny simple-cnn checkpoint (1×8×8, 10 classes) whose class names carry escape sequences."""
    import torch

    from cnntools.checkpoint import save_checkpoint
    from cnntools.models import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    classes = ["\x1b[31mred\x1b[0m", "two\nlines", "tab\there"] + [f"c{i}" for i in range(7)]
    meta = {
        "arch": {"arch": "simple-cnn", "in_channels": 1, "image_size": 8, "num_classes": 10},
        "classes": classes, "mean": [0.3], "std": [0.2], "image_size": 8, "in_channels": 1,
        "data": {"spec": "digits", "data_dir": None, "val_split": 0.1, "seed": 0},
        "train_config": {"seed": 0, "lr": 0.001}, "metrics": {"val_acc": 0.5}, "history": [],
    }
    save_checkpoint(str(path), create_model("simple-cnn", 1, 8, 10), meta)
    return path


# ---------------------------------------------------------------------------- 1. writes


def test_regular_file_replaced_atomically_and_a_link_keeps_pointing(tmp_path):
    real = tmp_path / "real.csv"
    real.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    files.write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "real.csv"]


def test_character_device_is_written_through_not_replaced(tmp_path):
    null = make_char(tmp_path, "null", NULL)
    files.write_bytes(null, b"x" * 100_000)
    with files.atomic_path(null) as tmp:  # the figure path (savefig into a temporary file)
        Path(tmp).write_bytes(b"figure")
    files.check_output(null)
    assert is_char(null)


def test_full_device_is_an_error_and_stays_a_device(tmp_path):
    full = make_char(tmp_path, "full", FULL)
    with pytest.raises(CnnError, match=r"full: cannot write \(No space left on device\)"):
        files.write_bytes(full, b"x" * 100_000)
    assert is_char(full)


def test_fifo_is_written_through_to_its_reader(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    files.write_bytes(fifo, b"a,b\n1,2\n")
    reader.join(10)
    assert got == [b"a,b\n1,2\n"] and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_fifo_whose_reader_leaves_is_an_error(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = threading.Thread(target=lambda: open(fifo, "rb").close())
    reader.start()
    with pytest.raises(CnnError, match=r"fifo: cannot write \(Broken pipe\)"):
        files.write_bytes(fifo, b"x" * 4_000_000)
    reader.join(10)


def test_socket_is_written_through(tmp_path):
    import socket

    path = tmp_path / "sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    got = []

    def serve():
        conn, _ = server.accept()
        with conn:
            got.append(b"".join(iter(lambda: conn.recv(65536), b"")))

    thread = threading.Thread(target=serve)
    thread.start()
    files.write_bytes(path, b"payload")
    thread.join(10)
    server.close()
    assert got == [b"payload"] and stat.S_ISSOCK(os.lstat(path).st_mode)


def test_block_device_and_folder_are_refused(tmp_path):
    block = tmp_path / "blk"
    os.mknod(block, stat.S_IFBLK | 0o600, os.makedev(7, 250))
    for call in (lambda: files.write_bytes(block, b"x"), lambda: files.check_output(block)):
        with pytest.raises(CnnError, match="blk: is a block device; cnntools writes regular files"):
            call()
    assert stat.S_ISBLK(os.lstat(block).st_mode)
    with pytest.raises(CnnError, match="is a folder"):
        files.write_bytes(tmp_path, b"x")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EROFS])
@pytest.mark.parametrize("stage", ["write", "rename"])
def test_write_errors_leave_the_previous_file_and_no_temporary(tmp_path, monkeypatch, code, stage):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"previous")
    failure = OSError(code, os.strerror(code))

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(files, "_write_file" if stage == "write" else "_fsync", fail)
    with pytest.raises(CnnError) as caught:
        files.write_bytes(target, b"new content")
    assert str(caught.value) == f"{target}: cannot write ({os.strerror(code)})"
    assert target.read_bytes() == b"previous" and os.listdir(tmp_path) == ["model.safetensors"]


def test_eval_predictions_to_a_device_node_keeps_the_node(cli, checkpoint, tmp_path):
    null = make_char(tmp_path, "dev", NULL)
    result = cli("eval", checkpoint, "-q", "--predictions", null, "--data", "fake", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert is_char(null)
    full = make_char(tmp_path, "full", FULL)
    result = cli("eval", checkpoint, "-q", "--predictions", full, "--data", "fake")
    assert result.exit_code == 1 and result.stderr == f"Error: {full}: cannot write (No space left on device)\n"
    assert is_char(full)


# ---------------------------------------------------------------------------- 5. stdout


def _shell(command: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1", "CNNTOOLS_DEBUG": ""}
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)


def test_closed_and_full_stdout_are_one_error_line(tmp_path):
    make_char(tmp_path, "full", FULL)
    python = shlex.quote(sys.executable)
    for redirect, reason in ((">&-", "it is closed"), ("> full", "No space left on device")):
        for args in ("rf-calc -k 3 -n 3", "rf-calc -k 3 -n 3 -q", "conv-calc --in 32 -k 5 --format json"):
            proc = _shell(f"{python} -m cnntools {args} {redirect}", tmp_path)
            assert proc.returncode == 1, (args, redirect, proc.stderr)
            assert proc.stderr == f"Error: stdout: cannot write ({reason})" + ("; redirect it to a file or to /dev/null" if redirect == ">&-" else "") + "\n"


def test_output_to_dev_stdout_is_stdout(tmp_path, checkpoint):
    # /dev/stdout is this process's own stdout (a pipe here): written like `-`, the summary moves to stderr
    python = shlex.quote(sys.executable)
    proc = _shell(f"{python} -m cnntools eval {checkpoint} --data fake:6,size=8,channels=1 -o /dev/stdout "
                  "--format json | cat", tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert proc.stdout.startswith("model,data,index,path,label,label_name,pred") and rows and rows[0]["label_name"] == "\x1b[31mred\x1b[0m"
    assert '"share_negative"' in proc.stderr  # the JSON summary, moved off the claimed stdout


def test_write_data_error_is_one_line():
    class Full(io.StringIO):
        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CnnError, match=r"cannot write \(No space left on device\)"):
        output.write_data("x\n", Full())


# ---------------------------------------------------------------------------- 2./3./7. reading


def test_reading_a_fifo_without_writer_does_not_block(tmp_path, cli, checkpoint):
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    with files.open_binary(fifo) as handle:
        assert handle.read() == b""
    result = cli("eval", checkpoint, "--image", fifo, "-q")
    assert result.exit_code == 1 and "x.png: empty file" in result.stderr


def test_devices_are_refused_as_input(tmp_path, cli, checkpoint):
    zero = make_char(tmp_path, "zero.png", ZERO)
    result = cli("eval", checkpoint, "--image", zero, "-q")
    assert result.exit_code == 1
    assert result.stderr == f"Error: {zero}: is a character device, not a file; give a regular file, a pipe, or - for stdin\n"
    with pytest.raises(CnnError, match="is a directory"):
        files.read_bytes(tmp_path)


def test_read_is_capped(tmp_path, cli, checkpoint):
    big = tmp_path / "big.txt"
    big.write_bytes(b"1 " * 1000)
    with pytest.raises(CnnError, match="more than 100 bytes"):
        files.read_bytes(big, limit=100)
    assert len(files.read_bytes(big, limit=2000)) == 2000
    result = cli("eval", checkpoint, "--image", "-", "-q", input=b"\0" * 2000, env={"CNNTOOLS_MAX_IMAGE_PIXELS": "1"})
    assert result.exit_code == 1  # 4 bytes + 16 MiB headroom: 2000 bytes are read, then refused as not an image
    assert "not a readable image" in result.stderr


def _awkward_folder(root: Path) -> dict:
    """Class folders with link loops, a FIFO and a dead link named like images, and names that
    are not UTF-8 or carry escape sequences."""
    for cls in ("a", "b"):
        for i in range(3):
            (root / cls).mkdir(parents=True, exist_ok=True)
            png(root / cls / f"{i}.png", seed=i + (10 if cls == "b" else 0))
    (root / "a" / "l1").symlink_to(".")
    (root / "a" / "l2").symlink_to(".")
    (root / "a" / "same.png").symlink_to("0.png")  # the same real file: listed once
    os.mkfifo(root / "b" / "x.png")
    (root / "b" / "dead.png").symlink_to("nowhere.png")
    odd_file = os.fsencode(root / "b") + b"/bad\xff\x1b[2J.png"
    png(Path(os.fsdecode(odd_file)), seed=7)
    odd_class = os.fsencode(root) + b"/cl\xfe\x1b[31m"
    os.mkdir(odd_class)
    png(Path(os.fsdecode(odd_class + b"/1.png")), seed=8)
    return {"odd_file": odd_file, "odd_class": os.fsdecode(b"cl\xfe\x1b[31m")}


def test_walk_files_each_real_file_once_and_never_opens_a_fifo(tmp_path):
    info = _awkward_folder(tmp_path)
    found, skipped = files.walk_files(tmp_path / "a", lambda name: name.endswith(".png"))
    assert [p.name for p in found] == ["0.png", "1.png", "2.png"]
    (tmp_path / "a" / "up").symlink_to("..")  # back to the top: the whole tree, each file once
    everything, _ = files.walk_files(tmp_path / "a", lambda name: name.endswith(".png"))
    assert len(everything) == len({os.stat(p).st_ino for p in everything}) == 3 + 4 + 1
    found, skipped = files.walk_files(tmp_path / "b", lambda name: name.endswith(".png"))
    assert info["odd_file"] in [os.fsencode(p) for p in found]  # every byte of the name kept
    assert sorted((p.name, reason) for p, reason in skipped) == [
        ("dead.png", "cannot read (a link to nothing)"), ("x.png", "a FIFO, not a regular file")]


def test_dataset_stats_on_an_awkward_folder(cli, tmp_path):
    info = _awkward_folder(tmp_path / "data")
    result = cli("dataset-stats", "--data", tmp_path / "data", "--format", "json", env={"CNNTOOLS_CACHE": "off"})
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["classes"] == ["a", "b", info["odd_class"]]  # JSON keeps the exact name
    counts = {row["class"]: row["train"] for row in doc["class_counts"]} if "class_counts" in doc else None
    assert counts in (None, {"a": 3, "b": 4, info["odd_class"]: 1})
    assert "x.png: a FIFO, not a regular file; skipped" in result.stderr
    assert "\x1b" not in result.stderr
    table = cli("dataset-stats", "--data", tmp_path / "data", "-q", env={"CNNTOOLS_CACHE": "off"})
    assert table.exit_code == 0 and "\x1b" not in table.stdout
    assert "cl\\xfe\\x1b[31m" in table.stdout
    rows = table.stdout.splitlines()
    names = ("a", "b", "cl\\xfe\\x1b[31m")
    assert [line.split()[:2] for line in rows if line.split()[:1] and line.split()[0] in names] == [["a", "3"], ["b", "4"], [names[2], "1"]]


# ---------------------------------------------------------------------------- 6. terminal safety


def test_escape_control_characters_and_undecodable_bytes():
    assert output.escape("\x1b[31mred\nx\ty\r") == "\\x1b[31mred\\nx\\ty\\r"
    assert output.escape(os.fsdecode(b"caf\xe9")) == "caf\\xe9"
    assert output.escape("plain é 漢字") == "plain é 漢字"
    assert output.format_cell("a\nb") == "a\\nb"


def test_table_rows_stay_one_line_each_csv_and_json_keep_values():
    rows = [{"class": "\x1b[31mred", "n": 1}, {"class": "two\nlines", "n": 2}, {"class": 'co,ma "q"', "n": 3}]
    stream = io.StringIO()
    output.print_table(rows, title="t\x1b]0;title\x07", stream=stream)
    text = stream.getvalue()
    assert "\x1b" not in text and "\x07" not in text and len(text.splitlines()) == 5
    back = list(csv.DictReader(io.StringIO(output.csv_text(rows))))
    assert [r["class"] for r in back] == [r["class"] for r in rows]
    stream = io.StringIO()
    output.print_json({"rows": rows}, schema="eval", stream=stream)
    assert json.loads(stream.getvalue())["rows"] == rows


def test_class_names_from_a_checkpoint_are_escaped_in_tables(cli, checkpoint, tmp_path):
    png(tmp_path / "p.png")
    result = cli("eval", checkpoint, "--image", tmp_path / "p.png", "--top-k", "10")
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout and "\t" not in result.stdout
    assert "\\x1b[31mred\\x1b[0m" in result.stdout and "two\\nlines" in result.stdout
    data = cli("eval", checkpoint, "--image", tmp_path / "p.png", "--top-k", "10", "--format", "json")
    assert "\x1b[31mred\x1b[0m" in data.stdout.encode().decode("unicode_escape")


def test_predictions_csv_round_trips_odd_class_names(cli, checkpoint, tmp_path):
    predictions = tmp_path / "p.csv"
    result = cli("eval", checkpoint, "-q", "--data", "fake", "--predictions", predictions)
    assert result.exit_code == 0, result.stderr
    names = {row["label_name"] for row in csv.DictReader(io.StringIO(predictions.read_text()))}
    table = cli("confusion", predictions)
    assert table.exit_code == 0, table.stderr
    assert "\x1b" not in table.stdout and "\x1b" not in table.stderr
    assert names <= {"\x1b[31mred\x1b[0m", "two\nlines", "tab\there"} | {f"c{i}" for i in range(7)}


# ---------------------------------------------------------------------------- 8. options


@pytest.mark.parametrize("args, expected", [
    (["train", "--lr", "nan"], "'--lr': nan is not a finite number; expected a number > 0"),
    (["train", "--weight-decay", "nan"], "'--weight-decay': nan is not a finite number; expected a number >= 0"),
    (["train", "--warmup", "nan"], "'--warmup': nan is not a finite number"),
    (["train", "--momentum", "inf"], "'--momentum': inf is not a finite number; expected a number from 0 to 1"),
    (["train", "--seed", "-1"], "'--seed': -1 is out of range; expected a number from 0 to 4,294,967,295"),
    (["train", "--seed", "99999999999999999999"], "'--seed': 99999999999999999999 is out of range"),
    (["train", "--image-size", "-3"], "'--image-size': -3 is out of range; expected a number from 1 to 4096"),
    (["train", "--image-size", "100000"], "'--image-size': 100000 is out of range"),
    (["tsne", "--perplexity", "nan"], "'--perplexity': nan is not a finite number"),
    (["eval", "x.safetensors", "--batch-size", "0"], "'--batch-size': 0 is out of range; expected a number from 1 to 1,048,576"),
    (["saliency", "x.safetensors", "--seed", "-5"], "'--seed': -5 is out of range"),
    (["conv-calc", "--input", "1 2; 3 4", "-k", "1 0; 0 1", "-b", "nan"], "'--bias': nan is not a finite number"),
])
def test_numeric_options_checked_before_work(cli, args, expected, tmp_path):
    result = cli(*args, "-o", tmp_path / "never.safetensors") if args[0] == "train" else cli(*args)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.splitlines()[-1] == f"Error: Invalid value for {expected}" or expected in result.stderr.splitlines()[-1]
    assert not (tmp_path / "never.safetensors").exists()


def test_index_ranges_checked_against_the_dataset_before_expanding(cli, checkpoint):
    result = cli("saliency", checkpoint, "--data", "fake:20,size=8,channels=1", "--split", "train", "-i", "0-999999999", "-q")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: index 999999999 is out of range: fake") and "has 20 images (0..19)" in result.stderr


def test_confusion_refuses_a_matrix_larger_than_memory(cli, tmp_path):
    from cnntools.core import runtime

    rows = "label,pred\n" + "".join(f"{i * 7},{i * 7 + 3}\n" for i in range(2000)) + "1000000,0\n"
    result = cli("confusion", "-", input=rows)
    need = 3 * 8 * 1_000_001**2
    assert need > (runtime.available_memory() or 0)
    assert result.exit_code == 1 and "a confusion matrix of 1,000,001 classes needs about" in result.stderr
    assert len(result.stderr.splitlines()) == 1


# ---------------------------------------------------------------------------- 9. CIFAR and MNIST files


def _cifar_folder(root: Path, data, labels, names=("a", "b")) -> Path:
    import pickle

    root.mkdir(parents=True, exist_ok=True)
    with open(root / "data_batch_1", "wb") as handle:
        pickle.dump({"data": data, "labels": labels}, handle)
    with open(root / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": names}, handle)
    return root


GOOD_PIXELS = np.random.default_rng(0).integers(0, 256, (4, 3 * 8 * 8), dtype=np.uint8)


@pytest.mark.parametrize("data, labels, names, expected", [
    ("pixels", [0, 1, 0, 1], ["a", "b"], "entry 'data' is a str, expected an array of pixel bytes"),
    (7, [0, 1, 0, 1], ["a", "b"], "entry 'data' is a int, expected an array"),
    (GOOD_PIXELS, ["a", "b", "a", "b"], ["a", "b"], "entry 'labels' is a <U1 array of shape (4,), expected a list of integer class indices"),
    (GOOD_PIXELS, [0.5, 1, 0, 1], ["a", "b"], "entry 'labels' is a float64 array"),
    (GOOD_PIXELS, [0, 1, 0, 1], 5, "entry 'label_names' is not a list of class names (found int)"),
    (GOOD_PIXELS.astype(np.float64) * 4000, [0, 1, 0, 1], ["a", "b"], "holds pixel values from 0.0 to 1020000.0; expected whole numbers 0..255"),
    (GOOD_PIXELS.astype(np.float64) / 255, [0, 1, 0, 1], ["a", "b"], "expected whole numbers 0..255"),
    (np.full((4, 192), np.nan), [0, 1, 0, 1], ["a", "b"], "NaN or infinite"),
    (GOOD_PIXELS.astype(np.complex64), [0, 1, 0, 1], ["a", "b"], "entry 'data' is a complex64 array"),
])
def test_malformed_cifar_batches_are_one_error_line(cli, tmp_path, data, labels, names, expected):
    folder = _cifar_folder(tmp_path / "cifar", data, labels, names)
    result = cli("dataset-stats", "--data", folder, "-q")
    assert result.exit_code == 1, result.stderr
    assert len(result.stderr.splitlines()) == 1 and expected in result.stderr and "unexpected" not in result.stderr


def test_good_cifar_batch_still_loads(cli, tmp_path):
    folder = _cifar_folder(tmp_path / "cifar", GOOD_PIXELS, [0, 1, 0, 1])
    result = cli("dataset-stats", "--data", folder, "--format", "json", "-q")
    assert result.exit_code == 0, result.stderr
    assert result.json()["classes"] == ["a", "b"]


def _idx(ndim_byte: int, dims: list[int], body: bytes) -> bytes:
    return bytes([0, 0, 8, ndim_byte]) + b"".join(d.to_bytes(4, "big") for d in dims) + body


@pytest.mark.parametrize("raw, expected", [
    (_idx(255, [2, 2, 2], b"\0" * 8), "idx header claims 255 dimensions"),
    (_idx(3, [2**31, 2**31, 2**31], b"\0" * 8), "truncated or padded idx file (8 bytes of data, header says 9903520314283042199192993792)"),
    (_idx(3, [2, 2], b""), "truncated or padded"),
    (b"\0\0\x0d\x03" + b"\0" * 20, "bad magic number"),
])
def test_malformed_mnist_idx_is_one_error_line(tmp_path, raw, expected):
    from cnntools.data.torchvision_layouts import read_idx

    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(raw)
    with pytest.raises(CnnError, match=re.escape(expected)):
        read_idx(path)


def test_mnist_gzip_bomb_stops_at_the_limit(tmp_path, monkeypatch):
    import gzip

    from cnntools.data import torchvision_layouts

    monkeypatch.setattr(torchvision_layouts, "IDX_LIMIT", 10_000)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx(3, [100, 10, 10], b"\0" * 10_000)))
    with pytest.raises(CnnError, match="decompresses to more than 10,000 bytes"):
        torchvision_layouts.read_idx(path)


def test_predictions_csv_with_a_bare_carriage_return_is_one_line(cli, tmp_path):
    # found by the fuzz run: csv.Error reached the user as "unexpected"
    path = tmp_path / "p.csv"
    for text in ("index,path,pred,label\n11,4,\r,0\n", 'label,pred\n0,"' + "a" * 200_000 + '"\n'):
        path.write_text(text)
        result = cli("confusion", path)
        assert result.exit_code == 1 and result.stderr.startswith("Error: ") and "unexpected" not in result.stderr
    path.write_text('label,label_name,pred\n0,"two\nlines",1\n1,b,0\n')
    result = cli("confusion", path, "--format", "json")
    assert result.exit_code == 0 and result.json()["classes"] == ["two\nlines", "b"]


@pytest.mark.parametrize("name, text", [("h.csv", "epoch,train_loss\n1,\"" + "a" * 200_000 + "\"\n"), ("h.jsonl", "[" * 100_000 + "\n")])
def test_malformed_history_files_are_one_line(cli, tmp_path, name, text):
    # found by fuzzing the history reader: csv.Error and RecursionError reached the user as "unexpected"
    path = tmp_path / name
    path.write_text(text)
    result = cli("curves", path, "--format", "json")
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1 and "unexpected" not in result.stderr
