"""filters: batched ranking against a brute-force per-image loop, kernel tiles, receptive-field
boxes against the known sizes, and the command's JSON and figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from cnntools.cli.app import app
from cnntools.inference.batches import forward_batches
from cnntools.inference.preprocessing import Preprocessing
from cnntools.interpret import filters as flt

sys.path.insert(0, str(Path(__file__).parent))
runner = CliRunner()


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(5, 7, 3), nn.ReLU()).eval()


@pytest.mark.parametrize("score", ["mean", "max"])
@pytest.mark.parametrize("layer", ["0", "3"])
def test_batched_ranking_equals_brute_force(score, layer):
    model = net()
    raw = torch.randint(0, 256, (37, 3, 12, 12), dtype=torch.uint8)
    prep = Preprocessing((0.5,) * 3, (0.25,) * 3, 12, 3)
    images = prep(raw)
    filters = [0, 2, 4]
    batches = forward_batches(model, raw, prep, batch_size=8, layers=[layer])
    got = flt.top_activating(layer, (b.activations[layer] for b in batches), filters, k=5, score=score)
    brute = torch.zeros(37, len(filters))
    upto = model[: int(layer) + 1]
    with torch.no_grad():
        for i in range(37):
            a = torch.relu(upto(images[i : i + 1]))[0]
            for j, f in enumerate(filters):
                brute[i, j] = a[f].mean() if score == "mean" else a[f].max()
    torch.testing.assert_close(got["scores"], brute, atol=1e-5, rtol=1e-5)
    for j in range(len(filters)):
        expected = sorted(range(37), key=lambda i: (-brute[i, j].item(), i))[:5]
        assert got["top"][j].tolist() == expected
        # The recorded peak unit is where the filter's map is largest in that image.
        for i, (r, c) in zip(got["top"][j].tolist(), got["argmax"][j].tolist()):
            with torch.no_grad():
                fmap = torch.relu(upto(images[i : i + 1]))[0, filters[j]]
            assert fmap[r, c] == fmap.max()


def test_top_images_and_layer_choice_are_the_library_face_of_the_command():
    from types import SimpleNamespace

    model = net()
    raw = torch.randint(0, 256, (23, 3, 12, 12), dtype=torch.uint8)
    prep = Preprocessing((0.5,) * 3, (0.25,) * 3, 12, 3)
    lm = SimpleNamespace(model=model, preprocessing=prep, meta=SimpleNamespace(arch_name="net"))
    imageset = SimpleNamespace(images=raw, labels=torch.arange(23) % 2, classes=["even", "odd"], paths=None)
    assert flt.pick_conv_layer(model, "first")[0] == "0" and flt.pick_conv_layer(model, "last")[0] == "3"
    with pytest.raises(Exception, match="not a Conv2d"):
        flt.pick_conv_layer(model, "2")
    seen = []
    top, boxes = flt.top_images(lm, imageset, "3", [1, 6], k=4, score="max", crop_rf=True, batch_size=10,
                                precision="fp32", progress=seen.append)
    assert seen == [10, 20, 23]
    with torch.no_grad():
        maps = torch.relu(model(prep(raw)))
    for entry in top:
        scores = maps[:, entry["filter"]].flatten(1).amax(1)
        expected = sorted(range(23), key=lambda i: (-scores[i].item(), i))[:4]
        assert entry["indices"] == expected
        assert entry["labels"] == [["even", "odd"][i % 2] for i in expected]
        torch.testing.assert_close(torch.tensor(entry["scores"]), scores[expected])
    assert boxes.shape == (2, 4, 4) and top[0]["rf_boxes"] == boxes[0].tolist()
    rows = flt.kernel_stats(model[0].weight.detach())
    assert rows[2]["norm"] == pytest.approx(model[0].weight[2].norm().item())


def test_kernel_tiles_rgb_and_grey():
    w = torch.randn(6, 3, 5, 5)
    tiles, rgb = flt.kernel_tiles(w, "shared")
    assert rgb and tiles.shape == (6, 5, 5, 3)
    assert tiles.min() >= 0 and tiles.max() <= 1
    # Shared scale: the largest |weight| reaches 0 or 1, zero maps to 0.5.
    assert torch.isclose(torch.max(tiles.max(), 1 - tiles.min()), torch.tensor(1.0))
    per, _ = flt.kernel_tiles(w, "per-filter")
    for f in range(6):
        assert torch.isclose(torch.max(per[f].max(), 1 - per[f].min()), torch.tensor(1.0))
    grey, rgb = flt.kernel_tiles(torch.randn(4, 8, 3, 3), "shared")
    assert not rgb and grey.shape == (4, 8, 3, 3)


def test_receptive_field_boxes_have_the_known_sizes():
    three = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3))
    box = flt.receptive_field_boxes(three, "4", (1, 20, 20), torch.tensor([[5, 6]]))[0].tolist()
    assert box == [5, 6, 12, 13]  # 7×7 starting at the unit's position (no padding, stride 1)
    pooled = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3, padding=1))
    t, l, b, r = flt.receptive_field_boxes(pooled, "2", (1, 16, 16), torch.tensor([[4, 4]]))[0].tolist()
    assert (b - t, r - l) == (8, 8)  # 1 + 2 + 1 + 2·2
    two = nn.Sequential(nn.Conv2d(1, 1, 4, stride=2), nn.Conv2d(1, 1, 4, stride=2))
    t, l, b, r = flt.receptive_field_boxes(two, "1", (1, 30, 30), torch.tensor([[2, 2]]))[0].tolist()
    assert (b - t, r - l) == (10, 10)  # the spec's two 4×4 stride-2 convs


@pytest.fixture(scope="module")
def checkpoint():
    from interpret_fixtures import cached_checkpoint

    return cached_checkpoint("patch")


def test_cli_kernels_and_top_images(checkpoint, tmp_path):
    kern, top = tmp_path / "k.png", tmp_path / "top.png"
    result = runner.invoke(app, ["filters", str(checkpoint), "-o", str(kern), "--format", "json"], prog_name="cnntools")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["layer"] == "features.0" and doc["weight_shape"] == [32, 3, 3, 3] and len(doc["filters"]) == 32
    assert kern.stat().st_size > 10_000

    args = ["filters", str(checkpoint), "-l", "features.6", "--top-k", "4", "-f", "0,3", "--score", "max",
            "--crop-rf", "--top-output", str(top), "--format", "json", "--device", "cpu", "--precision", "fp32"]
    result = runner.invoke(app, args, prog_name="cnntools")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [e["filter"] for e in doc["top"]] == [0, 3]
    for e in doc["top"]:
        assert len(e["indices"]) == 4 and e["scores"] == sorted(e["scores"], reverse=True)
        for t, l, b, r in e["rf_boxes"]:
            assert 0 <= t < b <= 32 and 0 <= l < r <= 32
    assert top.stat().st_size > 10_000

    # The scores are the brute-force max of the filter's post-ReLU map on those images.
    from cnntools.checkpoint import load_model
    from cnntools.data import load_for_model

    lm = load_model(str(checkpoint), "cpu")
    test = load_for_model(lm.meta.data, "test", lm.preprocessing, lm.classes)
    e = doc["top"][1]
    with torch.no_grad():
        maps = torch.relu(lm.model.features[:7](lm.preprocessing(test.images[e["indices"]])))[:, 3]
    torch.testing.assert_close(maps.flatten(1).amax(1), torch.tensor(e["scores"]), atol=1e-4, rtol=1e-4)

    result = runner.invoke(app, ["filters", str(checkpoint), "-l", "features.1"], prog_name="cnntools")
    assert result.exit_code == 1 and "not a Conv2d" in result.stderr


def test_dead_filter_is_named_and_bad_filter_indices_fail_before_ranking(checkpoint, tmp_path):
    from cnntools.checkpoint import load_model, read_checkpoint, save_checkpoint

    lm = load_model(str(checkpoint), "cpu")
    with torch.no_grad():
        lm.model.features[0].bias[2] = -1e4  # filter 2 can never pass its ReLU
    dead = tmp_path / "dead.safetensors"
    save_checkpoint(str(dead), lm.model, read_checkpoint(str(checkpoint))[1])
    result = runner.invoke(app, ["filters", str(dead), "--top-k", "2", "-f", "1,2", "--format", "json", "--device", "cpu"],
                           prog_name="cnntools")
    assert result.exit_code == 0, result.output
    assert "filter 2 of features.0 never activates" in result.stderr and "filter 1 " not in result.stderr
    assert json.loads(result.stdout)["top"][1]["scores"] == [0.0, 0.0]
    result = runner.invoke(app, ["filters", str(checkpoint), "--top-k", "2", "-f", "40"], prog_name="cnntools")
    assert result.exit_code == 1 and "has 32 filters" in result.stderr and "Ranking" not in result.stderr
