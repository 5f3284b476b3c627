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

from cnntools.cli.app import app
from cnntools.interpret import saliency as sal

sys.path.insert(0, str(Path(__file__).parent))
from interpret_fixtures import reference_maps  # noqa: E402

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
    from cnntools.data import load_for_model

    lm = load_model(cached_checkpoint("patch"), "cpu")
    test = load_for_model(lm.meta.data, "test", lm.preprocessing, lm.classes)
    return lm.model, lm.preprocessing(test.images), test.labels, test.meta["patch_boxes"].tolist()


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
        torch.testing.assert_close(ours, reference_maps(model, layer, x, targets, method), atol=1e-5, rtol=1e-4)


def test_loss_gradient_map_is_abs_input_gradient_max_over_channels():
    torch.manual_seed(2)
    model = small_cnn().eval()
    x = torch.randn(4, 3, 16, 16)
    targets = [1, 0, 3, 2]
    maps = sal.gradient_maps(model, x, targets, of="loss")
    for i, t in enumerate(targets):
        xi = x[i : i + 1].clone().requires_grad_(True)
        F.cross_entropy(model(xi), torch.tensor([t])).backward()
        expected = xi.grad[0].abs().amax(0)  # raw units: no rescaling
        torch.testing.assert_close(maps[i], expected.double(), atol=1e-9, rtol=1e-4)


def _loss_gradient_float64(model, x, targets):
    """∂ cross-entropy/∂ input in float64, written as Σ_{j≠t} p_j (∇l_j − ∇l_t): autograd's own
    cross-entropy rounds p_t − 1 to 0 for a confident model and loses the target's term."""
    import copy

    double = copy.deepcopy(model).double()
    xd = x.detach().double().requires_grad_(True)
    logits = double(xd)
    t = torch.as_tensor(targets)[:, None]
    p = torch.softmax(logits.detach(), dim=1)
    others = torch.ones_like(p).scatter(1, t, 0.0)
    ((p * others) * (logits - logits.gather(1, t))).sum().backward()
    return xd.grad


def test_confident_gradient_keeps_its_true_tiny_size():
    """A saturated image's loss gradient underflows float32 to exactly zero; the map holds its true
    size in float64 (equal, up to float32 rounding, to the gradient computed in float64)."""
    torch.manual_seed(5)
    model = small_cnn().eval()
    with torch.no_grad():
        model[-1].bias[0] += 200.0  # class 0 by a logit gap of 200: the others' p is 1e-87
    x = torch.randn(2, 3, 16, 16)
    targets = [0, 0]
    xi = x.clone().requires_grad_(True)
    F.cross_entropy(model(xi), torch.tensor(targets), reduction="sum").backward()
    assert float(xi.grad.abs().max()) == 0.0  # what a float32 map would draw
    expected = _loss_gradient_float64(model, x, targets).abs().amax(1)
    maps = sal.gradient_maps(model, x, targets, of="loss")
    assert maps.dtype == torch.float64 and (maps.flatten(1).amax(1) > 0).all()
    for got, want in zip(maps, expected):  # float32 backward vs float64: 1e-3 of each map's peak
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3 * float(want.max()))


def test_map_quantity_names_what_is_drawn():
    assert sal.map_quantity("gradient", "max") == "|∂logit/∂input|, max over channels"
    assert sal.map_quantity("gradient", "max", of="loss") == "|∂loss/∂input|, max over channels"
    assert sal.map_quantity("gradient", "mean", of="loss") == "|mean over channels of ∂loss/∂input|"
    assert sal.map_quantity("guided-backprop", "abs-mean") == "|guided ∂logit/∂input|, mean over channels"
    assert sal.map_quantity("gradcam") == "Grad-CAM, scaled to 0-1 per map"


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
        torch.testing.assert_close(maps[i], g_x.detach().double(), atol=1e-6, rtol=1e-4)
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
    from cnntools.data import load_for_model

    lm = load_model(checkpoint, "cpu")
    boxes = load_for_model(lm.meta.data, "test", lm.preprocessing, lm.classes).meta["patch_boxes"]
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
    assert result.exit_code == 2 and "--target 'zebra'" in result.stderr  # a bad option value


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
    assert result.exit_code == 2 and "no label" in result.stderr  # --target true without labels: bad usage


def test_cli_method_choices_match_the_library():
    import typing

    from cnntools.cli.commands.saliency import MethodChoice

    assert typing.get_args(MethodChoice) == sal.METHODS
    result = invoke(["saliency", "x.safetensors", "--method", "nope"])
    assert result.exit_code == 2


def test_auto_layer_is_the_rectified_last_conv_so_confident_maps_are_not_blank(tmp_path):
    """Grad-CAM on a raw conv output is ReLU(negative sum) = blank for most confident images."""
    from interpret_fixtures import cached_checkpoint

    from cnntools.checkpoint import load_model
    from cnntools.data import load_for_model
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
    x = lm.preprocessing(load_for_model(lm.meta.data, "test", lm.preprocessing, lm.classes).images[:32])
    targets = [row["target"] for row in json.loads(result.stdout)["images"]]
    raw = sal.saliency_maps(lm.model, x, targets, method="gradcam", layer="features.6")
    assert (raw.flatten(1).amax(1) > 0).float().mean() < 0.5

    assert cam_layer_name(create_model("lenet", in_channels=3, image_size=32, num_classes=10)) == "features.6"
    assert cam_layer_name(create_model("compact-cnn", in_channels=3, image_size=32, num_classes=10)) == "features.3.5"
    # Residual blocks add the shortcut before their (shared) ReLU: the block is the target.
    assert cam_layer_name(create_model("resnet18", in_channels=3, image_size=32, num_classes=10)) == "layer4.1"


def _fake_results(maps_per_column, classes=("a", "b", "c")):
    """What saliency's figure takes: one `Column` per (model, target)."""
    n = maps_per_column[0].shape[0]
    probs = torch.full((n, len(classes)), 1 / len(classes))
    shown = torch.zeros(n, 1, 6, 6, dtype=torch.uint8)
    return [sal.Column(sal.Subject(None, None, list(classes), shown, [-1] * n, None, f"m{j}"), "pred", shown, probs,
                       [0] * n, [0] * n, maps)
            for j, maps in enumerate(maps_per_column)]


@pytest.mark.parametrize("overlay", [True, False])
def test_raw_maps_are_drawn_on_one_scale_per_row(overlay):
    """Gradient maps keep their units: every map of a row is drawn on 0..max of that row, whose
    colour bar shows that range and names the quantity; CAM maps get one 0-1 bar saying so."""
    from cnntools.cli.commands.saliency import _grid

    torch.manual_seed(0)
    # The second image's values are below float32's range, as a confident model's loss gradient is.
    a = torch.rand(2, 6, 6, dtype=torch.float64) * torch.tensor([1e-3, 1e-80], dtype=torch.float64)[:, None, None]
    b = a * 3  # the second model's maps are 3x larger: the row's scale is its
    quantity = sal.map_quantity("gradient", "max")
    fig = _grid(_fake_results([a, b]), ["m0", "m1"], ["#0", "#1"], [-1, -1], "gradient", 0.5, overlay, "t", quantity)
    grid, bars = fig.axes[:6], fig.axes[6:]  # 2 rows x (image + 2 maps), then the colour bars
    assert len(bars) == 2
    for i, bar in enumerate(sorted(bars, key=lambda ax: -ax.get_position().y0)):
        assert bar.get_ylim() == pytest.approx((0.0, float(b[i].max())), rel=1e-9, abs=0)
        assert bar.get_ylabel().replace("\n", " ") == quantity
    for i in range(2):  # both maps of a row on that row's scale, drawn from their own values
        heat = [ax.get_images()[-1] for ax in grid[3 * i + 1:3 * i + 3]]
        assert [im.get_clim() for im in heat] == [pytest.approx((0.0, float(b[i].max())), rel=1e-9, abs=0)] * 2
        assert np.array_equal(np.asarray(heat[1].get_array()), b[i].numpy())
    cam = _grid(_fake_results([torch.rand(2, 6, 6)]), ["m0"], ["#0", "#1"], [-1, -1], "gradcam", 0.5, overlay, "t",
                sal.map_quantity("gradcam"))
    cam_bars = cam.axes[4:]
    assert len(cam_bars) == 1 and cam_bars[0].get_ylim() == (0.0, 1.0)
    assert cam_bars[0].get_ylabel() == "Grad-CAM, scaled to 0-1 per map"


def test_cli_saves_raw_gradients_and_reports_their_peak(checkpoint, tmp_path):
    """--save holds |∂loss/∂input| in its own units (autograd on the model's prepared input), and
    the JSON says so and gives each map's peak."""
    from safetensors import safe_open

    from cnntools.checkpoint import load_model
    from cnntools.data import load_for_model

    maps_file = tmp_path / "maps.safetensors"
    result = invoke(["saliency", checkpoint, "-m", "gradient", "-i", "0-2", "--format", "json", "--device", "cpu", "--precision", "fp32",
                     "--save", str(maps_file), "--target", "true", "--of", "loss"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["values"] == "|∂loss/∂input|, max over channels"
    with safe_open(str(maps_file), "pt") as f:
        maps = f.get_tensor("maps")
        assert f.metadata()["values"] == doc["values"]
    lm = load_model(checkpoint, "cpu")
    split = load_for_model(lm.meta.data, "test", lm.preprocessing, lm.classes)
    expected = _loss_gradient_float64(lm.model, lm.preprocessing(split.images[:3]), split.labels[:3].tolist()).abs().amax(1)
    for got, want in zip(maps, expected):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3 * float(want.max()))
    assert [r["peak_value"] for r in doc["images"]] == pytest.approx([float(m.max()) for m in maps])


def test_score_gradient_equals_captums_saliency():
    """--of score (the default) is Simonyan et al.'s saliency: captum's `Saliency` with abs=True,
    max over channels, image by image for its own target."""
    from captum.attr import Saliency

    torch.manual_seed(6)
    model = small_cnn().eval()
    x = torch.randn(4, 3, 16, 16)
    targets = [1, 0, 3, 2]
    maps = sal.gradient_maps(model, x, targets)
    with sal._relu_not_inplace(model):
        reference = Saliency(model).attribute(x.clone(), target=targets, abs=True).amax(1)
    torch.testing.assert_close(maps, reference.double(), atol=1e-7, rtol=1e-5)
    # The loss gradient is another quantity: not proportional to the score gradient.
    loss = sal.gradient_maps(model, x, targets, of="loss")
    assert not torch.allclose(loss / loss.amax((1, 2), keepdim=True), maps / maps.amax((1, 2), keepdim=True), atol=1e-3)


def test_cli_default_gradient_is_captums_saliency_per_target(tmp_path):
    """`saliency -m gradient --target 5,9` on a trained checkpoint: each column is captum's
    `Saliency` of that class's score on the model's own prepared images; --of loss is not."""
    from captum.attr import Saliency
    from safetensors.torch import load_file

    from interpret_fixtures import cached_checkpoint

    from cnntools.checkpoint import load_model
    from cnntools.data import load_for_model

    spec = cached_checkpoint("digits")
    lm = load_model(spec, "cpu")
    x = lm.preprocessing(load_for_model(lm.meta.data, "test", lm.preprocessing, lm.classes).images[:3])
    for of in ("score", "loss"):
        saved = tmp_path / f"{of}.st"
        result = invoke(["saliency", spec, "-m", "gradient", "--target", "5,9", "-i", "0-2", "--of", of, "--device", "cpu",
                         "--precision", "fp32", "--save", str(saved), "-q"])
        assert result.exit_code == 0, result.output
        maps = load_file(str(saved))
        for k, target in enumerate((5, 9)):
            with sal._relu_not_inplace(lm.model):
                reference = Saliency(lm.model).attribute(x.clone(), target=target, abs=True).amax(1).double()
            close = torch.allclose(maps[f"maps.{k}"], reference, atol=1e-7, rtol=1e-4)
            assert close == (of == "score"), (of, target)


def test_guided_backprop_of_the_loss_is_the_guided_gradient_of_cross_entropy():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 3)).eval()
    x = torch.randn(2, 3, 2, 2)
    targets = [2, 0]
    maps = sal.guided_backprop_maps(model, x, targets, of="loss")
    w1, b1, w2 = model[1].weight, model[1].bias, model[3].weight
    for i, t in enumerate(targets):
        pre = w1 @ x[i].reshape(-1) + b1
        p = torch.softmax(model(x[i : i + 1])[0], 0)
        g_h = w2.t() @ (p - F.one_hot(torch.tensor(t), 3).float())  # ∂CE/∂hidden
        g_pre = g_h * (pre > 0) * (g_h > 0)
        g_x = (w1.t() @ g_pre).reshape(3, 2, 2).abs().amax(0)
        torch.testing.assert_close(maps[i], g_x.detach().double(), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("method", ["fullgrad", "shapleycam", "finercam", "kpcacam"])
def test_newer_cam_methods_equal_pytorch_grad_cam_called_directly(method):
    from pytorch_grad_cam import KPCA_CAM, FinerCAM, FullGrad, ShapleyCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, FinerWeightedTarget

    torch.manual_seed(9)
    model = small_cnn(classes=6).eval()
    x = torch.randn(3, 3, 16, 16)
    targets = [1, 4, 5]
    ours = sal.cam_maps(model, "5", x, targets, method=method)
    assert hooks_left(model) == 0 and all(p.requires_grad for p in model.parameters())
    cam_class = {"fullgrad": FullGrad, "shapleycam": ShapleyCAM, "finercam": FinerCAM, "kpcacam": KPCA_CAM}[method]
    goals = [ClassifierOutputTarget(t) for t in targets]
    if method == "finercam":  # the 3 classes whose logits lie closest to the target's
        logits = model(x).detach()
        goals = []
        for row, t in zip(logits, targets):
            others = sorted((c for c in range(6) if c != t), key=lambda c: abs(float(row[c] - row[t])))
            goals.append(FinerWeightedTarget(t, others[:3], 1.0))
    layers = [] if method == "fullgrad" else [model[5]]
    with sal._relu_not_inplace(model), cam_class(model=model, target_layers=layers) as cam:
        reference = cam(input_tensor=x.clone(), targets=goals)
    torch.testing.assert_close(ours, torch.from_numpy(np.asarray(reference, dtype=np.float32)), atol=1e-5, rtol=1e-4)


def test_faithfulness_is_the_probability_change_and_road_by_hand():
    """confidence_change = p_t(x · map) − p_t(x), the map scaled to 0-1; ROAD equals
    pytorch-grad-cam's ROADCombined; an informative map scores better than its opposite."""
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    torch.manual_seed(10)
    model = small_cnn().eval()
    x = torch.randn(3, 3, 16, 16)
    targets = [0, 1, 2]
    maps = sal.gradient_maps(model, x, targets)
    scores = sal.faithfulness(model, x, maps, targets, seed=4)
    unit = maps / maps.amax((1, 2), keepdim=True)
    with torch.no_grad():
        before = torch.softmax(model(x), 1)[range(3), targets]
        after = torch.softmax(model(x * unit[:, None].float()), 1)[range(3), targets]
    np.testing.assert_allclose(scores["confidence_change"], (after - before).numpy(), atol=1e-6)
    torch.manual_seed(4)
    road = ROADCombined(percentiles=list(sal.ROAD_PERCENTILES))(
        x, unit.float().numpy(), [ClassifierOutputSoftmaxTarget(t) for t in targets], model)
    np.testing.assert_allclose(scores["road"], road, atol=1e-6)


def test_faithfulness_ranks_the_patch_map_above_its_inverse(patch_model_and_data):
    model, x, labels, boxes = patch_model_and_data
    x, targets = x[:8], labels[:8].tolist()
    good = sal.cam_maps(model, "features.6", x, targets)
    scores = sal.faithfulness(model, x, good, targets)
    worse = sal.faithfulness(model, x, 1 - good, targets)
    assert np.mean(scores["road"]) > np.mean(worse["road"])
    assert np.mean(scores["confidence_change"]) > np.mean(worse["confidence_change"])


def test_two_models_each_column_equals_its_single_model_run(tmp_path):
    """simple-cnn (16 px) then lenet (32 px) on digits (8 px): each column equals that model's
    own run (its images made from the source pixels, not from the first model's size), its
    probabilities equal eval's, and each column names its own layer."""
    from safetensors.torch import load_file

    from interpret_fixtures import cached_checkpoint

    small, lenet = cached_checkpoint("digits"), cached_checkpoint("digits-lenet")
    common = ["-i", "0-3", "--device", "cpu", "--precision", "fp32", "--format", "json"]
    both = invoke(["saliency", small, lenet, *common, "--save", str(tmp_path / "both.st"), "-o", str(tmp_path / "both.png")])
    assert both.exit_code == 0, both.output
    doc = json.loads(both.stdout)
    layers = [m["layer"] for m in doc["models"]]
    assert layers[0] != layers[1]  # simple-cnn's and lenet's own last conv activations
    saved = load_file(str(tmp_path / "both.st"))
    for k, spec in enumerate((small, lenet)):
        alone = invoke(["saliency", spec, *common, "--save", str(tmp_path / f"{k}.st")])
        assert alone.exit_code == 0, alone.output
        torch.testing.assert_close(saved[f"maps.{k}"], load_file(str(tmp_path / f"{k}.st"))["maps"])
        own = [r for r in doc["images"] if r["model"] == doc["models"][k]["label"]]
        assert [r["prob"] for r in own] == [r["prob"] for r in json.loads(alone.stdout)["images"]]
        assert {r["layer"] for r in own} == {layers[k]}
        evaluated = invoke(["eval", spec, "--device", "cpu", "--precision", "fp32", "-o", str(tmp_path / f"p{k}.csv"), "-q"])
        assert evaluated.exit_code == 0, evaluated.output
        import csv

        csv_rows = list(csv.DictReader(open(tmp_path / f"p{k}.csv")))[:4]
        np.testing.assert_allclose([r["prob"] for r in own], [float(r["prob"]) for r in csv_rows], atol=1e-6)


def test_mistakes_come_worst_first_and_per_class(checkpoint, tmp_path):
    """--mistakes orders by the CSV's loss (most confident mistake first); --per-class keeps
    the worst mistake of each true class."""
    csv_text = ("index,path,label,label_name,pred,pred_name,prob,loss\n"
                "3,,0,top-left,1,top-right,0.6,0.9\n"
                "5,,2,bottom-left,0,top-left,0.9,2.5\n"
                "7,,2,bottom-left,2,bottom-left,0.99,0.01\n"
                "8,,0,top-left,3,bottom-right,0.8,1.7\n"
                "9,,2,bottom-left,1,top-right,0.7,1.1\n")
    args = ["saliency", checkpoint, "--mistakes", "-", "--format", "json", "--device", "cpu", "-m", "gradient"]
    result = invoke(args, input=csv_text)
    assert result.exit_code == 0, result.output
    assert [r["index"] for r in json.loads(result.stdout)["images"]] == [5, 8, 9, 3]
    result = invoke(args + ["--per-class"], input=csv_text)
    assert result.exit_code == 0, result.output
    assert [r["index"] for r in json.loads(result.stdout)["images"]] == [5, 8]
    result = invoke(args + ["--per-class", "-n", "1"], input=csv_text)
    assert [r["index"] for r in json.loads(result.stdout)["images"]] == [5]
    result = invoke(["saliency", checkpoint, "--per-class", "-i", "0"])
    assert result.exit_code == 2 and "--mistakes" in result.stderr


def test_cli_faithfulness_and_of_in_json(checkpoint):
    base = ["saliency", checkpoint, "-i", "0-3", "--format", "json", "--device", "cpu", "--precision", "fp32"]
    result = invoke(base + ["-m", "gradient", "--faithfulness"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["of"] == "score" and doc["values"].startswith("|∂logit/∂input|")
    assert all(isinstance(r["road"], float) and isinstance(r["confidence_change"], float) for r in doc["images"])
    (summary,) = doc["faithfulness"]
    assert summary["road"] == pytest.approx(np.mean([r["road"] for r in doc["images"]]))
    result = invoke(base + ["-m", "gradcam", "--of", "loss"])
    assert result.exit_code == 2 and "--of applies to the gradient methods" in result.stderr
