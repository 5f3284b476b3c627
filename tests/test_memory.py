"""Memory estimates before the first forward pass (issue 14: "before any allocation derived from
input, estimate its size and refuse with one line when it exceeds what the machine can give").

The estimate (cnntools.inference.memory) is checked against the peak RSS a real forward/backward pass
reaches in a fresh process; hostile checkpoints (image_size 16384 with weights that fit any
size) are refused by every model-running command in seconds, with one line and no large
allocation; a batch too big for the memory is made smaller, with a note, and gives the same
numbers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from cnntools.inference import memory
from cnntools.core import runtime
from cnntools.checkpoint import save_checkpoint
from cnntools.models import create_model
from test_checkpoint import _meta

REPO = Path(__file__).parents[1]
GiB = 2**30

# A fresh process measures one pass: its peak RSS above the RSS just before (a small pass first,
# so library set-up is not counted), against the estimate made in the same process.
MEASURE = textwrap.dedent("""
    import json, sys, torch
    from cnntools.inference import memory
    from cnntools.models import create_model
    torch.set_num_threads(1)
    arch, c, s, b, training = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
    torch.manual_seed(0)
    model = create_model(arch, c, s, 10).train(training)
    estimate = memory.forward_peak_bytes(model, (b, c, s, s), training=training)
    def run(x):
        if training:
            model(x).sum().backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode():
                model(x)
    run(torch.zeros(2, c, s, s))
    x = torch.randn(b, c, s, s)
    before, hwm_before = status("VmRSS"), status("VmHWM")
    run(x)
    hwm = status("VmHWM")
    # When the high-water mark rose, the pass set it: the peak is exact, not hidden by an earlier one.
    print(json.dumps({"estimate": estimate, "measured": hwm - before + x.numel() * 4, "rose": hwm > hwm_before}))
""")


def _measure(arch, c, s, b, training):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", MEASURE, arch, str(c), str(s), str(b), "1" if training else "0"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import json

    return json.loads(proc.stdout)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
@pytest.mark.parametrize("arch,c,s,b", [("compact-cnn", 3, 256, 16), ("resnet18", 3, 128, 16)])
def test_inference_estimate_is_the_measured_peak(arch, c, s, b):
    got = _measure(arch, c, s, b, training=False)
    assert got["estimate"] > 200 * 2**20  # large enough that the process's own noise is small
    assert got["rose"], got
    assert 0.93 <= got["measured"] / got["estimate"] <= 1.12, got


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_training_estimate_with_its_margin_covers_the_measured_peak():
    got = _measure("simple-cnn", 3, 64, 128, training=True)
    assert got["rose"], got
    ratio = got["measured"] / got["estimate"]
    # The backward pass has buffers the dispatcher does not see; the margin covers them, not much more.
    assert 1.0 <= ratio <= memory.TRAINING_MARGIN, got


def test_estimate_grows_with_the_batch_and_the_image_and_costs_no_memory():
    model = create_model("resnet18", 3, 32, 10).eval()
    one, two = (memory.forward_peak_bytes(model, (b, 3, 64, 64)) for b in (1, 2))
    assert 1.8 * one < two < 2.2 * one
    started = time.perf_counter()
    huge = memory.forward_peak_bytes(model, (1, 3, 16384, 16384))  # shapes only: 300 GiB of activations, no bytes
    assert time.perf_counter() - started < 10
    assert huge > 200 * GiB
    # The input and the stem's output at least: 3 + 64 channels of 16384² float32.
    assert huge >= (3 + 64) * 16384**2 * 4


def test_estimate_keeps_the_captured_layers():
    model = create_model("compact-cnn", 3, 32, 10).eval()
    plain = memory.forward_peak_bytes(model, (1, 3, 128, 128))
    names = tuple(n for n, m in model.named_modules() if isinstance(m, torch.nn.ReLU))
    kept = memory.forward_peak_bytes(model, (1, 3, 128, 128), keep=names)
    sizes = []
    handles = [model.get_submodule(n).register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() * 4)) for n in names]
    with torch.no_grad():
        model(torch.zeros(1, 3, 128, 128))
    for handle in handles:
        handle.remove()
    # At the end every held map is alive at once, beside the last layer's output.
    assert kept > plain and kept >= sum(sizes) > 0


def test_a_model_that_reads_values_has_no_estimate():
    class ReadsValues(torch.nn.Module):
        def forward(self, x):
            return x * float(x.sum())  # a value, which the meta device does not have

    assert memory.forward_peak_bytes(ReadsValues(), (1, 3, 8, 8)) is None
    assert memory.fit_batch(ReadsValues(), (3, 8, 8), 64, torch.device("cpu"), "m") == 64


def _odd_model():
    """Every shape rule the built-in architectures do not reach: strides, dilation, groups,
    ceil_mode, in-place and other activations, a non-square adaptive pool."""
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1, ceil_mode=True),
                         nn.AvgPool2d(2, ceil_mode=True), nn.Conv2d(8, 6, 3, padding=2, dilation=2, groups=2),
                         nn.Hardswish(), nn.GELU(), nn.SiLU(), nn.Tanh(), nn.AdaptiveAvgPool2d((2, 3)), nn.Flatten(),
                         nn.Linear(36, 5), nn.LeakyReLU())


def _meta_cases():
    from cnntools.models import ARCHITECTURES, _load_families

    _load_families()
    for arch in ARCHITECTURES:
        channels, size = (1, 28) if arch == "mlp" else (3, 64)
        yield arch, create_model(arch, channels, size, 10), (3, channels, size, size)
    yield "lenet+batchnorm", create_model("lenet", 3, 32, 10, batchnorm=True), (3, 3, 32, 32)
    yield "odd", _odd_model(), (3, 3, 37, 29)


def test_shape_rules_give_what_the_meta_kernels_give():
    """The rules that keep torch._dynamo and sympy out (cnntools.inference.meta_shapes) give the
    same shapes, dtypes, strides and bytes as torch's own meta kernels, on every built-in
    architecture and the odd layers, forward and backward, NCHW and channels_last."""
    from torch.func import functional_call
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from cnntools.inference import meta_shapes

    answered, differ = set(), {}

    def describe(out):
        return [(tuple(t.shape), t.dtype, t.stride(), t.untyped_storage().nbytes()) if isinstance(t, torch.Tensor) else t
                for t in tree_flatten(out)[0]]

    class Compare(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            real = func(*args, **(kwargs or {}))
            ours = meta_shapes.output(func, args, kwargs or {})
            if ours is not NotImplemented:
                answered.add(str(func))
                if describe(ours) != describe(real):
                    differ[str(func)] = (describe(real), describe(ours))
            return real

    for name, model, shape in _meta_cases():
        for training in (False, True):
            model.train(training)
            for fmt in (torch.contiguous_format, torch.channels_last):
                weights = {n: torch.empty_like(p, device="meta").contiguous(memory_format=fmt if p.dim() == 4 else torch.contiguous_format)
                           .requires_grad_(training) for n, p in model.named_parameters()}
                weights.update({n: torch.empty_like(b, device="meta") for n, b in model.named_buffers()})
                x = torch.empty(shape, device="meta").contiguous(memory_format=fmt)
                with (torch.enable_grad() if training else torch.no_grad()), Compare():
                    out = functional_call(model, weights, (x,))
                    if training:
                        out.sum().backward()
    meta = torch.device("meta")
    x, half = torch.empty(2, 3, 4, 4, device=meta), torch.empty(2, 3, 4, 4, device=meta, dtype=torch.float16)
    ints = torch.empty(2, 3, device=meta, dtype=torch.int64)
    with Compare():  # promotion corners: a 0-d float64, mixed precision, broadcasting, integers
        x * torch.tensor(2.0, dtype=torch.float64, device=meta), x + half, x + torch.empty(3, 1, 1, device=meta)
        ints / ints, ints + ints, torch.relu(half), x.clone().add_(1.0)
    assert not differ, differ
    # Every rule was checked at least once.
    assert {f"aten.{n}.default" for n in ("convolution", "convolution_backward", "relu", "relu_", "threshold_backward",
                                           "avg_pool2d", "_adaptive_avg_pool2d", "native_batch_norm")} <= answered
    assert set(meta_shapes.RULES) <= answered, set(meta_shapes.RULES) - answered


def test_the_memory_check_imports_neither_dynamo_nor_sympy():
    """torch._dynamo and sympy cost 2-5 s to import; checking a model, forward and training,
    must not pull them in (issue 29). Building resnet18 imports torchvision, which imports
    torch._dynamo itself, so the architectures checked are those whose build does not."""
    script = textwrap.dedent("""
        import sys, torch
        from cnntools.inference import memory
        from cnntools.models import ARCHITECTURES, _load_families, create_model
        heavy = lambda: sorted(m for m in sys.modules if m == "sympy" or m.startswith("torch._dynamo"))[:3]
        _load_families()
        checked = []
        for arch in sorted(ARCHITECTURES, key=lambda a: a.startswith(("resnet", "vgg"))):  # torchvision's last
            c, s = (1, 28) if arch == "mlp" else (3, 64)
            for bn in (False, True):
                model = create_model(arch, c, s, 10, batchnorm=bn) if arch == "lenet" else create_model(arch, c, s, 10)
                if heavy():
                    break
                assert memory.forward_peak_bytes(model, (4, c, s, s)) > 0
                assert memory.forward_peak_bytes(model, (4, c, s, s), training=True) > 0
                memory.fit_batch(model, (c, s, s), 64, torch.device("cpu"), arch)
                memory.check_training(model, (c, s, s), 64, torch.device("cpu"), arch)
                assert not heavy(), (arch, heavy())
                checked.append(arch)
        print(" ".join(sorted(set(checked))))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {"lenet", "simple-cnn", "compact-cnn", "mlp"} <= set(proc.stdout.split()), proc.stdout


# ---------------------------------------------------------------------------- hostile checkpoints


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Checkpoints whose weights fit any image size and whose metadata claims 16384 or 4096 pixels."""
    root = tmp_path_factory.mktemp("hostile")
    paths = {}
    for arch, size in (("resnet18", 16384), ("resnet18", 4096), ("compact-cnn", 16384)):
        torch.manual_seed(0)
        path = root / f"{arch}-{size}.safetensors"
        save_checkpoint(str(path), create_model(arch, 3, 32, 10), _meta(arch, 3, size))
        paths[f"{arch}-{size}"] = path
    image = root / "photo.png"
    from PIL import Image

    Image.new("RGB", (20, 20), (200, 10, 10)).save(image)
    paths["image"] = image
    return paths


# command → arguments around the checkpoint; every model-running command and its probes
HOSTILE_COMMANDS = {
    "eval": lambda ck, out, image: ["eval", ck, "-o", out / "p.csv"],
    "eval --image": lambda ck, out, image: ["eval", ck, "--image", image],
    "confusion": lambda ck, out, image: ["confusion", ck, "-o", out / "c.png"],
    "tsne": lambda ck, out, image: ["tsne", "-c", ck, "-n", "20", "-o", out / "t.png"],
    "saliency": lambda ck, out, image: ["saliency", ck, "-i", "0", "-o", out / "s.png"],
    "saliency --list-layers": lambda ck, out, image: ["saliency", ck, "--list-layers"],
    "featmaps": lambda ck, out, image: ["featmaps", ck, "-o", out / "f.png"],
    "featmaps --list-layers": lambda ck, out, image: ["featmaps", ck, "--list-layers"],
    "filters": lambda ck, out, image: ["filters", ck, "--top-k", "2", "-o", out / "k.png"],
    "export": lambda ck, out, image: ["export", ck, "-o", out / "m.onnx"],
    "report": lambda ck, out, image: ["report", ck, "-o", out / "r.html"],
}


def _one_error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1, (result.exit_code, result.stderr[-500:])
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "unexpected" not in lines[0], result.stderr
    return lines[0]


@pytest.mark.parametrize("case", ["resnet18-16384", "compact-cnn-16384"])
def test_every_command_refuses_an_image_size_the_memory_cannot_hold(cli, hostile, tmp_path, case):
    for command, args in HOSTILE_COMMANDS.items():
        out = tmp_path / command.replace(" ", "_")
        out.mkdir()
        started = time.perf_counter()
        line = _one_error(cli(*args(hostile[case], out, hostile["image"]), "-q"))
        assert time.perf_counter() - started < 60, command
        # It names the size, what it would need and what there is.
        assert "16384" in line and "needs about" in line and "available" in line, (command, line)
        assert not any(out.iterdir()), command


def test_4096_is_refused_where_it_does_not_fit(cli, hostile, monkeypatch):
    """image_size 4096 passes the metadata bounds; resnet18 needs ~20 GiB for one such image."""
    monkeypatch.setattr(runtime, "available_memory", lambda: 8 * GiB)
    line = _one_error(cli("eval", hostile["resnet18-4096"], "-q"))
    assert "one 3×4096×4096 image needs about 20." in line and "8.0 GiB of RAM available" in line, line


def test_refusal_is_fast_and_allocates_nothing_large(hostile, tmp_path):
    """In a fresh process: the whole command, import and checkpoint included, stays small and quick."""
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for args in (["eval", str(hostile["resnet18-16384"]), "-q"],
                 ["saliency", str(hostile["compact-cnn-16384"]), "-i", "0", "-q", "-o", str(tmp_path / "s.png")]):
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "cnntools", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        stderr = proc.stderr.read()
        proc.stdout.close(), proc.stderr.close()
        assert os.waitstatus_to_exitcode(status) == 1 and stderr.startswith("Error: "), stderr
        peak_mib = usage.ru_maxrss / 1024  # Linux: KiB
        assert peak_mib < 1500, (args[0], peak_mib)  # torch and the model; not one 16384² activation (1 GiB a channel)
        assert seconds < 60, (args[0], seconds)


# ---------------------------------------------------------------------------- batches made smaller


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "compact.safetensors"
    torch.manual_seed(0)
    save_checkpoint(str(path), create_model("compact-cnn", 3, 32, 10), _meta("compact-cnn", 3, 32))
    return path


def test_a_batch_too_big_is_made_smaller_with_a_note_and_the_same_numbers(cli, small_model, monkeypatch):
    full = cli("eval", small_model, "--batch-size", "256", "--format", "json", "--device", "cpu", "--precision", "fp32")
    assert full.exit_code == 0, full.stderr
    model = create_model("compact-cnn", 3, 32, 10).eval()
    one = memory.forward_peak_bytes(model, (1, 3, 32, 32))
    per_image = memory.forward_peak_bytes(model, (2, 3, 32, 32)) - one
    # Half of this fits about 20 images at a time, not 256.
    monkeypatch.setattr(runtime, "available_memory", lambda: 2 * (one + 20 * per_image))
    small = cli("eval", small_model, "--batch-size", "256", "--format", "json", "--device", "cpu", "--precision", "fp32")
    assert small.exit_code == 0, small.stderr
    note = [line for line in small.stderr.splitlines() if "at a time" in line]
    assert len(note) == 1 and "a batch of 256 3×32×32 images needs about" in note[0], small.stderr
    fitted = int(note[0].split("running ")[1].split()[0])
    assert 15 <= fitted <= 21, note
    a, b = full.json()["models"][0], small.json()["models"][0]
    assert a["accuracy"] == b["accuracy"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_training_refuses_a_batch_that_cannot_fit_and_names_one_that_does(cli, monkeypatch, tmp_path):
    model = create_model("simple-cnn", 1, 32, 10)
    step = memory.forward_peak_bytes(model, (64, 1, 32, 32), training=True)
    monkeypatch.setattr(runtime, "available_memory", lambda: step)  # 64 with its margin does not fit
    result = cli("train", "--arch", "simple-cnn", "--image-size", "32", "--batch-size", "64", "--epochs", "1",
                 "--device", "cpu", "-o", tmp_path / "m.safetensors", "-q")
    line = _one_error(result)
    assert "a batch of 64 1×32×32 images needs about" in line and "use --batch-size" in line, line
    suggested = int(line.split("use --batch-size ")[1].split()[0])
    assert 1 <= suggested < 64
    assert not (tmp_path / "m.safetensors").exists()


def test_training_at_4096_is_refused_before_the_first_step(cli, monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "available_memory", lambda: 16 * GiB)
    started = time.perf_counter()
    result = cli("train", "--arch", "resnet18", "--data", "fake:4,size=8", "--image-size", "4096", "--batch-size", "2",
                 "--epochs", "1", "--device", "cpu", "-o", tmp_path / "m.safetensors", "-q")
    line = _one_error(result)
    assert "training on one 3×4096×4096 image needs about" in line and "16.0 GiB of RAM available" in line, line
    assert time.perf_counter() - started < 60
    assert not (tmp_path / "m.safetensors").exists()


def test_training_refuses_weights_sized_by_the_image(cli, monkeypatch, tmp_path):
    """LeNet's first fc layer grows with the image: 4096 px is ~8 GiB of weights, refused before they exist."""
    monkeypatch.setattr(runtime, "available_memory", lambda: 4 * GiB)
    result = cli("train", "--arch", "lenet", "--data", "fake:8,size=8", "--image-size", "4096", "--epochs", "1",
                 "--device", "cpu", "-o", tmp_path / "m.safetensors", "-q")
    line = _one_error(result)
    assert "needs about" in line and ("the weights" in line or "images at" in line), line


def test_a_tsne_sample_that_cannot_be_held_is_refused(cli, monkeypatch):
    monkeypatch.setattr(runtime, "available_memory", lambda: 50_000)  # 359 test digits as float32 rows: 92 KB
    line = _one_error(cli("tsne", "--data", "digits", "-n", "500", "-q"))
    assert "a t-SNE sample of 359 1×8×8 images needs about" in line, line  # the test split holds 359


def test_threads_range_is_checked_once_with_the_range_in_the_message(cli):
    result = cli("eval", "x.safetensors", "--threads", "0")
    assert result.exit_code == 2 and "--threads" in result.stderr and "from 1 to 4096" in result.stderr, result.stderr
