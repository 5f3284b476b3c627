"""Your own model: --arch FILE.py:NAME / package.module:NAME, --arch-args, and checkpoints that
refer to code only run it with --trust-code."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cnntools.checkpoint import load_model, read_checkpoint
from cnntools.models import user_code
from cnntools.core.errors import CnnError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mynet.py"
DATA = "fake:48,size=16,channels=1,classes=3"
TRAIN = ("--data", DATA, "--epochs", "1", "--batch-size", "16", "--val-split", "0", "-q", "--device", "cpu")

NETS = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c_in, c_out):
            super().__init__()
            self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
            self.act = nn.ReLU()
        def forward(self, x):
            return self.act(self.conv(x))

    class Nested(nn.Module):
        # nested containers and a functional pooling call: names like stages.1.conv
        def __init__(self, in_channels, num_classes, widths=(4, 8)):
            super().__init__()
            chans = [in_channels, *widths]
            self.stages = nn.ModuleList(Block(a, b) for a, b in zip(chans, chans[1:]))
            self.head = nn.Linear(chans[-1], num_classes)
        def forward(self, x):
            for stage in self.stages:
                x = torch.nn.functional.max_pool2d(stage(x), 2)
            return self.head(x.mean((2, 3)))

    def make(num_classes, image_size, in_channels=1, hidden=16):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, hidden), nn.ReLU(),
                             nn.Linear(hidden, num_classes))

    def not_a_model(num_classes):
        return [num_classes]
    """
)


@pytest.fixture
def nets(tmp_path, monkeypatch):
    """A folder with nets.py (file references) that is also importable as module `nets_mod`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets.py").write_text(NETS)
    (tmp_path / "nets_mod.py").write_text(NETS)
    yield tmp_path
    sys.modules.pop("nets_mod", None)


def _train(cli, arch, out, *extra):
    result = cli("train", "--arch", arch, *TRAIN, "-o", out, *extra)
    assert result.exit_code == 0, result.stderr
    return out


# ---------------------------------------------------------------------------- parsing


def test_code_reference_recognised():
    assert user_code.is_code_reference("mynet.py:MyNet")
    assert user_code.is_code_reference("models/net.py:make")
    assert user_code.is_code_reference("pkg.nets:Net")
    for spec in ("lenet", "timm:resnet18", "torchvision:resnet18", "a.py:", "pkg nets:Net", "x:1bad"):
        assert not user_code.is_code_reference(spec), spec


def test_arch_args_json_and_key_value():
    assert user_code.parse_arch_args('{"width": 8, "sizes": [1, 2]}') == {"width": 8, "sizes": [1, 2]}
    assert user_code.parse_arch_args("width=8,dropout=0.5,name=abc,sizes=[1,2],flag=true") == {
        "width": 8, "dropout": 0.5, "name": "abc", "sizes": [1, 2], "flag": True}
    with pytest.raises(CnnError, match="KEY=VALUE"):
        user_code.parse_arch_args("width")
    with pytest.raises(CnnError, match="JSON"):
        user_code.parse_arch_args("{width: 1}")


# ---------------------------------------------------------------------------- training and loading


def test_file_reference_class_with_args_round_trips(cli, nets):
    out = _train(cli, "nets.py:Nested", "m.safetensors", "--arch-args", '{"widths": [3, 5]}')
    tensors, record = read_checkpoint(out)
    assert record.arch_name == "nets.py:Nested" and record.arch_args == {"widths": [3, 5]}
    meta = record.to_json()  # as the file stores it
    assert meta["arch_args"] == {"widths": [3, 5]}
    code = record.code
    assert meta["code"] == code
    assert code["kind"] == "file" and code["path_given"] == "nets.py"
    assert code["path"] == str((nets / "nets.py").resolve())
    assert code["sha256"] == __import__("hashlib").sha256((nets / "nets.py").read_bytes()).hexdigest()
    assert code["args"] == {"widths": [3, 5]}
    assert tensors["stages.1.conv.weight"].shape == (5, 3, 3, 3)  # the constructor arguments were used
    assert not any(isinstance(v, bytes) for v in meta.values())

    lm = load_model(out, trust_code=True)
    x = torch.rand(4, 1, 16, 16)
    namespace: dict = {}
    exec(NETS, namespace)  # the same class, built independently, with the stored weights
    ref = namespace["Nested"](1, 3, widths=(3, 5)).eval()
    ref.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("_resume/")})
    with torch.no_grad():
        torch.testing.assert_close(lm.model(x), ref(x), rtol=0, atol=0)


def test_factory_function_gets_size_arguments(cli, nets):
    out = _train(cli, "nets.py:make", "f.safetensors", "--arch-args", "hidden=7")
    tensors, meta = read_checkpoint(out)
    assert tensors["1.weight"].shape == (7, 16 * 16)  # image_size and in_channels from the data
    assert tensors["3.weight"].shape == (3, 7)  # num_classes from the data
    result = cli("eval", out, "--trust-code", "--data", DATA, "--format", "json", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert result.json()["models"][0]["arch"] == "nets.py:make"


def test_module_reference(cli, nets):
    out = _train(cli, "nets_mod:Nested", "mod.safetensors")
    meta = read_checkpoint(out)[1].to_json()
    assert meta["code"]["kind"] == "module" and meta["code"]["module"] == "nets_mod"
    assert meta["code"]["path"] == str((nets / "nets_mod.py").resolve())
    refused = cli("eval", out, "--data", DATA, "--device", "cpu")
    assert refused.exit_code == 1 and "module nets_mod" in refused.stderr and "--trust-code" in refused.stderr
    ok = cli("eval", out, "--data", DATA, "--device", "cpu", env={"CNNTOOLS_TRUST_CODE": "1"})
    assert ok.exit_code == 0, ok.stderr


def test_refused_without_trust_code(cli, nets):
    out = _train(cli, "nets.py:Nested", "m.safetensors")
    (nets / "ran.txt").unlink(missing_ok=True)
    # A file that records being run: loading without --trust-code must not run it.
    (nets / "nets.py").write_text(NETS + "\nopen('ran.txt', 'w').write('ran')\n")
    for command in (("eval", out), ("featmaps", out, "--list-layers"), ("filters", out), ("confusion", out),
                    ("saliency", out, "-o", "s.png"), ("tsne", "--checkpoint", out, "-o", "t.png"),
                    ("export", out, "-o", "m.onnx"), ("train", "--resume", out, "--epochs", "2")):
        result = cli(*command)
        assert result.exit_code == 1, (command, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "--trust-code" in lines[0], (command, lines)
        assert "nets.py" in lines[0]
    assert not (nets / "ran.txt").exists()


def test_changed_source_refused_then_warned(cli, nets):
    out = _train(cli, "nets.py:Nested", "m.safetensors")
    (nets / "nets.py").write_text(NETS + "\n# edited after training\n")
    refused = cli("eval", out, "--data", DATA, "--device", "cpu")
    assert refused.exit_code == 1 and "changed since training" in refused.stderr and "--trust-code" in refused.stderr
    trusted = cli("eval", out, "--data", DATA, "--device", "cpu", "--trust-code")
    assert trusted.exit_code == 0, trusted.stderr
    assert "changed since the model was trained" in trusted.stderr


def test_moved_checkpoint_finds_code_beside_it(cli, nets, tmp_path_factory):
    out = _train(cli, "nets.py:Nested", "m.safetensors")
    elsewhere = tmp_path_factory.mktemp("moved")
    shutil.copy(out, elsewhere / "m.safetensors")
    shutil.copy(nets / "nets.py", elsewhere / "nets.py")
    (nets / "nets.py").unlink()
    lm = load_model(str(elsewhere / "m.safetensors"), trust_code=True)
    assert lm.model(torch.rand(1, 1, 16, 16)).shape == (1, 3)
    (elsewhere / "nets.py").unlink()
    with pytest.raises(CnnError, match="not there"):
        load_model(str(elsewhere / "m.safetensors"), trust_code=True)


def test_metadata_cannot_name_code_without_a_record(cli, nets):
    """An arch that is a code reference with no code record is refused even with trust."""
    from safetensors.torch import load_file, save_file

    out = _train(cli, "nets.py:Nested", "m.safetensors")
    meta = read_checkpoint(out)[1].to_json()
    raw = {k: json.dumps(v) for k, v in meta.items() if k != "code"}
    save_file(load_file(out), "forged.safetensors", metadata=raw)
    with pytest.raises(CnnError, match="no matching code record"):
        load_model("forged.safetensors", trust_code=True)


def test_resume_needs_trust(cli, nets):
    out = _train(cli, "nets.py:Nested", "r.safetensors")
    refused = cli("train", "--resume", out, "--epochs", "2", "-q")
    assert refused.exit_code == 1 and "--trust-code" in refused.stderr
    resumed = cli("train", "--resume", out, "--epochs", "2", "-q", "--trust-code")
    assert resumed.exit_code == 0, resumed.stderr
    assert read_checkpoint(out)[1].metrics["epochs_completed"] == 2


def test_clear_errors(cli, nets):
    cases = {
        ("nets.py:Missing",): "has no Missing; it defines Block, Nested, make, not_a_model",
        ("nets.py:not_a_model",): "not a torch.nn.Module",
        ("nope.py:Net",): "no file",
        ("no_such_module_xyz:Net",): "no module named no_such_module_xyz",
        ("nets.py:Nested", "--arch-args", "bogus=1"): "--arch-args",
        ("nets.py:make", "--image-size", "16", "--arch-args", "image_size=10"): "cannot run on 1x16x16",
        ("lenet", "--arch-args", "width=3"): "takes none",
    }
    for args, message in cases.items():
        result = cli("train", "--arch", *args, *TRAIN, "-o", "x.safetensors")
        usage = args == ("lenet", "--arch-args", "width=3")  # an option the architecture does not take: 2
        assert result.exit_code == (2 if usage else 1), (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert not (nets / "x.safetensors").exists()


def test_example_model_layers_and_cam(cli, nets):
    """The README's example: layer listing, default Grad-CAM layer, filters on a user model."""
    out = _train(cli, f"{EXAMPLE}:MyNet", "ex.safetensors", "--arch-args", "width=4")
    layers = cli("featmaps", out, "--list-layers", "--format", "json", "--trust-code", "--data", DATA)
    assert layers.exit_code == 0, layers.stderr
    names = [row["layer"] for row in layers.json()["layers"]]
    assert "features.0" in names and "classifier" in names
    sal = cli("saliency", out, "--trust-code", "--data", DATA, "-o", "cam.png", "--format", "json")
    assert sal.exit_code == 0, sal.stderr
    assert sal.json()["models"][0]["layer"] == "features.7"  # the ReLU after the last conv (features.6)
    filt = cli("filters", out, "--trust-code", "--data", DATA, "-o", "f.png")
    assert filt.exit_code == 0, filt.stderr


def test_model_without_conv_gets_layer_hint(cli, nets):
    out = _train(cli, f"{EXAMPLE}:tiny_mlp", "mlp.safetensors")
    result = cli("saliency", out, "--trust-code", "--data", DATA, "-o", "cam.png")
    assert result.exit_code == 1 and "--layer" in result.stderr and "no Conv2d" in result.stderr
    linear = cli("saliency", out, "--trust-code", "--data", DATA, "-o", "cam.png", "--layer", "1")
    assert linear.exit_code == 1 and "--method gradient" in linear.stderr.strip().splitlines()[-1]
    ok = cli("saliency", out, "--trust-code", "--data", DATA, "-o", "grad.png", "--method", "gradient")
    assert ok.exit_code == 0, ok.stderr
    acts = cli("featmaps", out, "--trust-code", "--data", DATA, "-l", "2", "--format", "json")
    assert acts.exit_code == 0, acts.stderr


def test_rf_calc_reads_user_model(cli, nets):
    result = cli("rf-calc", "--arch", f"{EXAMPLE}:MyNet", "--arch-args", "width=4", "--input-size", "16",
                 "--in-channels", "1", "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = result.json()
    # conv3 → pool2 → conv3 → pool2 → conv3: 3, 4, 8, 10, 18, then forward()'s functional mean is global
    assert [r["receptive_field"] for r in doc["layers"]] == [3, 4, 8, 10, 18, "global"]
    assert doc["layers"][-1]["type"] == "globalpool"
    # the answer is the field of the last feature map, the classifier head's input
    assert (doc["feature_map"], doc["receptive_field"]) == ("features.7", 18)
