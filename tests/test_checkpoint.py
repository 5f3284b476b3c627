"""safetensors checkpoints: round trip, metadata, stdin/stdout, refusing anything else; torchvision:NAME."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from cnntools.checkpoint import (
    CheckpointMeta,
    DataRecipe,
    FORMAT,
    checkpoint_bytes,
    load_model,
    pack,
    read_checkpoint,
    resume_state,
    save_checkpoint,
    unpack,
)
from cnntools.cli.app import app
from cnntools.inference.preprocessing import Preprocessing
from cnntools.models import create_model
from cnntools.core.errors import CnnError

CLASSES = [str(i) for i in range(10)]


def _meta(arch="lenet", channels=3, size=32, **extra):
    return CheckpointMeta(
        arch={"arch": arch, "in_channels": channels, "image_size": size, "num_classes": 10, **extra},
        classes=CLASSES,
        mean=[0.5] * channels,
        std=[0.25] * channels,
        data=DataRecipe("digits", None, 0.0, 0),
        train_config={"seed": 3, "lr": 0.1},
        metrics={"val_acc": 0.5},
        history=[{"epoch": 1, "train_loss": 1.0}],
    )


def _invoke(args, input=None):
    runner = CliRunner(env={"NO_COLOR": "1", "CNNTOOLS_DEBUG": ""})
    return runner.invoke(app, args, input=input, prog_name="cnntools")


def test_round_trip_rebuilds_the_model_from_the_file_alone(tmp_path):
    torch.manual_seed(0)
    model = create_model("lenet", 3, 32, 10, batchnorm=True, output_activation="tanh").eval()
    path = tmp_path / "m.safetensors"
    save_checkpoint(str(path), model, _meta(batchnorm=True, output_activation="tanh"))
    lm = load_model(str(path))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(lm.model(x), model(x))
    assert not lm.model.training
    assert lm.classes == CLASSES and lm.preprocessing == Preprocessing((0.5,) * 3, (0.25,) * 3, 32, 3)
    assert lm.meta.arch_name == "lenet" and lm.source == str(path)
    assert lm.meta.data.spec == "digits" and lm.meta.train_config["seed"] == 3
    assert lm.meta.history == [{"epoch": 1, "train_loss": 1.0}]
    # The metadata is plain safetensors string metadata holding JSON.
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        raw = handle.metadata()
    assert json.loads(raw["format"]) == FORMAT and json.loads(raw["arch"])["output_activation"] == "tanh"
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left no temporary file


def test_prepare_resizes_converts_and_normalises():
    model = create_model("simple-cnn", 3, 16, 10)
    from cnntools.checkpoint import LoadedModel

    lm = LoadedModel.from_meta(model, _meta("simple-cnn", size=16), "m")
    images = torch.full((2, 1, 8, 8), 255, dtype=torch.uint8)
    x = lm.preprocessing(images)
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32
    assert torch.allclose(x, torch.full_like(x, (1.0 - 0.5) / 0.25))


def test_prefixes_of_ddp_and_compile_are_stripped(tmp_path):
    class Wrapper(nn.Module):  # how DistributedDataParallel and torch.compile name things
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    inner = create_model("lenet", 3, 32, 10)
    wrapped = nn.Module()
    wrapped.module = Wrapper(inner)
    assert all(k.startswith("module._orig_mod.") for k in wrapped.state_dict())
    path = tmp_path / "w.safetensors"
    save_checkpoint(str(path), wrapped, _meta())
    tensors, _ = read_checkpoint(str(path))
    assert set(tensors) == set(inner.state_dict())


def test_stdout_and_stdin(tmp_path, capsysbinary):
    model = create_model("lenet", 3, 32, 10)
    save_checkpoint("-", model, _meta())
    data = capsysbinary.readouterr().out
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(data)
    tensors, meta = read_checkpoint(str(copy))
    assert all(torch.equal(tensors[k], v) for k, v in model.state_dict().items())
    assert meta.classes == CLASSES
    result = _invoke(["eval", "-", "--data", "fake:40", "--split", "train", "--format", "json", "-q"], input=data)
    assert result.exit_code == 0, result.stderr
    assert result.stdout and json.loads(result.stdout)["models"][0]["images"] == 40


def test_pack_unpack_keeps_optimizer_state_exactly():
    model = create_model("lenet", 3, 32, 10)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    tensors: dict = {}
    packed = json.loads(json.dumps(pack({"optimizer": opt.state_dict(), "x": (1, 2.5, None)}, "_resume", tensors)))
    restored = unpack(packed, tensors)
    fresh = torch.optim.Adam(model.parameters(), lr=0.01)
    fresh.load_state_dict(restored["optimizer"])
    for a, b in zip(opt.state_dict()["state"].values(), fresh.state_dict()["state"].values()):
        for key in a:
            assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key]))
    assert restored["x"] == [1, 2.5, None]


def test_resume_state_is_stored_beside_the_weights(tmp_path):
    model = create_model("lenet", 3, 32, 10)
    path = tmp_path / "r.safetensors"
    save_checkpoint(str(path), model, _meta(), resume={"epoch": 2, "rng": torch.get_rng_state()})
    tensors, meta = read_checkpoint(str(path))
    assert any(k.startswith("_resume/") for k in tensors)
    state = resume_state(tensors, meta)
    assert state["epoch"] == 2 and torch.equal(state["rng"], torch.get_rng_state())
    lm = load_model(str(path))  # the resume tensors do not disturb loading
    assert lm.meta.arch_name == "lenet"
    plain = tmp_path / "p.safetensors"
    save_checkpoint(str(plain), model, _meta())
    with pytest.raises(CnnError, match="no resume state"):
        resume_state(*read_checkpoint(str(plain)))


def _one_error_line(result):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_pickles_are_refused_without_unpickling(tmp_path):
    model = create_model("lenet", 3, 32, 10)
    pth = tmp_path / "model.pth"
    torch.save(model.state_dict(), pth)
    line = _one_error_line(_invoke(["eval", str(pth)]))
    assert "pickle" in line and "never unpickles" in line
    # A plain pickle whose loading would run code: refused by its magic bytes, never executed.
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps(Evil(), protocol=2))
    line = _one_error_line(_invoke(["eval", str(legacy)]))
    assert "pickle" in line and not marker.exists()


def test_truncated_foreign_and_missing_files(tmp_path):
    model = create_model("lenet", 3, 32, 10)
    good = checkpoint_bytes(model, _meta())
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good[: len(good) // 2])
    assert "truncated" in _one_error_line(_invoke(["eval", str(cut)]))
    cut.write_bytes(good[:20])
    assert "truncated" in _one_error_line(_invoke(["eval", str(cut)]))
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, this is not a checkpoint\n")
    assert "not a safetensors checkpoint" in _one_error_line(_invoke(["eval", str(text)]))
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    assert "not a cnntools checkpoint" in _one_error_line(_invoke(["eval", str(foreign)]))
    assert "no such file" in _one_error_line(_invoke(["eval", str(tmp_path / "missing.safetensors")]))


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    model = create_model("lenet", 3, 32, 10)
    meta = _meta()
    meta.arch["arch"] = "simple-cnn"
    path = tmp_path / "wrong.safetensors"
    save_checkpoint(str(path), model, meta)
    assert "do not match architecture simple-cnn" in _one_error_line(_invoke(["eval", str(path)]))


def test_torchvision_model_needs_cached_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CnnError) as error:
        load_model("torchvision:resnet18")
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in str(error.value)
    line = _one_error_line(_invoke(["eval", "torchvision:vgg16", "--image", "x.png"]))
    assert "vgg16-397923af.pth" in line and str(tmp_path) in line
    with pytest.raises(CnnError, match="torchvision has no model"):
        load_model("torchvision:not_a_model")


def test_torchvision_model_from_the_hub_cache(tmp_path, monkeypatch):
    """torchvision:NAME reads the hub cache file, with torchvision's preprocessing and names."""
    from torchvision.models import get_model

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    reference = get_model("resnet18").eval()
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(reference.state_dict(), folder / "resnet18-f37072fd.pth")
    lm = load_model("torchvision:resnet18")
    assert len(lm.classes) == 1000 and lm.classes[0] == "tench"
    assert lm.preprocessing == Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224, 3, resize=256)
    assert lm.label == lm.source == "torchvision:resnet18"
    images = torch.randint(0, 256, (2, 3, 300, 400), dtype=torch.uint8)
    x = lm.preprocessing(images)
    assert x.shape == (2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(lm.model(x), reference(x))
    # And the command-line path: top-k classes of an image file.
    from PIL import Image

    picture = tmp_path / "cat.png"
    Image.fromarray(images[0].permute(1, 2, 0).numpy()).save(picture)
    result = _invoke(["eval", "torchvision:resnet18", "--image", str(picture), "--top-k", "3", "--format", "json", "-q"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["predictions"]
    assert [r["rank"] for r in rows] == [1, 2, 3]
    with torch.no_grad():
        expected = torch.softmax(reference(lm.preprocessing(images[:1])), 1)[0].topk(3)
    assert [r["index"] for r in rows] == expected.indices.tolist()
    assert rows[0]["class"] == lm.classes[expected.indices[0]]


def test_metadata_record_round_trips_through_the_header():
    meta = _meta(batchnorm=True)
    meta.extra["written_by"] = "a newer cnntools"  # unknown keys survive a read and rewrite
    again = CheckpointMeta.from_header(meta.to_header(), "m")
    assert again == meta
    assert json.loads(meta.to_header()["image_size"]) == 32 and json.loads(meta.to_header()["in_channels"]) == 3


def test_header_alone_gives_the_metadata_without_torch(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "m.safetensors"
    save_checkpoint(str(path), create_model("lenet", 3, 32, 10), _meta())
    code = ("import sys; from cnntools.checkpoint import read_metadata; m = read_metadata(sys.argv[1]); "
            "print(m.arch_name, m.image_size, m.data.spec, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["lenet", "32", "digits", "False"]


@pytest.mark.parametrize("change, words", [
    ({"image_size": 64}, "'image_size' is 64 but the architecture lenet is built for 32"),
    ({"in_channels": 1}, "'in_channels' is 1 but the architecture lenet is built for 3"),
    ({"image_size": "big"}, "'image_size' must be a positive integer"),
    ({"std": [1e-320] * 3}, "'std' must be a list of numbers in [1e-07, 1000]"),
    ({"std": [0.2, 0.2, float("inf")]}, "'std' must be a list of positive numbers"),
    ({"mean": [1e308] * 3}, "'mean' must be a list of numbers in [-1000, 1000]"),
    ({"data": {"spec": "digits", "seed": "x"}}, "'data.seed' must be a whole number in [0, 18446744073709551615] (not \"x\")"),
    ({"data": {"spec": "digits", "seed": -1}}, "'data.seed' must be a whole number"),
    ({"data": {"spec": "digits", "val_split": "a"}}, "'data.val_split' must be a number in [0, 1) (not \"a\")"),
    ({"data": {"spec": "digits", "val_split": 1.5}}, "'data.val_split' must be a number in [0, 1) (not 1.5)"),
    ({"data": {"spec": 7}}, "'data.spec' must be a string or null"),
    ({"data": []}, "'data' must be an object"),
    ({"arch": {"arch": "lenet", "in_channels": 3, "image_size": 4096 * 4 + 1, "num_classes": 10}}, "'arch.image_size' must be"),
    ({"arch": {"arch": "lenet", "in_channels": 3, "image_size": 32, "num_classes": 0}}, "'arch.num_classes' must be"),
    ({"arch": {"arch": "lenet", "in_channels": 3.0, "image_size": 32, "num_classes": 10}}, "'arch.in_channels' must be"),
    ({"arch": {"arch": "lenet", "in_channels": 3, "image_size": 32, "num_classes": 10, "depth": [1]}}, "'arch.depth' must be"),
    ({"classes": ["x" * 2000] * 10}, "'classes' must be a list of class names"),
    ({"history": {"epoch": 1}}, "'history' must be a list of objects"),
])
def test_metadata_validator_names_the_bad_value(change, words):
    doc = _meta().to_json()
    doc.update(change)
    with pytest.raises(CnnError) as error:
        CheckpointMeta.from_json(json.loads(json.dumps(doc)), "m.safetensors")
    assert str(error.value).startswith("m.safetensors: ") and words in str(error.value), str(error.value)


def test_stored_training_options_are_typed():
    from cnntools.training import TrainConfig

    assert TrainConfig.from_dict({"epochs": 3, "lr": 1, "image_size": None}).lr == 1
    for bad, words in (({"epochs": "x"}, "train_config.epochs must be int"), ({"lr": "fast"}, "train_config.lr must be float or null"),
                       ({"batchnorm": 1}, "train_config.batchnorm must be bool"), ({"epochs": True}, "train_config.epochs must be int"),
                       ({"warmup": float("nan")}, "train_config.warmup must be float")):
        with pytest.raises(CnnError, match=words.replace(".", r"\.")):
            TrainConfig.from_dict(bad, "m")
