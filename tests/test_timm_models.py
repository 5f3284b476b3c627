"""timm:NAME: trained from scratch for a step and inspected; pretrained weights only from the
local cache, with timm's own preprocessing."""

from __future__ import annotations

import builtins

import pytest
import torch

timm = pytest.importorskip("timm", reason="timm is an optional extra: pip install 'cnntools[timm]' (CI installs it)")

from cnntools.checkpoint import load_model, read_checkpoint  # noqa: E402
from cnntools.output.emitter import CnnError  # noqa: E402

DATA = "fake:40,size=16,channels=1,classes=3"
NAME = "test_resnet"  # timm's own 0.4 M-parameter test model


def _fake_hf_cache(root, name=NAME):
    """A Hugging Face cache holding `name`'s weights (random, made here: no network)."""
    from safetensors.torch import save_file
    from timm.models import get_pretrained_cfg

    repo = get_pretrained_cfg(name).hf_hub_id
    folder = root / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    torch.manual_seed(1)
    state = timm.create_model(name).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    return state


def test_timm_trained_for_a_step_and_inspected(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("train", "--arch", f"timm:{NAME}", "--data", DATA, "--epochs", "1", "--batch-size", "40",
                 "--val-split", "0", "--device", "cpu", "-q", "--arch-args", "drop_rate=0.1", "-o", "t.safetensors")
    assert result.exit_code == 0, result.stderr
    tensors, record = read_checkpoint("t.safetensors")
    assert record.arch_args == {"drop_rate": 0.1} and record.code is None
    meta = record.to_json()  # as the file stores it
    assert meta["arch"]["arch"] == f"timm:{NAME}" and meta["arch_args"] == {"drop_rate": 0.1}
    assert "code" not in meta  # timm is a package, not the user's code: no --trust-code needed
    assert tensors["conv1.0.weight"].shape[1] == 1 and tensors["fc.weight"].shape[0] == 3
    reference = timm.create_model(NAME, num_classes=3, in_chans=1, drop_rate=0.1).eval()
    reference.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("_resume/")})
    lm = load_model("t.safetensors")
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(lm.model(x), reference(x), rtol=0, atol=0)

    cam = cli("saliency", "t.safetensors", "-o", "cam.png", "--format", "json", "-n", "2")
    assert cam.exit_code == 0, cam.stderr
    # timm's BasicBlock registers its shortcut conv last; the forward pass ends in act2.
    assert cam.json()["models"][0]["layer"] == "layer4.0.act2"
    layers = cli("featmaps", "t.safetensors", "--list-layers", "--format", "json")
    assert layers.exit_code == 0 and any(r["layer"] == "fc" for r in layers.json()["layers"])
    evaluated = cli("eval", "t.safetensors", "--format", "json")
    assert evaluated.exit_code == 0, evaluated.stderr


def test_pretrained_from_local_cache_only(cli, tmp_path, monkeypatch):
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_CACHE when it is imported, as a fresh cnntools process does
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    missing = cli("eval", f"timm:{NAME}", "--image", "nothing.png")
    assert missing.exit_code == 1
    assert "not in the local Hugging Face cache" in missing.stderr and "--download" in missing.stderr
    from timm.models import get_pretrained_cfg

    assert f"hf download {get_pretrained_cfg(NAME).hf_hub_id} model.safetensors" in missing.stderr
    assert str(tmp_path / "hub") in missing.stderr
    assert "model.safetensors" in missing.stderr

    state = _fake_hf_cache(tmp_path / "hub")
    lm = load_model(f"timm:{NAME}")
    for key, value in lm.model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    # timm's data config for the model: 160 px crop at crop_pct 0.95, mean/std 0.5, bilinear
    config = timm.data.resolve_data_config({}, model=lm.model)
    pre = lm.preprocessing
    assert pre.size == config["input_size"][-1] == 160 and pre.channels == 3
    assert pre.resize == int(160 / config["crop_pct"])
    assert pre.mean == tuple(config["mean"]) and pre.std == tuple(config["std"])
    assert pre.interpolation == config["interpolation"]
    assert len(lm.classes) == 1000 and lm.classes[0] == "tench"

    # fine-tuning from the cached weights: everything but the new classifier is copied
    monkeypatch.chdir(tmp_path)
    result = cli("train", "--arch", f"timm:{NAME}", "--pretrained", "--data", DATA, "--epochs", "1", "--lr", "1e-9",
                 "--opt", "sgd", "--momentum", "0", "--val-split", "0", "--device", "cpu", "-q", "-o", "ft.safetensors",
                 "--image-size", "32", "--batch-size", "40")
    assert result.exit_code == 0, result.stderr
    tensors, _ = read_checkpoint("ft.safetensors")
    assert torch.allclose(tensors["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"], atol=1e-6)
    assert tensors["fc.weight"].shape == (3, state["fc.weight"].shape[1])
    # the RGB stem adapted to one channel as timm does it (sum over input channels)
    torch.testing.assert_close(tensors["conv1.0.weight"], state["conv1.0.weight"].sum(1, keepdim=True), atol=1e-5, rtol=1e-5)


def test_unknown_timm_model(cli):
    result = cli("train", "--arch", "timm:resnet_does_not_exist", "--epochs", "1")
    assert result.exit_code == 1 and "timm has no model 'resnet_does_not_exist'" in result.stderr


def test_missing_timm_is_one_line(monkeypatch):
    from cnntools.models import timm_models

    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(CnnError, match=r"pip install 'cnntools\[timm\]'"):
        timm_models.require_timm()
