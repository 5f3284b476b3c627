"""saliency: batched maps equal per-image maps, gradients against autograd by hand, guided
backprop against a hand computation, localisation of a bright patch by a trained model, and
Adebayo et al.'s model-randomisation sanity check."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from cnntools.cli import app
from cnntools.interpret import saliency as sal

sys.path.insert(0, str(Path(__file__).parent))

runner = CliRunner()


def invoke(args, input=None):
    return runner.invoke(app, args, input=input, prog_name="cnntools")


def small_cnn(classes=4, channels=3):
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        # Flatten + Linear (not global pooling): where the patch is must survive to the classifier.
        nn.Flatten(), nn.Linear(16 * 8 * 8, classes),
    )


def hooks_left(model):
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def patch_model_and_data():
    """simple-cnn trained briefly on the data layer's fake-patch (shared with the other tests)."""
    from interpret_fixtures import cached_checkpoint

    from cnntools.checkpoint import load_model

    lm = load_model(cached_checkpoint("patch"), "cpu")
    test = lm.load_split("test")
    return lm.model, lm.preprocessing(test.images, lm.device), test.labels, test.meta["patch_boxes"].tolist()


@pytest.mark.parametrize("method", sal.CAM_METHODS)
def test_every_cam_method_batched_equals_per_image(method):
    torch.manual_seed(1)
    model = small_cnn().eval()
    x = torch.randn(3, 3, 16, 16)
    targets = [0, 2, 3]
    batched = sal.cam_maps(model, "5", x, targets, method=method)
    assert batched.shape == (3, 16, 16) and batched.dtype == torch.float32
    assert 0.0 <= batched.min() and batched.max() <= 1.0 + 1e-6
    one_by_one = torch.cat([sal.cam_maps(model, "5", x[i : i + 1], [t], method=method) for i, t in enumerate(targets)])
    torch.testing.assert_close(batched, one_by_one, atol=2e-4, rtol=1e-3)
    assert hooks_left(model) == 0
    assert [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)] == [True, True, False]  # restored


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "hirescam"])
def test_cam_gradients_stopped_at_the_layer_equal_pytorch_grad_cam_on_the_full_graph(method):
    """cam_maps' backward stops at the layer with frozen weights; pytorch-grad-cam on the
    plain model (weights and input requiring grad, the whole backward pass) gives the same
    maps, also where an in-place add follows the layer (ResNet's residual `out += identity`)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cnntools.models import create_model

    torch.manual_seed(3)
    cases = [(small_cnn().eval(), "5", 16)]
    if method == "gradcam":  # one method is enough for the in-place case (ResNet-18 is slow-ish)
        cases.append((create_model("resnet18", 3, 32, 5).eval(), "layer4.1.bn2", 32))
    for model, layer, size in cases:
        x = torch.randn(2, 3, size, size)
        targets = [1, 4 if size == 32 else 3]
        ours = sal.cam_maps(model, layer, x, targets, method=method)
        assert all(p.requires_grad for p in model.parameters())  # unfrozen again
        assert hooks_left(model) == 0
        with sal._relu_not_inplace(model):
            cam_class = sal._cam_classes()[method]
            with cam_class(model=model, target_layers=[sal.get_layer(model, layer)]) as cam:
                reference = cam(input_tensor=x.clone().requires_grad_(True), targets=[ClassifierOutputTarget(t) for t in targets])
        torch.testing.assert_close(ours, torch.from_numpy(np.asarray(reference, dtype=np.float32)), atol=1e-5, rtol=1e-4)


def test_gradient_map_is_abs_input_gradient_max_over_channels():
    torch.manual_seed(2)
    model = small_cnn().eval()
    x = torch.randn(4, 3, 16, 16)
    targets = [1, 0, 3, 2]
    maps = sal.gradient_maps(model, x, targets)
    for i, t in enumerate(targets):
        xi = x[i : i + 1].clone().requires_grad_(True)
        F.cross_entropy(model(xi), torch.tensor([t])).backward()
        expected = xi.grad[0].abs().amax(0)
        expected = (expected - expected.min()) / (expected.max() - expected.min())
        torch.testing.assert_close(maps[i], expected, atol=1e-5, rtol=1e-4)


def test_smoothgrad_without_noise_is_the_gradient_map():
    torch.manual_seed(3)
    model = small_cnn().eval()
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(
        sal.smoothgrad_maps(model, x, [0, 1, 2], samples=4, noise=0.0, batch_size=5),
        sal.gradient_maps(model, x, [0, 1, 2]),
        atol=1e-5,
        rtol=1e-4,
    )
    noisy = sal.smoothgrad_maps(model, x, [0, 1, 2], samples=8, noise=0.2)
    assert noisy.shape == (3, 16, 16) and not torch.allclose(noisy, sal.gradient_maps(model, x, [0, 1, 2]))


def test_guided_backprop_against_hand_computation():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 3)).eval()
    x = torch.randn(2, 3, 2, 2)
    targets = [2, 0]
    maps = sal.guided_backprop_maps(model, x, targets)
    w1, b1, w2 = model[1].weight, model[1].bias, model[3].weight
    for i, t in enumerate(targets):
        pre = w1 @ x[i].reshape(-1) + b1
        g_h = w2[t]
        g_pre = g_h * (pre > 0) * (g_h > 0)
        g_x = (w1.t() @ g_pre).reshape(3, 2, 2).abs().amax(0)
        expected = (g_x - g_x.min()) / (g_x.max() - g_x.min())
        torch.testing.assert_close(maps[i], expected.detach(), atol=1e-5, rtol=1e-4)
    assert hooks_left(model) == 0


def _peak_inside(maps, boxes, margin=1):
    hits = 0
    for m, (top, left, bottom, right) in zip(maps, boxes):
        r, c = divmod(int(m.argmax()), m.shape[1])
        hits += (top - margin <= r < bottom + margin) and (left - margin <= c < right + margin)
    return hits / len(boxes)


def test_trained_model_maps_peak_inside_the_patch(patch_model_and_data):
    model, x, y, boxes = patch_model_and_data
    x, y, boxes = x[:48], y[:48], boxes[:48]
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.9
    for method in ("gradcam", "gradient", "smoothgrad"):
        maps = sal.saliency_maps(model, x, y.tolist(), method=method, layer="features.6")
        share = _peak_inside(maps, boxes)
        assert share >= 0.75, (method, share)


def test_maps_change_when_weights_are_randomised(patch_model_and_data):
    trained_patch_model, x, y, _ = patch_model_and_data
    x, y = x[:24], y[:24]
    random_model = sal.randomized_copy(trained_patch_model, seed=5).eval()
    for method in ("gradcam", "gradient"):
        trained = sal.saliency_maps(trained_patch_model, x, y.tolist(), method=method, layer="features.6")
        rnd = sal.saliency_maps(random_model, x, y.tolist(), method=method, layer="features.6")
        rho = np.mean([sal.rank_correlation(a, b) for a, b in zip(trained, rnd)])
        assert rho < 0.5, (method, rho)
        # The same model twice correlates perfectly: the metric itself is sound.
        assert sal.rank_correlation(trained[0], trained[0]) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def checkpoint():
    from interpret_fixtures import cached_checkpoint

    return cached_checkpoint("patch")


def test_cli_on_fake_patch_checkpoint(checkpoint, tmp_path):
    """End to end on the data layer's fake-patch: Grad-CAM and gradient peaks fall in the patch."""
    from safetensors.torch import load_file

    from cnntools.checkpoint import load_model

    boxes = load_model(checkpoint, "cpu").load_split("test").meta["patch_boxes"]
    for method in ("gradcam", "gradient"):
        maps_file = tmp_path / f"{method}.safetensors"
        png = tmp_path / f"{method}.png"
        figure = ["-o", str(png)] if method == "gradcam" else []
        result = invoke(["saliency", checkpoint, "-m", method, "-i", "0-15", "--format", "json", "--device", "cpu",
                         "--save", str(maps_file), *figure])
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert len(doc["images"]) == 16
        maps = load_file(str(maps_file))["maps"]
        assert maps.shape == (16, 32, 32)
        share = _peak_inside(maps, boxes[:16].tolist())
        assert share >= 0.75, (method, share)
        if figure:
            assert png.stat().st_size > 20_000

    # Two models side by side, a class chosen by name, and mistakes read from a predictions CSV.
    csv_text = "index,path,label,label_name,pred,pred_name,prob,loss\n3,,0,top-left,1,top-right,0.6,0.9\n5,,2,bottom-left,2,bottom-left,0.9,0.1\n"
    result = invoke(["saliency", checkpoint, checkpoint, "--mistakes", "-", "--target", "bottom-right",
                     "--format", "json", "-o", str(tmp_path / "two.png"), "--device", "cpu"], input=csv_text)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["images"]
    assert [r["index"] for r in rows] == [3, 3] and {r["target_name"] for r in rows} == {"bottom-right"}

    result = invoke(["saliency", checkpoint, "--list-layers", "--format", "json"])
    assert result.exit_code == 0 and any(r["layer"] == "features.6" for r in json.loads(result.stdout)["layers"])
    result = invoke(["saliency", checkpoint, "--layer", "zzz", "-i", "0"])
    assert result.exit_code == 1 and result.stderr.splitlines() == [result.stderr.splitlines()[0]]
    assert result.stderr.startswith("Error: no layer named 'zzz'")
    result = invoke(["saliency", checkpoint, "--target", "zebra", "-i", "0"])
    assert result.exit_code == 1 and "--target 'zebra'" in result.stderr


def test_cli_on_image_files(checkpoint, tmp_path):
    from PIL import Image

    paths = []
    for name, (top, left) in {"tl": (4, 4), "br": (40, 40)}.items():
        a = np.zeros((56, 56, 3), np.uint8)
        a[top : top + 11, left : left + 11] = 255
        paths.append(str(tmp_path / f"{name}.png"))
        Image.fromarray(a).save(paths[-1])
    result = invoke(["saliency", checkpoint, "--image", paths[0], "--image", paths[1], "--format", "json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["images"]
    assert [r["pred_name"] for r in rows] == ["top-left", "bottom-right"]
    assert rows[0]["peak_row"] < 16 and rows[1]["peak_row"] >= 16  # resized to 32×32 by the model's preparation
    result = invoke(["saliency", checkpoint, "--image", paths[0], "--target", "true"])
    assert result.exit_code == 1 and "no label" in result.stderr


def test_cli_method_choices_match_the_library():
    import typing

    from cnntools.commands.saliency import MethodChoice

    assert typing.get_args(MethodChoice) == sal.METHODS
    result = invoke(["saliency", "x.safetensors", "--method", "nope"])
    assert result.exit_code == 2


def test_auto_layer_is_the_rectified_last_conv_so_confident_maps_are_not_blank(tmp_path):
    """Grad-CAM on a raw conv output is ReLU(negative sum) = blank for most confident images."""
    from interpret_fixtures import cached_checkpoint

    from cnntools.checkpoint import load_model
    from cnntools.interpret.activations import cam_layer_name
    from cnntools.models import create_model

    checkpoint = cached_checkpoint("digits")
    maps_file = tmp_path / "maps.safetensors"
    result = invoke(["saliency", checkpoint, "-i", "0-31", "--format", "json", "--device", "cpu", "--save", str(maps_file)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["models"][0]["layer"] == "features.7"  # the ReLU after the last conv
    from safetensors.torch import load_file

    maps = load_file(str(maps_file))["maps"]
    assert (maps.flatten(1).amax(1) > 0).all()
    # The raw conv output itself leaves most of these maps blank: the choice matters.
    lm = load_model(checkpoint, "cpu")
    x = lm.preprocessing(lm.load_split("test").images[:32], lm.device)
    targets = [row["target"] for row in json.loads(result.stdout)["images"]]
    raw = sal.saliency_maps(lm.model, x, targets, method="gradcam", layer="features.6")
    assert (raw.flatten(1).amax(1) > 0).float().mean() < 0.5

    assert cam_layer_name(create_model("lenet", in_channels=3, image_size=32, num_classes=10)) == "features.6"
    assert cam_layer_name(create_model("compact-cnn", in_channels=3, image_size=32, num_classes=10)) == "features.3.5"
    # Residual blocks add the shortcut before their (shared) ReLU: the block is the target.
    assert cam_layer_name(create_model("resnet18", in_channels=3, image_size=32, num_classes=10)) == "layer4.1"
