"""Issue 25 (reliability, round three): checkpoint metadata never names a file, native writers
fail in one line on a full disk, each image file counts once under its own class, photos are
decoded as displayed, and exit codes and Ctrl-C hold at every point.

FIFOs, links and full filesystems are made inside temporary folders (a small tmpfs this test
mounts and unmounts; skipped with the reason where mounting is not permitted).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ENV = {**os.environ, "NO_COLOR": "1", "CNNTOOLS_DEBUG": ""}


def run(*args, timeout: float = 120, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnntools", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**ENV, **(env or {})}, cwd=cwd)


def one_error_line(proc, code: int = 1) -> str:
    """The one `Error:` line of a failed run (progress lines may come before it; nothing after)."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr[-2000:]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr[-2000:]
    assert "unexpected" not in errors[0] and "Traceback" not in proc.stderr and "terminate called" not in proc.stderr
    return errors[0]


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str):
    """A tmpfs of `size` mounted at `folder` for the block; unmounted after."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(folder)],
                       check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"cannot mount a tmpfs here ({error}); the full-disk cases need one")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


def fill(folder: Path, leave: int) -> None:
    """Fill the filesystem of `folder` until about `leave` bytes are free."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(folder / "filler", "wb") as handle:
        with contextlib.suppress(OSError):
            handle.write(b"\0" * max(0, free - leave))


# ---------------------------------------------------------------------------- 3. metadata never names a file


def _timm_checkpoint(path: Path, arch_args: dict) -> Path:
    """A valid checkpoint of timm's tiny test_resnet whose metadata carries `arch_args` (crafted:
    no writer of ours stores these)."""
    pytest.importorskip("timm")
    from cnntools.checkpoint import CheckpointMeta, DataRecipe, save_checkpoint
    from cnntools.models import create_model

    model = create_model("timm:test_resnet", 3, 32, 4)
    meta = CheckpointMeta(arch={"arch": "timm:test_resnet", "in_channels": 3, "image_size": 32, "num_classes": 4},
                          classes=list("abcd"), mean=[0.5] * 3, std=[0.25] * 3, data=DataRecipe("fake:8,size=32,classes=4"))
    doc = meta.to_json()
    doc["arch_args"] = arch_args
    save_checkpoint(str(path), model, doc)
    return path


def _crafted_args(target: str) -> list[dict]:
    """arch_args that would make timm or torchvision read `target`, one key each."""
    return [
        {"checkpoint_path": target},
        {"pretrained": True},
        {"pretrained_cfg": {"file": target}},
        {"pretrained_cfg_overlay": {"file": target, "source": "file"}},
        {"pretrained_cfg_overlay": {"state_dict": {}}},
        {"cache_dir": target},
        {"weights": "DEFAULT"},
        {"file": target},
        {"url": f"file://{target}"},
        {"drop_rate": target},  # an allowed key whose value is a path
        {"global_pool": ["avg", target]},
        {"act_layer": {"name": target}},
    ]


def test_metadata_naming_a_fifo_never_opens_it(tmp_path):
    """The issue's case, end to end: timm's checkpoint_path in the metadata, a FIFO there."""
    trap = tmp_path / "trap.pth"
    os.mkfifo(trap)  # opening it blocks: a command that tries hangs and the timeout fails the test
    ckpt = _timm_checkpoint(tmp_path / "m.safetensors", {"checkpoint_path": str(trap)})
    for command in (["eval", ckpt, "--data", "fake:8,size=32,classes=4"], ["featmaps", ckpt, "--list-layers"], ["info", ckpt]):
        line = one_error_line(run(*command, timeout=60))
        assert "arch_args 'checkpoint_path'" in line and "m.safetensors" in line
    with pytest.raises(OSError):  # nobody holds it open: a non-blocking writer finds no reader
        os.close(os.open(trap, os.O_WRONLY | os.O_NONBLOCK))


@pytest.fixture
def opened(monkeypatch):
    """Every path opened in this process (builtins.open, os.open, torch.load) while the test runs."""
    import builtins
    import io

    seen: list[str] = []
    real_open, real_os_open, real_load = builtins.open, os.open, torch.load

    def record(path):
        with contextlib.suppress(TypeError):
            seen.append(os.fsdecode(path))

    def fake_open(file, *args, **kwargs):
        record(file)
        return real_open(file, *args, **kwargs)

    def fake_os_open(path, *args, **kwargs):
        record(path)
        return real_os_open(path, *args, **kwargs)

    def fake_load(f, *args, **kwargs):
        record(f)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(torch, "load", fake_load)
    return seen


@pytest.mark.parametrize("case", range(len(_crafted_args("x"))))
def test_metadata_arch_args_never_reach_a_file(cli, tmp_path, case, opened):
    trap = tmp_path / "trap.pth"
    torch.save({"weight": torch.zeros(1)}, trap)  # a plain pickled state dict: torch.load would read it
    ckpt = _timm_checkpoint(tmp_path / "m.safetensors", _crafted_args(str(trap))[case])
    opened.clear()
    for command in (["eval", ckpt, "--data", "fake:8,size=32,classes=4"], ["featmaps", ckpt, "--list-layers"], ["export", ckpt, "-o", tmp_path / "w.safetensors"]):
        result = cli(*command)
        assert result.exit_code == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "arch_args" in lines[0], result.stderr
    assert any(p.endswith("m.safetensors") for p in opened)  # the recorder sees the opens
    assert not [p for p in opened if "trap" in p]


def test_allowed_arch_args_still_work(tmp_path):
    ckpt = _timm_checkpoint(tmp_path / "m.safetensors", {"drop_rate": 0.1, "global_pool": "avg"})
    proc = run("featmaps", ckpt, "--list-layers", "--format", "json", timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("family", ["timm:test_resnet", "torchvision:resnet18"])
def test_arch_args_on_the_command_line_are_checked_too(family, tmp_path):
    if family.startswith("timm"):
        pytest.importorskip("timm")
    from cnntools.core.errors import CnnError
    from cnntools.models import create_model

    with pytest.raises(CnnError, match="checkpoint_path"):
        create_model(family, 3, 32, 4, arch_args={"checkpoint_path": str(tmp_path / "x.pth")})
    with pytest.raises(CnnError, match="weights"):
        create_model(family, 3, 32, 4, arch_args={"weights": "DEFAULT"})


def test_every_torch_load_is_weights_only():
    """pyproject allows torch >= 2.2, whose torch.load unpickles code by default before 2.6."""
    root = Path(__file__).resolve().parents[1] / "cnntools"
    calls = [(p, line) for p in root.rglob("*.py") for line in p.read_text().splitlines()
             if "torch.load(" in line and not line.strip().startswith(("#", '"'))]
    assert calls, "expected the hub/timm weight readers"
    for path, line in calls:
        assert "weights_only=True" in line, f"{path}: {line.strip()}"


# ---------------------------------------------------------------------------- 4. native writers on a full disk


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    from interpret_fixtures import train_checkpoint

    path = tmp_path_factory.mktemp("trust") / "lenet.safetensors"
    return str(train_checkpoint(path, "digits", "lenet", 32, 1, steps=2))


@pytest.mark.parametrize("suffix", [".pt2", ".onnx", ".safetensors"])
@pytest.mark.parametrize("leave", [0, 48 * 1024])
def test_export_on_a_full_disk_is_one_line(lenet, tmp_path, suffix, leave):
    if suffix == ".onnx":
        pytest.importorskip("onnxscript")
    with small_tmpfs(tmp_path / "full", "192k") as full:
        fill(full, leave)
        target = full / f"m{suffix}"
        proc = run("export", lenet, "-o", target, "--no-verify", timeout=300)
        line = one_error_line(proc)
        assert line == f"Error: {target}: cannot write (No space left on device)"
        assert sorted(os.listdir(full)) == ["filler"]  # nothing left behind


def test_pt2_export_still_round_trips(lenet, tmp_path):
    out = tmp_path / "m.pt2"
    proc = run("export", lenet, "-o", out, "--format", "json", "-n", "8", timeout=300)
    assert proc.returncode == 0, proc.stderr
    program = torch.export.load(str(out))
    from cnntools.checkpoint import load_model

    lm = load_model(lenet)
    x = torch.randn(3, *lm.preprocessing.shape)
    with torch.no_grad():
        assert torch.allclose(program.module()(x), lm.model.float().eval()(x), atol=1e-5)


# ---------------------------------------------------------------------------- 6. photos as displayed


def _displayed() -> np.ndarray:
    """A 24x40 RGB picture with no symmetry: flat 8-pixel blocks (JPEG keeps them to a few
    levels), each a different colour."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, size=(3, 5, 3))
    return np.kron(blocks, np.ones((8, 8, 1))).astype(np.uint8)


# How a camera stores the displayed picture D for each EXIF orientation (the tag says how to
# turn the stored image for display; TIFF/EXIF 2.3 spec), written with numpy, not Pillow.
STORED = {
    1: lambda d: d,
    2: lambda d: d[:, ::-1],  # mirrored horizontally
    3: lambda d: d[::-1, ::-1],  # rotated 180
    4: lambda d: d[::-1],  # mirrored vertically
    5: lambda d: d.transpose(1, 0, 2),  # mirrored along the main diagonal
    6: lambda d: np.rot90(d, 1),  # displayed = stored turned 90 clockwise
    7: lambda d: d[::-1, ::-1].transpose(1, 0, 2),  # mirrored along the other diagonal
    8: lambda d: np.rot90(d, -1),  # displayed = stored turned 90 anticlockwise
}


def _photo(path: Path, tag: int) -> Path:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = tag
    Image.fromarray(np.ascontiguousarray(STORED[tag](_displayed()))).save(path, quality=95, subsampling=0, exif=exif)
    return path


@pytest.mark.parametrize("tag", range(1, 9))
def test_exif_orientation_gives_the_displayed_pixels(tmp_path, tag):
    from cnntools.data.images import decode_file, pil
    from cnntools.inference.images import read_uint8

    pil()
    path = _photo(tmp_path / f"o{tag}.jpg", tag)
    reference = _displayed().astype(int)
    got = decode_file(str(path), "RGB")
    assert got.shape == reference.shape
    assert np.abs(got.astype(int) - reference).mean() < 4  # JPEG's loss only
    if tag in (2, 3, 4):  # (5-8 differ in shape from the stored image already)
        assert np.abs(got.astype(int) - STORED[tag](reference)).mean() > 20  # not the stored orientation
    # The single-image path (eval --image, saliency --image) gives the same pixels, also resized (draft).
    single = read_uint8(str(path), 3)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(single, got)
    small = decode_file(str(path), "RGB", (20, 12))  # (width, height)
    assert small.shape == (12, 20, 3)


def test_image_folder_stores_photos_as_displayed(tmp_path, monkeypatch):
    from cnntools.data.folders import FolderSource
    from cnntools.inference.images import read_uint8

    monkeypatch.setenv("CNNTOOLS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "photos"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for tag in range(1, 9):
            _photo(root / cls / f"o{tag}.jpg", tag)
    imageset = FolderSource(root).load("train")
    assert tuple(imageset.images.shape[1:]) == (3, 24, 40)  # every photo as displayed: the sizes agree
    for i, path in enumerate(imageset.paths):
        single = read_uint8(path, 3)[0]
        assert torch.equal(imageset.images[i], single), path  # the store and the single-image path agree
        assert (single.permute(1, 2, 0).numpy().astype(int) - _displayed()).__abs__().mean() < 4
    assert imageset.meta["per_image_original_size"][0] == (40, 24)


def test_the_decoder_version_is_in_the_store_key(tmp_path, monkeypatch):
    from cnntools.data import cache, images

    key = cache.cache_key(tmp_path, "median", [("a/x.jpg", 10, 1)])
    monkeypatch.setattr(images, "DECODER_VERSION", "1")  # a store written before orientation was applied
    assert cache.cache_key(tmp_path, "median", [("a/x.jpg", 10, 1)]) != key


# ---------------------------------------------------------------------------- 5. each file counted once


def _folder(root: Path, counts: dict[str, int]) -> Path:
    """Class folders of small PNGs, each image different (its class and number in the pixels)."""
    from PIL import Image

    for c, (cls, n) in enumerate(counts.items()):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8), 20 * c + i, dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def _load(root: Path, capsys):
    from cnntools.data.folders import FolderSource

    source = FolderSource(root)
    images = source.load("train")
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Warning")]
    return source, images, warnings


def _labelled(images) -> dict[str, str]:
    return {os.path.basename(os.path.dirname(p)) + "/" + os.path.basename(p): images.classes[int(y)]
            for p, y in zip(images.paths, images.labels)}


@pytest.mark.parametrize("shape", ["link to the root", "link to the other class", "link to the root's parent path"])
def test_a_link_back_into_the_dataset_counts_each_file_once(tmp_path, monkeypatch, capsys, shape):
    monkeypatch.setenv("CNNTOOLS_CACHE", "off")
    root = _folder(tmp_path / "data", {"a": 5, "b": 8})  # the 13-image folder
    target = {"link to the root": "..", "link to the other class": "../b",
              "link to the root's parent path": str(tmp_path / "data")}[shape]
    os.symlink(target, root / "a" / "more")
    source, images, warnings = _load(root, capsys)
    assert len(images) == 13 and source.classes == ["a", "b"]
    counts = torch.bincount(images.labels, minlength=2).tolist()
    assert counts == [5, 8]
    # Each file under its own class: b's files only in b, by the path inside b.
    assert all(os.path.realpath(p).startswith(str(root / images.classes[int(y)])) for p, y in zip(images.paths, images.labels))
    assert len(warnings) == 8 and all("b/" in w and "class b" in w and "not again under a" in w for w in warnings)
    # The pixels are b's own: the decoded image of each path is the file's.
    for p, img in zip(images.paths, images.images):
        c, i = source.classes.index(os.path.basename(os.path.dirname(os.path.realpath(p)))), int(Path(p).stem)
        assert int(img.float().mean()) == 20 * c + i


def test_loops_and_same_class_links_are_quiet(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CNNTOOLS_CACHE", "off")
    root = _folder(tmp_path / "data", {"a": 3, "b": 4})
    os.symlink(".", root / "a" / "self")  # a loop
    (root / "b" / "sub").mkdir()
    os.symlink("..", root / "b" / "sub" / "up")  # a loop two levels deep
    os.link(root / "a" / "0.png", root / "a" / "hard.png")  # a hard link, same class
    source, images, warnings = _load(root, capsys)
    assert len(images) == 7 and torch.bincount(images.labels).tolist() == [3, 4]
    assert warnings == []


def test_a_class_folder_that_is_a_link_to_another_is_dropped(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CNNTOOLS_CACHE", "off")
    root = _folder(tmp_path / "data", {"b": 3, "c": 4})
    os.symlink("b", root / "a")  # sorts first, yet b's files stay b's
    source, images, warnings = _load(root, capsys)
    assert source.classes == ["b", "c"] and len(images) == 7
    assert torch.bincount(images.labels).tolist() == [3, 4]
    assert any("class a" in w and "ignored" in w for w in warnings)
    assert sum("not again under a" in w for w in warnings) == 3


def test_a_hard_link_across_classes_warns_naming_both(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CNNTOOLS_CACHE", "off")
    root = _folder(tmp_path / "data", {"a": 2, "b": 2})
    os.link(root / "a" / "0.png", root / "b" / "dup.png")
    source, images, warnings = _load(root, capsys)
    assert len(images) == 4
    assert len(warnings) == 1 and str(root / "a" / "0.png") in warnings[0] and str(root / "b" / "dup.png") in warnings[0]


def test_a_file_in_two_splits_counts_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CNNTOOLS_CACHE", "off")
    root = tmp_path / "data"
    _folder(root / "train", {"a": 3, "b": 3})
    _folder(root / "test", {"a": 2, "b": 2})
    os.symlink(str(root / "train" / "a" / "0.png"), root / "test" / "a" / "leak.png")
    from cnntools.data.folders import FolderSource

    source = FolderSource(root)
    assert len(source.load("train")) == 6 and len(source.load("test")) == 4
    assert "test/a/leak.png" in capsys.readouterr().err


# ---------------------------------------------------------------------------- 7. exit codes and Ctrl-C

TRAIN = ["train", "--arch", "simple-cnn", "--image-size", "8", "--precision", "fp32", "--device", "cpu",
         "--epochs", "1000", "--batch-size", "16", "--val-split", "0"]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Starts cnntools as its console script does, after telling the test it is about to.
# `R` is written from inside main(), once its handlers are in place: a SIGINT that lands before
# cnntools' first line runs (in the interpreter or this driver) is Python's to report, not ours.
DRIVER = ("import os, sys; import cnntools.cli.app as app; run = app._run; "
          "app._run = lambda: (os.write(2, b'R'), run())[1]; sys.argv[0] = 'cnntools'; app.main()")


def test_a_swallowed_ctrl_c_during_start_up_still_stops_train(tmp_path):
    """The window: Python raises KeyboardInterrupt wherever the main thread is, and inside a
    weakref finalizer (train's memory estimate releases every tensor through one) it is
    swallowed ("Exception ignored"). Before the fix the run then trained every epoch and
    exited 0; now the recorded signal stops it before the first batch with 130."""
    script = """
import os, signal, sys, weakref
from cnntools.cli.app import main
from cnntools.core import signals
signals.install()  # what main() does first
class Box: pass
box = Box()
def release():
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(2_000_000): pass  # the handler runs in here; a finalizer swallows its exception
weakref.finalize(box, release)
del box
print("survived", file=sys.stderr, flush=True)
sys.argv = ["cnntools", *sys.argv[1:]]
main()
"""
    out = tmp_path / "m.safetensors"
    proc = subprocess.run([sys.executable, "-c", script, *TRAIN, "--epochs", "2", "-o", out], capture_output=True,
                          text=True, timeout=120, env={**ENV, **ONE_THREAD}, cwd=tmp_path)
    assert "survived" in proc.stderr  # the exception was swallowed where it landed
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == "Interrupted."
    assert not out.exists()  # nothing trained


def test_ctrl_c_at_any_point_of_start_up_and_the_first_batches_exits_130(tmp_path):
    """SIGINT at 12 points: from cnntools' first line through start-up (times after it began),
    and around the first batches (times after train's "Training ..." line): 130 every time,
    never a traceback (Click says "Aborted!" for one that lands while it parses options)."""
    points = [("start", d) for d in (0.005, 0.05, 0.2, 0.6, 1.5, 3.0)] + \
             [("training", d) for d in (0.0, 0.01, 0.05, 0.15, 0.4, 1.0)]
    import threading

    def interrupt(after: str, delay: float, proc: subprocess.Popen) -> None:
        """Each process waits for its own moment (R: cnntools starts; or the Training line)."""
        if proc.stderr.read(1) != b"R":
            return
        if after == "training":
            while not (line := proc.stderr.readline()).startswith(b"Training ") and line:
                pass
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)

    failures, interrupted_training = [], 0
    for batch in (points[:6], points[6:]):  # six at a time: the machine is shared
        running = []
        for after, delay in batch:
            out = tmp_path / f"m-{after}-{delay}.safetensors"
            proc = subprocess.Popen([sys.executable, "-c", DRIVER, *TRAIN, "-o", out], stderr=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, env={**ENV, **ONE_THREAD}, cwd=tmp_path)
            thread = threading.Thread(target=interrupt, args=(after, delay, proc))
            thread.start()
            running.append((after, delay, proc, thread))
        for after, delay, proc, thread in running:
            thread.join(timeout=300)
            try:
                _, err = proc.communicate(timeout=300)
            finally:
                if proc.poll() is None:
                    proc.kill()
            text = err.decode(errors="replace")
            interrupted_training += "Interrupted at epoch" in text
            if proc.returncode != 130 or "Traceback" in text:
                failures.append((after, delay, proc.returncode, text[-500:]))
    assert not failures, failures
    assert interrupted_training >= 1  # some signals did land in the batches (resumable checkpoint written)


USAGE = [  # bad option values and combinations the commands check themselves: 2
    ["rf-calc", "-k", "x"], ["rf-calc", "-k", "3", "-n", "0"], ["rf-calc", "-k", "3", "-n", "-1"], ["rf-calc", "-n", "0"],
    ["rf-calc", "-k", "3", "-s", "1,x"], ["rf-calc", "-k", "3", "--type", "dense"], ["rf-calc", "--layers", "conv3,blob"],
    ["conv-calc", "--in", "32", "-k", "3", "-s", "0"], ["conv-calc", "--in", "x", "-k", "3"], ["conv-calc", "-k", "3"],
    ["conv-calc", "--input", "1 2; 3 x", "-k", "1"],
    ["train", "--class-weights", "1,x", "--epochs", "1"], ["train", "--augment", "wobble", "--epochs", "1"],
    ["train", "--arch", "simple-cnn", "--arch-args", "width=", "--epochs", "1"],
    ["dataset-stats", "--image-size", "0x3"], ["dataset-stats", "--grid", "g.jpg"],
    ["tsne", "--layer", "fc"], ["tsne", "-n", "20", "--perplexity", "30"], ["tsne", "--k", "0"],
    ["saliency", "m.safetensors", "-n", "0"], ["train", "--arch", "simple-cnn", "--batchnorm", "--epochs", "1"],
    ["export", "m.safetensors", "-o", "m.txt"], ["export", "m.safetensors"],
    ["curves", "-", "-"],
]
RUNTIME = [  # problems with files and data: 1
    ["info", "no-such.safetensors"], ["eval", "no-such.safetensors"], ["dataset-stats", "--data", "no-such-set"],
    ["rf-calc", "--arch", "no-such-net"],
]


@pytest.mark.parametrize("args", USAGE + RUNTIME, ids=[" ".join(a) for a in USAGE + RUNTIME])
def test_usage_errors_exit_2_runtime_problems_exit_1(cli, args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli(*args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == (2 if args in USAGE else 1), result.stderr
    assert lines and lines[-1].startswith("Error: ") and sum(line.startswith("Error:") for line in lines) == 1
    assert "unexpected" not in lines[-1]
