"""cnntools export: ONNX (checked with onnxruntime), torch.export .pt2, weights-only safetensors."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from cnntools.checkpoint import load_model, read_checkpoint
from cnntools.data import load_for_model
from interpret_fixtures import train_checkpoint

DATA = "fake:24,size=32,channels=1,classes=3"


@pytest.fixture(scope="module")
def lenet(tmp_path_factory, one_torch_thread):
    path = tmp_path_factory.mktemp("export") / "lenet.safetensors"
    return str(train_checkpoint(path, "digits", "lenet", 32, 1, steps=20))


def _digits_inputs(lm, n=10):
    imageset = load_for_model(lm.meta.data, "test", lm.preprocessing, lm.classes)
    return lm.preprocessing(imageset.images[:n]).float()


def test_onnx_matches_pytorch_with_dynamic_batch(cli, lenet, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the onnx extra: pip install 'cnntools[onnx]'")
    onnx = pytest.importorskip("onnx", reason="pip install 'cnntools[onnx]'")
    out = tmp_path / "lenet.onnx"
    result = cli("export", lenet, "-o", out, "--format", "json", "-n", "32")
    assert result.exit_code == 0, result.stderr
    doc = result.json()
    assert doc["schema"] == "cnntools.export/1" and doc["format"] == "onnx"
    check = doc["check"]
    assert check["images"] == 32 and check["data"] == "digits test" and check["runtime"] == "onnxruntime"
    assert check["max_abs_diff"] < 1e-4 and check["top1_agreement"] == 1.0

    lm = load_model(lenet)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] not in (1, 2)  # a named, dynamic batch axis
    for n in (1, 7):  # batch sizes other than the traced one
        x = _digits_inputs(lm, n)
        with torch.no_grad():
            expected = lm.model(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == expected.shape
        assert abs(got - expected).max() <= 1e-4
        assert (got.argmax(1) == expected.argmax(1)).all()

    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["classes"]) == lm.classes and props["arch"] == "lenet"
    pre = json.loads(props["preprocessing"])
    assert pre["mean"] == pytest.approx(lm.preprocessing.mean) and pre["std"] == pytest.approx(lm.preprocessing.std) and pre["image_size"] == 32


def test_pt2_round_trip(cli, lenet, tmp_path):
    out = tmp_path / "lenet.pt2"
    result = cli("export", lenet, "-o", out, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["check"]["max_abs_diff"] < 1e-5
    program = torch.export.load(str(out))
    lm = load_model(lenet)
    x = _digits_inputs(lm, 5)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), lm.model(x), rtol=1e-5, atol=1e-5)
    with zipfile.ZipFile(out) as archive:
        card = [n for n in archive.namelist() if n.endswith("cnntools.json")]
        assert card and json.loads(archive.read(card[0]))["arch"] == "lenet"


def test_weights_only_safetensors(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trained = cli("train", "--arch", "lenet", "--data", DATA, "--epochs", "1", "--batch-size", "8", "-q",
                  "--device", "cpu", "-o", "full.safetensors")
    assert trained.exit_code == 0, trained.stderr
    result = cli("export", "full.safetensors", "-o", "small.safetensors", "--format", "json")
    assert result.exit_code == 0, result.stderr
    full_tensors, full_meta = read_checkpoint("full.safetensors")
    tensors, meta = read_checkpoint("small.safetensors")
    full_meta, meta = full_meta.to_json(), meta.to_json()  # as the files store them
    assert "resume" in full_meta and any(k.startswith("_resume/") for k in full_tensors)
    assert "resume" not in meta and not any(k.startswith("_resume/") for k in tensors)
    assert {k: v for k, v in full_meta.items() if k != "resume"} == meta
    for key, value in tensors.items():
        assert torch.equal(value, full_tensors[key])
    doc = result.json()
    assert doc["bytes"] == (tmp_path / "small.safetensors").stat().st_size < doc["source_bytes"]
    evaluated = cli("eval", "small.safetensors", "--format", "json")
    assert evaluated.exit_code == 0, evaluated.stderr
    resumed = cli("train", "--resume", "small.safetensors", "--epochs", "2")
    assert resumed.exit_code == 1 and "no resume state" in resumed.stderr


def test_export_refuses_unknown_suffix(cli, lenet, tmp_path):
    bad = cli("export", lenet, "-o", tmp_path / "model.h5")
    assert bad.exit_code == 2 and ".onnx, .pt2 or .safetensors" in bad.stderr


def test_failed_check_writes_nothing(cli, lenet, tmp_path, monkeypatch):
    from cnntools.checkpoint import export

    monkeypatch.setattr(export, "pt2_logits", lambda path, inputs: torch.zeros(len(inputs), 10))
    out = tmp_path / "bad.pt2"
    result = cli("export", lenet, "-o", out)
    assert result.exit_code == 1 and "disagrees with PyTorch" in result.stderr and "top-1 agreement" in result.stderr
    assert not out.exists() and not list(tmp_path.iterdir())
