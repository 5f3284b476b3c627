"""featmaps: hooks record exactly the layer outputs, leave nothing behind, survive in-place ReLU;
layer shapes match the real forward pass; the command's JSON, figure and safetensors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from cnntools.cli.app import app
from cnntools.inference.batches import capture_activations, forward_batches
from cnntools.interpret import activations as act
from cnntools.models.counting import model_totals
from cnntools.inference.preprocessing import Preprocessing

sys.path.insert(0, str(Path(__file__).parent))
runner = CliRunner()


def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU()),
        nn.Flatten(), nn.Linear(6 * 7 * 7, 5),
    ).eval()


def n_hooks(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_captured_outputs_equal_a_manual_forward_and_hooks_are_removed():
    model = net()
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    prep = Preprocessing((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), 16, 3)
    x = prep(images)
    (batch,) = forward_batches(model, images, prep, layers=["0", "3.0", "3.2", "5"])
    got_out, got = batch.logits, batch.activations
    with torch.no_grad():
        conv0 = model[0](x)
        expected0 = conv0.clone()
        h = model[2](torch.relu(conv0))
        c30 = model[3][0](h)
        out = model(x)
    torch.testing.assert_close(got["0"], expected0)  # not clobbered by the in-place ReLU after it
    assert (got["0"] < 0).any()
    torch.testing.assert_close(got["3.0"], c30)
    torch.testing.assert_close(got["3.2"], torch.relu(model[3][1](c30)))
    torch.testing.assert_close(got["5"], out)
    torch.testing.assert_close(got_out, out)
    assert n_hooks(model) == 0


def test_hooks_are_removed_when_the_block_fails():
    model = net()
    with pytest.raises(RuntimeError):
        with capture_activations(model, ["0", "5"]):
            assert n_hooks(model) == 2
            model(torch.randn(1, 2, 16, 16))  # wrong channel count
    assert n_hooks(model) == 0


def test_layer_table_shapes_match_the_forward_pass():
    model = net()
    rows = {r["layer"]: r for r in act.layer_table(model, torch.zeros(1, 3, 16, 16))}
    assert rows["0"]["output_shape"] == [1, 4, 14, 14]
    assert rows["2"]["output_shape"] == [1, 4, 7, 7]
    assert rows["3.2"]["output_shape"] == [1, 6, 7, 7]
    assert rows["5"]["output_shape"] == [1, 5]
    assert rows["0"]["params"] == 4 * 3 * 9 + 4
    assert act.activation_layer_names(model) == ["1", "3.2"]
    assert act.last_conv_name(model) == "3.0"
    assert n_hooks(model) == 0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from interpret_fixtures import cached_checkpoint

    return cached_checkpoint("patch")


def test_cli_list_layers_json_figure_and_saved_tensors(checkpoint, tmp_path):
    from safetensors.torch import load_file

    result = runner.invoke(app, ["featmaps", str(checkpoint), "--list-layers", "--format", "json"], prog_name="cnntools")
    assert result.exit_code == 0, result.output
    layers = {r["layer"]: r for r in json.loads(result.stdout)["layers"]}
    assert layers["features.0"]["output_shape"] == [32, 32, 32] and layers["features.6"]["output_shape"] == [128, 8, 8]

    png, saved = tmp_path / "fm.png", tmp_path / "acts.safetensors"
    result = runner.invoke(
        app,
        ["featmaps", str(checkpoint), "-i", "2", "-l", "features.1", "-l", "features.7", "--max-channels", "6",
         "-o", str(png), "--save", str(saved), "--format", "json", "--device", "cpu", "--precision", "fp32"],
        prog_name="cnntools",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [e["layer"] for e in doc["layers"]] == ["features.1", "features.7"]
    assert doc["layers"][0]["shape"] == [32, 32, 32] and doc["layers"][0]["min"] >= 0.0
    assert len(doc["layers"][1]["channels"]) == 6 and doc["layers"][1]["chosen"] == "most active"
    assert png.stat().st_size > 10_000
    tensors = load_file(str(saved))
    assert tensors["features.7"].shape == (128, 8, 8)
    # The saved activations are what the model computes for that input.
    from cnntools.checkpoint import load_model

    lm = load_model(str(checkpoint), "cpu")
    with torch.no_grad():
        expected = torch.relu(lm.model.features[:7](tensors["__input__"][None]))[0]
    torch.testing.assert_close(tensors["features.7"], expected, atol=1e-5, rtol=1e-5)
    assert n_hooks(lm.model) == 0
    means = tensors["features.7"].flatten(1).mean(1)
    assert doc["layers"][1]["channels"] == means.argsort(descending=True)[:6].tolist()

    result = runner.invoke(app, ["featmaps", str(checkpoint), "-l", "nope"], prog_name="cnntools")
    assert result.exit_code == 1 and "no layer named 'nope'" in result.stderr


def _hand_macs(module: nn.Module, out_shape: list[int]) -> int:
    """torchinfo's count: conv = Cout·Hout·Wout · Cin/groups · kh·kw; linear = in · out (no bias)."""
    if isinstance(module, nn.Conv2d):
        cout, hout, wout = out_shape
        kh, kw = module.kernel_size
        return cout * hout * wout * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0


def test_macs_per_layer_and_totals_match_hand_counts():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4, bias=False), nn.ReLU(),
        nn.Conv2d(8, 6, (1, 3)), nn.Flatten(), nn.Linear(6 * 8 * 6, 7),
    ).eval()
    model[0].weight.requires_grad_(False)  # frozen: counted in parameters, not in trainable
    rows = act.layer_rows(model, 4, 16)
    leaves = dict(model.named_children())
    expected = {r["layer"]: _hand_macs(leaves[r["layer"]], r["output_shape"]) for r in rows}
    assert {r["layer"]: r["macs"] for r in rows} == expected
    assert expected["0"] == 8 * 8 * 8 * 4 * 9 and expected["2"] == 8 * 8 * 8 * 2 * 9 and expected["6"] == 288 * 7
    totals = model_totals(model, 4, 16)
    assert totals == {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters()) - model[0].weight.numel(),
        "macs": sum(expected.values()),
    }


def test_cli_list_layers_shows_macs_and_totals(tmp_path):
    from cnntools.checkpoint import save_checkpoint
    from cnntools.models import create_model
    from test_checkpoint import _meta

    model = create_model("lenet", 3, 32, 10).eval()
    path = tmp_path / "lenet.safetensors"
    save_checkpoint(str(path), model, _meta())
    result = runner.invoke(app, ["featmaps", str(path), "--list-layers", "--format", "json", "--device", "cpu"], prog_name="cnntools")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    modules = dict(model.named_modules())
    for row in doc["layers"]:
        if isinstance(modules[row["layer"]], (nn.Conv2d, nn.Linear)):
            assert row["macs"] == _hand_macs(modules[row["layer"]], row["output_shape"]), row
    # LeNet at 3x32x32: conv1 6·28·28·3·25, conv2 16·10·10·6·25, fc 400·120 + 120·84 + 84·10.
    macs = 6 * 28 * 28 * 75 + 16 * 10 * 10 * 150 + 400 * 120 + 120 * 84 + 84 * 10
    assert doc["totals"] == {"parameters": 62006, "trainable": 62006, "macs": macs}
    table = runner.invoke(app, ["featmaps", str(path), "--list-layers", "--device", "cpu"], prog_name="cnntools",
                          env={"NO_COLOR": "1"}).stdout
    assert "62,006 parameters (62,006 trainable)" in table and f"{macs:,} multiply-adds" in table
    assert table.splitlines()[-1].split() == ["total", "62006", str(macs)]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "efficientnet_b0"])
def test_totals_match_torchvisions_published_operation_counts(name):
    """torchvision's weights metadata publishes each model's multiply-adds (`_ops`, in billions,
    3 decimals) and parameters: residual paths, depthwise convs and squeeze-excitation included."""
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    model = torchvision.models.get_model(name, weights=None).eval()
    totals = model_totals(model, 3, 224)
    assert round(totals["macs"] / 1e9, 3) == weights.meta["_ops"]
    assert totals["parameters"] == totals["trainable"] == weights.meta["num_params"]


def test_feature_maps_is_the_library_face_of_the_command():
    from types import SimpleNamespace

    model = net()
    prep = Preprocessing((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), 16, 3)
    lm = SimpleNamespace(model=model, preprocessing=prep, meta=SimpleNamespace(arch_name="net"), source="net")
    raw = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    got = act.feature_maps(lm, raw, max_channels=3, precision="fp32")
    x = prep(raw)
    with torch.no_grad():
        first = model[1](model[0](x).clone())
        second = model[3](model[2](first))
        probs = torch.softmax(model(x), 1)[0]
    # Default layers: each conv's activation (the ReLU after it, past the BatchNorm).
    assert [e["layer"] for e in got["layers"]] == ["1", "3.2"]
    torch.testing.assert_close(got["activations"]["1"], first[0])
    torch.testing.assert_close(got["activations"]["3.2"], second[0])
    torch.testing.assert_close(got["probs"], probs)
    assert got["pred"] == int(probs.argmax())
    entry = got["layers"][1]
    assert entry["channels"] == second[0].flatten(1).mean(1).argsort(descending=True)[:3].tolist()
    assert entry["max"] == pytest.approx(second.max().item()) and entry["chosen"] == "most active"
    given = act.feature_maps(lm, raw, ["0", "5"], channels=[2, 0], precision="fp32")
    assert given["layers"][0]["channels"] == [2, 0] and "channels" not in given["layers"][1]
    with pytest.raises(Exception, match="--channels 9"):
        act.feature_maps(lm, raw, ["0"], channels=[9], precision="fp32")
