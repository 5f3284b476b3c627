"""The six CAM methods cnntools computes itself (cnntools.interpret.cams) equal pytorch-grad-cam's
own classes, run directly as the reference, on two architectures, several target classes and
batches; and `cnntools saliency` with the default method imports none of pytorch-grad-cam,
scikit-learn, SciPy, OpenCV or torchvision."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cnntools.interpret import cams
from cnntools.interpret import saliency as sal

sys.path.insert(0, str(Path(__file__).parent))
from interpret_fixtures import PYTORCH_GRAD_CAM_CLASS, reference_maps  # noqa: E402

# Largest difference allowed on the 0-1 maps. gradcam++ and xgradcam sum gradient × activation
# ratios over every position in float32, in another order than NumPy's pairwise sums, and the
# channels' weighted sum cancels: on an 8×8 layer the two differ by up to ~3e-5, each as far
# from a float64 computation as the other (ours measured no farther).
ATOL = {"gradcam++": 1e-4, "xgradcam": 1e-4}


@pytest.fixture(scope="module")
def digits_model_and_images():
    """simple-cnn trained on digits (8×8 images upsampled to 16×16 by its preprocessing)."""
    from interpret_fixtures import cached_checkpoint

    from cnntools.checkpoint import load_model
    from cnntools.data import load_for_model

    lm = load_model(cached_checkpoint("digits"), "cpu")
    test = load_for_model(lm.meta.data, "test", lm.preprocessing, lm.classes)
    return lm.model, lm.preprocessing(test.images[:6])


def test_native_methods_are_the_six_named_in_the_library():
    assert cams.NATIVE_CAMS == sal.CAM_METHODS[:6] == tuple(PYTORCH_GRAD_CAM_CLASS)


@pytest.mark.parametrize("method", cams.NATIVE_CAMS)
def test_trained_digits_cnn_maps_equal_pytorch_grad_cam(method, digits_model_and_images):
    from cnntools.interpret.activations import cam_layer_name

    model, x = digits_model_and_images
    with torch.no_grad():
        preds = model(x).argmax(1).tolist()
    for layer in (cam_layer_name(model), "features.3"):  # the rectified last conv, and an earlier ReLU
        for targets in (preds, [(p + 3) % 10 for p in preds], [7] * len(preds)):
            ours = sal.cam_maps(model, layer, x, targets, method=method)
            assert ours.shape == (6, 16, 16) and ours.dtype == torch.float32
            reference = reference_maps(model, layer, x, targets, method)
            assert reference.amax() > 0.5  # not a blank map compared with a blank map
            torch.testing.assert_close(ours, reference, atol=ATOL.get(method, 1e-5), rtol=0)


@pytest.mark.parametrize("method", cams.NATIVE_CAMS)
def test_resnet_maps_deep_in_the_net_equal_pytorch_grad_cam(method):
    """ResNet-18 (residual in-place adds after the layer, BatchNorm) at 40×40: 5×5 and 10×10
    feature maps upsampled by a non-power-of-two factor, random weights, five classes."""
    from cnntools.models import create_model

    torch.manual_seed(5)
    model = create_model("resnet18", 3, 40, 5).eval()
    x = torch.randn(3, 3, 40, 40)
    for layer, targets in (("layer4.1", [0, 3, 4]), ("layer3.0", [2, 2, 1])):
        ours = sal.cam_maps(model, layer, x, targets, method=method)
        assert all(p.requires_grad for p in model.parameters())
        assert sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules()) == 0
        reference = reference_maps(model, layer, x, targets, method)
        torch.testing.assert_close(ours, reference, atol=ATOL.get(method, 1e-5), rtol=0)


def test_scale_cam_is_scale_cam_image_with_opencv_resize():
    """Min-max per map then bilinear resize, as pytorch-grad-cam's scale_cam_image with
    cv2.resize: up and down, square or not, non-integer factors."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    rng = np.random.default_rng(0)
    for shape, size in [((2, 8, 8), (16, 16)), ((3, 5, 3), (32, 17)), ((2, 7, 7), (224, 224)),
                        ((2, 13, 11), (7, 5)), ((1, 4, 4), (4, 4)), ((2, 6, 6), None)]:
        maps = (rng.standard_normal(shape) * 3).astype(np.float32)
        reference = scale_cam_image(maps, size[::-1] if size else None)  # OpenCV's (width, height)
        torch.testing.assert_close(cams.scale_cam(torch.from_numpy(maps), size), torch.from_numpy(reference),
                                   atol=1e-6, rtol=0)


def test_eigencam_projection_is_get_2d_projection():
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    acts = torch.randn(4, 16, 6, 5).relu()
    acts[1, 0, 0, 0] = float("nan")
    torch.testing.assert_close(cams.projection_2d(acts), torch.from_numpy(get_2d_projection(acts.numpy())),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["gradcam", "eigencam"])
def test_layer_without_2d_maps_is_a_clear_error(method):
    from cnntools.core.errors import CnnError
    from cnntools.models import create_model

    model = create_model("simple-cnn", 1, 16, 10).eval()
    linear = next(name for name, m in model.named_modules() if isinstance(m, nn.Linear))
    with pytest.raises(CnnError, match="needs a layer with 2-D feature maps"):
        sal.cam_maps(model, linear, torch.randn(2, 1, 16, 16), [0, 1], method=method)


HEAVY = ("pytorch_grad_cam", "sklearn", "scipy", "cv2", "torchvision")


@pytest.mark.parametrize("draw", [False, True])
def test_cli_default_method_imports_no_grad_cam_sklearn_scipy_cv2_torchvision(draw, tmp_path):
    """Issue 29: the default method's run, with and without the figure, in one process."""
    from interpret_fixtures import cached_checkpoint

    args = [cached_checkpoint("digits"), "--device", "cpu", "--format", "json"]
    if draw:
        args += ["-o", str(tmp_path / "maps.png")]
    code = (
        "import sys\n"
        "from cnntools.cli.app import main\n"
        f"sys.argv = ['cnntools', 'saliency', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        f"print('LOADED', sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "LOADED []"
    assert '"images"' in run.stdout  # the maps were computed
    if draw:
        assert (tmp_path / "maps.png").stat().st_size > 1000
