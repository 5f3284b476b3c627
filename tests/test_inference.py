"""The one inference path: `Preprocessing`, `forward_batches`, `predict`, `capture_activations`
against plain PyTorch, reduced precision that is really reduced, and every model-running
command going through it at the precision it was given."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from cnntools.inference import batches as inference
from cnntools.inference.batches import capture_activations, forward_batches, predict
from cnntools.inference.preprocessing import Preprocessing

sys.path.insert(0, str(Path(__file__).parent))

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()


def plain_input(images: torch.Tensor) -> torch.Tensor:
    """x/255, then (x - mean)/std, the textbook way."""
    x = images.float() / 255
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_preprocessing_fits_channels_size_and_normalises():
    prep = Preprocessing(MEAN, STD, 12, 3)
    grey = torch.randint(0, 256, (2, 1, 6, 6), dtype=torch.uint8)
    fitted = prep.fit(grey)
    assert fitted.shape == (2, 3, 12, 12) and fitted.dtype == torch.uint8
    assert torch.equal(fitted[:, 0], fitted[:, 1]) and torch.equal(fitted[:, 1], fitted[:, 2])
    rgba = torch.randint(0, 256, (1, 4, 12, 12), dtype=torch.uint8)
    assert torch.equal(prep.fit(rgba), rgba[:, :3])  # alpha dropped, nothing else touched
    images = torch.randint(0, 256, (3, 3, 12, 12), dtype=torch.uint8)
    torch.testing.assert_close(prep(images), plain_input(images), rtol=0, atol=1e-5)
    assert prep(images, channels_last=True).is_contiguous(memory_format=torch.channels_last)
    # torchvision's rule: shorter side to `resize`, then the centre crop.
    crop = Preprocessing(MEAN, STD, 4, 3, resize=6)
    assert crop.fit(torch.randint(0, 256, (1, 3, 9, 12), dtype=torch.uint8)).shape == (1, 3, 4, 4)


def test_predict_equals_a_plain_forward_whatever_the_batch_size():
    model = net()
    images = torch.randint(0, 256, (11, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        expected = model(plain_input(images))
    seen = []
    for batch_size in (1, 4, 11, 64):
        logits = predict(model, images, Preprocessing(MEAN, STD, 8, 3), batch_size=batch_size, progress=seen.append)
        assert logits.dtype == torch.float32 and logits.device.type == "cpu"
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert seen[:11] == list(range(1, 12))  # progress counts images done, batch by batch
    assert predict(model, images[:0], Preprocessing(MEAN, STD, 8, 3)).shape == (0, 0)


def test_large_images_go_fewer_per_pass_bounded_in_bytes():
    prep = Preprocessing(MEAN, STD, 512, 3)
    rows = inference.batch_rows(prep, 256)
    assert rows < 256 and rows * 4 * 3 * 512 * 512 <= inference.CHUNK_BYTES // 2
    assert inference.batch_rows(Preprocessing(MEAN, STD, 8, 3), 256) == 256
    model = nn.Sequential(nn.Conv2d(3, 2, 3, stride=64), nn.Flatten()).eval()
    images = torch.randint(0, 256, (rows + 3, 3, 512, 512), dtype=torch.uint8)
    sizes = [b.size for b in forward_batches(model, images, prep, batch_size=256)]
    assert sizes == [rows, 3]


def test_captured_layers_equal_manual_hooks_outputs_and_inputs():
    model = net()
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    manual = {}
    handles = [
        model[0].register_forward_hook(lambda _m, _a, out: manual.__setitem__("0", out.detach().clone())),
        model[4].register_forward_hook(lambda _m, _a, out: manual.__setitem__("4", out.detach().clone())),
        model[8].register_forward_pre_hook(lambda _m, args: manual.__setitem__("8", args[0].detach().clone())),
    ]
    with torch.no_grad():
        model(plain_input(images))
    for handle in handles:
        handle.remove()
    (batch,) = forward_batches(model, images, Preprocessing(MEAN, STD, 8, 3), layers=["0", "4"])
    # "0" is followed by an in-place ReLU: the capture is the conv's output, negatives included.
    assert (batch.activations["0"] < 0).any()
    for name in ("0", "4"):
        torch.testing.assert_close(batch.activations[name], manual[name], rtol=1e-5, atol=1e-5)
    (batch,) = forward_batches(model, images, Preprocessing(MEAN, STD, 8, 3), layers=["8"], layer_inputs=True)
    torch.testing.assert_close(batch.activations["8"], manual["8"], rtol=1e-5, atol=1e-5)
    assert n_hooks(model) == 0


def test_hooks_go_when_the_iteration_is_abandoned_or_fails():
    model = net()
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    batches = forward_batches(model, images, Preprocessing(MEAN, STD, 8, 3), batch_size=2, layers=["0", "4"])
    next(batches)
    assert n_hooks(model) == 2
    batches.close()
    assert n_hooks(model) == 0
    with pytest.raises(RuntimeError), capture_activations(model, ["0"], inputs=True):
        assert n_hooks(model) == 1
        model(torch.zeros(1, 2, 8, 8))  # wrong channel count
    assert n_hooks(model) == 0
    from cnntools.core.errors import CnnError

    branchy = nn.ModuleDict({"used": nn.Flatten(), "unused": nn.Identity()})
    branchy.forward = lambda x: branchy["used"](x)
    with pytest.raises(CnnError, match="unused.*did not run"):
        list(forward_batches(branchy, images, Preprocessing(MEAN, STD, 8, 3), device=torch.device("cpu"), layers=["unused"]))


def test_bf16_runs_in_bf16_and_stays_within_its_tolerance():
    model = net()
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    prep = Preprocessing(MEAN, STD, 8, 3)
    (full,) = forward_batches(model, images, prep, precision="fp32", layers=["4"])
    (half,) = forward_batches(model, images, prep, precision="bf16", layers=["4"])
    assert full.activations["4"].dtype == torch.float32
    assert half.activations["4"].dtype == torch.bfloat16  # really computed in reduced precision
    assert half.logits.dtype == torch.float32  # handed back as float32
    assert not torch.equal(half.logits, full.logits)
    # bf16 keeps 8 significant bits: relative error per operation about 2**-8.
    scale = full.logits.abs().max()
    torch.testing.assert_close(half.logits, full.logits, rtol=0.05, atol=0.05 * float(scale))
    torch.testing.assert_close(half.activations["4"].float(), full.activations["4"], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("method", ["gradient", "gradcam", "guided-backprop"])
def test_saliency_at_bf16_is_computed_in_bf16_and_close_to_fp32(method):
    from cnntools.interpret.saliency import rank_correlation, saliency_maps

    model = net()
    x = Preprocessing(MEAN, STD, 8, 3)(torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8))
    dtypes = []
    handle = model[4].register_forward_hook(lambda _m, _a, out: dtypes.append(out.dtype))
    full = saliency_maps(model, x, [0, 1, 2, 3], method=method, layer="5")
    half = saliency_maps(model, x, [0, 1, 2, 3], method=method, layer="5", precision="bf16")
    handle.remove()
    assert set(dtypes) == {torch.float32, torch.bfloat16}
    # Gradient maps come in the gradient's units (float64), CAM maps scaled to 0-1 (float32).
    assert half.dtype == full.dtype == (torch.float64 if method in ("gradient", "guided-backprop", "smoothgrad") else torch.float32)  # gradient maps in their own units
    assert half.shape == full.shape == (4, 8, 8)
    assert not torch.equal(half, full)
    # Relative to each fp32 map's peak: a backward through bf16 ops moves input-gradient maps by
    # about 0.02 on average (a max-pool window whose winner flips routes a gradient to another
    # pixel); CAM maps, read at one layer, move by about 0.001. The ranking of the pixels, which
    # is what a saliency map tells, stays.
    peak = full.flatten(1).amax(1).clamp_min(1e-300)[:, None, None]
    diff = ((half - full).abs() / peak).flatten()
    assert diff.median() < 0.01 and diff.mean() < (0.005 if method == "gradcam" else 0.05)
    assert min(rank_correlation(a, b) for a, b in zip(half, full)) > 0.85
    assert n_hooks(model) == 0


@pytest.fixture(scope="module")
def digits_checkpoint():
    from interpret_fixtures import cached_checkpoint

    return cached_checkpoint("digits")


COMMANDS = {
    "eval": lambda ck, tmp: ["eval", ck],
    "eval --image": lambda ck, tmp: ["eval", ck, "--image", tmp / "img.png"],
    "confusion": lambda ck, tmp: ["confusion", ck],
    "tsne": lambda ck, tmp: ["tsne", "-c", ck, "-n", "40", "--perplexity", "5"],
    "featmaps": lambda ck, tmp: ["featmaps", ck, "-i", "1"],
    "filters": lambda ck, tmp: ["filters", ck, "--top-k", "3"],
    "saliency": lambda ck, tmp: ["saliency", ck, "-i", "0,1", "-m", "gradient"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_model_running_command_runs_through_forward_batches_at_its_precision(cli, digits_checkpoint, tmp_path,
                                                                                   monkeypatch, command):
    from PIL import Image

    Image.new("L", (16, 16), 128).save(tmp_path / "img.png")
    real, calls = inference.forward_batches, []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("precision"))
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "forward_batches", spy)
    for precision in ("fp32", "bf16"):
        calls.clear()
        result = cli(*COMMANDS[command](digits_checkpoint, tmp_path), "--device", "cpu", "--precision", precision,
                     "--format", "json", "-q")
        assert result.exit_code == 0, result.stderr
        assert calls and set(calls) == {precision}


def test_featmaps_and_saliency_outputs_at_bf16_differ_from_fp32_only_within_its_tolerance(cli, digits_checkpoint, tmp_path):
    from safetensors.torch import load_file

    got = {}
    for precision in ("fp32", "bf16"):
        acts, maps = tmp_path / f"a-{precision}.safetensors", tmp_path / f"m-{precision}.safetensors"
        common = ("--device", "cpu", "--precision", precision, "-q")
        assert cli("featmaps", digits_checkpoint, "-i", "2", "--save", acts, *common).exit_code == 0
        assert cli("saliency", digits_checkpoint, "-i", "0-3", "-m", "gradcam", "--save", maps, *common).exit_code == 0
        got[precision] = (load_file(str(acts)), load_file(str(maps)))
    (acts32, maps32), (acts16, maps16) = got["fp32"], got["bf16"]
    assert acts32.keys() == acts16.keys()
    for name in acts32:
        a, b = acts32[name], acts16[name]
        assert b.dtype == torch.float32
        if name != "__input__":
            assert not torch.equal(a, b), name
        assert (a - b).abs().max() <= 0.05 * a.abs().max() + 1e-6, name
    assert not torch.equal(maps32["maps"], maps16["maps"])
    diff = (maps32["maps"] - maps16["maps"]).abs().flatten()
    assert diff.mean() < 0.01 and diff.max() < 0.1  # gradcam: see the library test above


def test_a_model_with_a_resize_rule_fits_dataset_images_once():
    """torchvision's resize + centre crop is not idempotent: a dataset's images go through it
    exactly once on their way to the model (eval, confusion, filters, ... all feed
    `load_for_model` images to `forward_batches`), as they do for image files."""
    from cnntools.checkpoint.metadata import DataRecipe
    from cnntools.data import load_for_model, load_split

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 10)).eval()
    native = load_split("fake:20", "test")
    preprocessing = Preprocessing(MEAN, STD, 20, 3, resize=24)
    once = preprocessing(native.images)
    assert once.shape[2:] == (20, 20)
    with torch.no_grad():
        expected = model(once)
    got = predict(model, load_for_model(DataRecipe("fake:20"), "test", preprocessing, native.classes).images, preprocessing)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # Images fitted already (eval --image fits each file as it reads it) are not fitted again.
    torch.testing.assert_close(predict(model, preprocessing.fit(native.images), preprocessing.for_fitted()),
                               expected, rtol=1e-5, atol=1e-5)


def test_the_one_resize_routine_matches_torchvision_resize_and_center_crop():
    """Preprocessing's resize-and-crop (named models) and the plain resize (datasets) are one
    routine; its crop equals torchvision's Resize(shorter side) + CenterCrop on the same floats."""
    import torch.nn.functional as F
    from torchvision.transforms.v2 import functional as TF

    from cnntools.data.imageset import resize_uint8
    from cnntools.inference.preprocessing import _resize_crop

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 40, 57), dtype=torch.uint8, generator=g)
    for mode in ("bilinear", "bicubic"):
        got = _resize_crop(images, 24, 20, mode)
        interp = TF.InterpolationMode.BILINEAR if mode == "bilinear" else TF.InterpolationMode.BICUBIC
        ref = TF.center_crop(TF.resize(images.float(), [24], interpolation=interp, antialias=True), [20, 20])
        assert got.shape == (3, 3, 20, 20) and got.dtype == torch.uint8
        torch.testing.assert_close(got, ref.round().clamp(0, 255).to(torch.uint8), atol=0, rtol=0)
    plain = resize_uint8(images, 16)
    ref = F.interpolate(images.float(), size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(plain, ref.round().clamp(0, 255).to(torch.uint8), atol=0, rtol=0)
    assert resize_uint8(images, (40, 57)) is images and resize_uint8(images[:0], 8, crop=4).shape == (0, 3, 4, 4)
