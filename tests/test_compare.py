"""Figures and tables that name what they show: labels through eval's predictions into
confusion, logit columns, logit bars, multi-target saliency, channels by number, layers
without weights, the t-SNE centroid matrix, hue and aspect-ratio augmentation."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch

FAST = ["--image-size", "8", "--precision", "fp32", "--device", "cpu", "--batch-size", "64", "--augment", "none"]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Two one-epoch digits runs: one with an explicit label, one with a derived label."""
    from typer.testing import CliRunner

    from cnntools.cli.app import app

    folder = tmp_path_factory.mktemp("labelled")
    paths = []
    for name, extra in (("a", ["--label", "baseline run"]), ("b", ["--arch", "mlp"])):
        path = folder / f"{name}.safetensors"
        result = CliRunner().invoke(app, ["train", *FAST, "--epochs", "1", "-o", str(path), "-q", *extra])
        assert result.exit_code == 0, result.output
        paths.append(path)
    return paths


def test_logit_columns_equal_a_forward_pass(cli, labelled, tmp_path):
    from cnntools.checkpoint import load_model
    from cnntools.data import load_for_model

    preds = tmp_path / "p.csv"
    result = cli("eval", labelled[0], "-o", preds, "--logits", "-q", "--precision", "fp32", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(preds.open()))
    lm = load_model(str(labelled[0]))
    names = [f"logit_{c}" for c in lm.classes]
    assert list(rows[0])[:2] == ["model", "data"] and list(rows[0])[-len(names):] == names
    assert {r["model"] for r in rows} == {"baseline run"} and {r["data"] for r in rows} == {"digits:test"}
    test = load_for_model(lm.meta.data, "test", lm.preprocessing, lm.classes)
    with torch.inference_mode():
        expected = lm.model(lm.preprocessing(test.images)).float()
    got = torch.tensor([[float(r[n]) for n in names] for r in rows])
    assert torch.allclose(got, expected, atol=1e-5)
    assert [int(r["pred"]) for r in rows] == expected.argmax(1).tolist()
    assert cli("eval", labelled[0], "--logits").exit_code == 1  # --logits needs -o


def test_confusion_through_a_pipe_names_the_model(cli, labelled, tmp_path, monkeypatch):
    import cnntools.output.plots as plots

    titles = []
    original = plots.confusion_heatmap

    def spy(cm, classes, title="", normalized=False):
        titles.append(title)
        return original(cm, classes, title=title, normalized=normalized)

    monkeypatch.setattr(plots, "confusion_heatmap", spy)
    piped = cli("eval", labelled[0], "-o", "-", "-q").stdout
    result = cli("confusion", "-", "-o", tmp_path / "c.png", "--format", "json", input=piped)
    assert result.exit_code == 0, result.stderr
    accuracy = result.json()["accuracy"]
    assert titles[0].startswith("Confusion matrix: baseline run on digits:test\n359 images")
    assert f"accuracy {accuracy:.1%}" in titles[0]
    assert result.json()["source"] == "baseline run on digits:test"
    # From the checkpoint itself: the same title.
    assert cli("confusion", labelled[0], "-o", tmp_path / "d.png").exit_code == 0
    assert titles[1] == titles[0]


def test_labels_head_multi_model_tables_and_logit_figures(cli, labelled, tmp_path, monkeypatch):
    import cnntools.output.plots as plots

    seen = {}
    original_bars, original_hist = plots.logit_bars, plots.logits_histogram

    def bars(panels, models, classes, **kw):
        seen["bars"] = (panels, models)
        return original_bars(panels, models, classes, **kw)

    def hist(values, title="", bins=60, log_count=False):
        seen["hist"] = (list(values), title, log_count)
        return original_hist(values, title=title, bins=bins, log_count=log_count)

    monkeypatch.setattr(plots, "logit_bars", bars)
    monkeypatch.setattr(plots, "logits_histogram", hist)
    result = cli("eval", *labelled, "-q", "-i", "0,1", "--logits-plot", tmp_path / "bars.png",
                 "--logits-hist", tmp_path / "hist.png", "--log-count", "--device", "cpu", "--precision", "fp32")
    assert result.exit_code == 0, result.stderr
    header = [line for line in result.stdout.splitlines() if line.startswith("metric")][0]
    assert "baseline run" in header and "mlp bs=64+no-aug" in header
    panels, models = seen["bars"]
    assert models == ["baseline run", "mlp bs=64+no-aug"] and [p["name"] for p in panels] == ["digits:test #0", "digits:test #1"]
    from cnntools.checkpoint import load_model
    from cnntools.data import load_for_model

    lm = load_model(str(labelled[1]))
    test = load_for_model(lm.meta.data, "test", lm.preprocessing, lm.classes)
    with torch.inference_mode():
        expected = lm.model(lm.preprocessing(test.images[:2])).float()
    assert torch.allclose(torch.tensor([p["logits"][1] for p in panels]), expected, atol=1e-5)
    assert seen["hist"] == (["baseline run", "mlp bs=64+no-aug"], "Raw outputs on digits:test (359 images)", True)
    assert (tmp_path / "bars.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def digits_checkpoint():
    from interpret_fixtures import cached_checkpoint

    return cached_checkpoint("digits")


def test_multi_target_saliency_equals_single_target_runs(cli, digits_checkpoint, tmp_path):
    from safetensors.torch import load_file

    both = tmp_path / "both.safetensors"
    args = ["-m", "gradient", "-i", "0,1", "--device", "cpu", "-q", "--reduce", "mean"]
    result = cli("saliency", digits_checkpoint, *args, "--target", "3,5", "--save", both, "--format", "json",
                 "-o", tmp_path / "both.png", "--no-overlay")
    assert result.exit_code == 0, result.stderr
    maps = load_file(str(both))
    for k, target in enumerate(("3", "5")):
        single = tmp_path / f"t{target}.safetensors"
        assert cli("saliency", digits_checkpoint, *args, "--target", target, "--save", single).exit_code == 0
        alone = load_file(str(single))
        assert torch.equal(maps[f"maps.{k}"], alone["maps"])
        assert alone["targets"].tolist() == [int(target)] * 2
    rows = result.json()["images"]
    assert [(r["image"], r["target"]) for r in rows] == [("#0", 3), ("#0", 5), ("#1", 3), ("#1", 5)]
    assert (tmp_path / "both.png").read_bytes()[:4] == b"\x89PNG"


def test_channel_reductions_against_hand_computation():
    from cnntools.interpret.saliency import reduce_channels

    g = torch.tensor([[[[1.0]], [[-3.0]], [[0.5]]]])
    assert reduce_channels(g, "max").item() == 3.0
    assert reduce_channels(g, "abs-mean").item() == pytest.approx(1.5)
    assert reduce_channels(g, "mean").item() == pytest.approx(0.5)


def test_all_zero_map_is_drawn_with_a_warning(cli, digits_checkpoint, tmp_path, monkeypatch):
    import cnntools.interpret.saliency as lib

    monkeypatch.setattr(lib, "cam_maps", lambda model, layer, x, targets, **kw: torch.zeros(x.shape[0], *x.shape[2:]))
    result = cli("saliency", digits_checkpoint, "-i", "0", "--device", "cpu", "-o", tmp_path / "z.png")
    assert result.exit_code == 0, result.stderr
    assert "all zero" in result.stderr and "gradient at layer" in result.stderr
    assert (tmp_path / "z.png").exists()


def test_featmaps_channels_by_number_and_layers_without_weights(cli, digits_checkpoint, tmp_path):
    from cnntools.checkpoint import load_model
    from cnntools.data import load_for_model
    from cnntools.inference.batches import forward_batches

    out = tmp_path / "f.png"
    saved = tmp_path / "acts.safetensors"
    result = cli("featmaps", digits_checkpoint, "-l", "features.1", "--channels", "5,0-2", "-o", out, "--format", "json",
                 "--device", "cpu", "--save", saved)
    assert result.exit_code == 0, result.stderr
    (layer,) = result.json()["layers"]
    assert layer["channels"] == [5, 0, 1, 2] and layer["chosen"] == "given"
    lm = load_model(str(digits_checkpoint))
    test = load_for_model(lm.meta.data, "test", lm.preprocessing, lm.classes)
    (batch,) = forward_batches(lm.model, test.images[:1], lm.preprocessing, layers=["features.1"])
    assert batch.activations["features.1"].shape[1] > 5
    bad = cli("featmaps", digits_checkpoint, "-l", "features.1", "--channels", "999", "--device", "cpu")
    assert bad.exit_code == 2 and "999" in bad.stderr
    # --list-layers reads the architecture only: a checkpoint whose weights are damaged still lists.
    layers = cli("featmaps", digits_checkpoint, "--list-layers", "--format", "json", "--device", "cpu").json()["layers"]
    assert any(r["layer"] == "features.1" for r in layers)


def test_torchvision_layers_need_no_weight_file(cli, tmp_path):
    env = {"TORCH_HOME": str(tmp_path / "empty-hub")}
    result = cli("featmaps", "torchvision:resnet18", "--list-layers", "--format", "json", "--device", "cpu", env=env)
    assert result.exit_code == 0, result.stderr
    rows = {r["layer"]: r for r in result.json()["layers"]}
    assert rows["fc"]["output_shape"] == [1000] and "layer4.1.conv2" in rows
    sal = cli("saliency", "torchvision:resnet18", "--list-layers", "--format", "json", "--device", "cpu", env=env)
    assert sal.exit_code == 0, sal.stderr


def test_one_by_one_maps_are_drawn_as_a_strip():
    from cnntools.cli.commands.featmaps import _figure

    acts = {"pool": torch.arange(6, dtype=torch.float32).view(6, 1, 1)}
    doc = [{"layer": "pool", "type": "AdaptiveAvgPool2d", "shape": [6, 1, 1], "channels": [0, 1, 2, 3, 4, 5],
            "chosen": "given"}]
    fig = _figure(acts, doc, torch.zeros(1, 8, 8, dtype=torch.uint8), False, "t")
    images = [im for ax in fig.axes for im in ax.get_images()]
    strip = [im for im in images if im.get_array().shape == (1, 6)]
    assert len(strip) == 1 and strip[0].get_array().tolist() == [[0, 1, 2, 3, 4, 5]]


def test_tsne_centroid_matrix_is_full_and_labelled(cli):
    result = cli("tsne", "--n", "60", "--centroids", "--format", "csv", "--method", "sklearn")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["class"] for r in rows] == [str(i) for i in range(10)]
    matrix = np.array([[float(r[str(j)]) for j in range(10)] for r in rows])
    assert np.allclose(matrix, matrix.T) and np.allclose(np.diag(matrix), 0) and (matrix[~np.eye(10, dtype=bool)] > 0).all()
    doc = cli("tsne", "--n", "60", "--format", "json", "--method", "sklearn").json()
    assert np.allclose(np.array(doc["centroid_distance_embedding"]), matrix, atol=1e-4)


def test_hue_matches_torchvision_and_aspect_sets_the_crop_ratio():
    import torchvision.transforms.v2.functional as TF

    from cnntools.data.augment import adjust_hue, parse_augment, sample_resized_crop_boxes

    x = torch.rand(4, 3, 9, 7)
    factors = torch.tensor([0.1, -0.3, 0.5, 0.0])
    expected = torch.stack([TF.adjust_hue(x[i], float(factors[i])) for i in range(4)])
    assert torch.allclose(adjust_hue(x, factors), expected, atol=1e-5)
    aug = parse_augment("rrc:0.3,aspect:3,hue:0.2")
    assert aug.aspect_range == pytest.approx((1 / 3, 3))
    top, left, bh, bw = sample_resized_crop_boxes(2000, 64, 64, 0.3, torch.Generator().manual_seed(0), "cpu",
                                                  ratio=aug.aspect_range)
    ratio = (bw.float() / bh.float())
    assert ratio.max() > 2.0 and ratio.min() < 0.5  # beyond the default 3/4..4/3
    from cnntools.core.errors import CnnError

    with pytest.raises(CnnError, match="hue"):
        parse_augment("hue:0.7")
    with pytest.raises(CnnError, match="aspect"):
        parse_augment("aspect:0.5")


def test_filters_draws_exactly_the_given_filters_in_order():
    from cnntools.cli.commands.filters import _kernel_figure
    from cnntools.interpret.filters import kernel_tiles

    weight = torch.randn(8, 3, 3, 3)
    fig = _kernel_figure(weight, "conv1", "shared", [5, 2], "my run")
    drawn = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in drawn] == ["5", "2"]
    tiles, _ = kernel_tiles(weight, "shared")
    for ax, f in zip(drawn, (5, 2)):
        assert np.allclose(ax.get_images()[0].get_array(), tiles[f].numpy())
    assert fig._suptitle.get_text().startswith("my run: conv1, 2 of 8 filters")
