"""Architecture registry: parameter counts of SPEC §1.5, shapes at every input, no in-place ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnntools.models import ARCHITECTURES, count_parameters, create_model, get_architecture, list_architectures
from cnntools.core.errors import CnnError

SPEC_COUNTS = {"lenet": 62_006, "simple-cnn": 620_362, "resnet18": 11_173_962, "compact-cnn": 438_386}


@pytest.mark.parametrize("name,expected", sorted(SPEC_COUNTS.items()))
def test_parameter_counts_match_spec(name, expected):
    assert count_parameters(create_model(name, in_channels=3, image_size=32, num_classes=10)) == expected


def test_mlp_is_the_mnist_perceptron():
    model = create_model("mlp", in_channels=1, image_size=28, num_classes=10)
    assert count_parameters(model) == 784 * 128 + 128 + 128 * 10 + 10
    assert isinstance(model.activation, nn.Sigmoid)


def test_lenet_matches_functional_lenet():
    """LeNet's forward equals the same computation spelled out with torch.nn.functional."""
    torch.manual_seed(0)
    model = create_model("lenet", 3, 32, 10).eval()
    x = torch.randn(2, 3, 32, 32)
    c1, c2 = model.features[0], model.features[4]
    f1, f2, f3 = model.classifier[0], model.classifier[2], model.classifier[4]
    h = F.max_pool2d(F.relu(F.conv2d(x, c1.weight, c1.bias)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, c2.weight, c2.bias)), 2).flatten(1)
    h = F.linear(F.relu(F.linear(F.relu(F.linear(h, f1.weight, f1.bias)), f2.weight, f2.bias)), f3.weight, f3.bias)
    assert torch.allclose(model(x), h, atol=1e-6)


def test_lenet_batchnorm_and_output_activation():
    plain = create_model("lenet", 3, 32, 10)
    bn = create_model("lenet", 3, 32, 10, batchnorm=True)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 2
    assert count_parameters(bn) == count_parameters(plain) + 2 * (6 + 16)
    torch.manual_seed(0)
    relu = create_model("lenet", 3, 32, 10, output_activation="relu").eval()
    tanh = create_model("lenet", 3, 32, 10, output_activation="tanh").eval()
    x = torch.randn(16, 3, 32, 32)
    assert (relu(x) >= 0).all()
    assert (tanh(x).abs() <= 1).all()


def test_resnet18_stems():
    small = create_model("resnet18", 3, 32, 10)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    big = create_model("resnet18-imagenet", 3, 224, 1000)
    from torchvision.models import resnet18

    assert count_parameters(big) == count_parameters(resnet18())


@pytest.mark.parametrize("name", ["lenet", "simple-cnn", "resnet18", "resnet18-imagenet", "compact-cnn", "vgg16", "mlp"])
@pytest.mark.parametrize("channels,classes", [(1, 10), (3, 7)])
def test_every_architecture_adapts_to_channels_size_and_classes(name, channels, classes):
    arch = get_architecture(name)
    heavy = name in ("vgg16", "resnet18", "resnet18-imagenet")
    for size in sorted({arch.min_size} if heavy else {arch.min_size, max(arch.min_size, 40)}):
        model = create_model(name, in_channels=channels, image_size=size, num_classes=classes).eval()
        with torch.no_grad():
            out = model(torch.randn(2, channels, size, size))
        assert out.shape == (2, classes)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES) or ["lenet"])
def test_no_inplace_activations(name):
    model = create_model(name, 3, max(32, get_architecture(name).min_size), 10)
    assert not [m for m in model.modules() if getattr(m, "inplace", False)]


def test_vgg16_small_head_and_imagenet_head():
    small = create_model("vgg16", 3, 32, 10)
    assert isinstance(small.avgpool, nn.AdaptiveAvgPool2d) and small.classifier[-1].out_features == 10
    assert count_parameters(small) < 16_000_000  # no 120M-parameter head for 1x1 feature maps
    assert sum(isinstance(m, nn.Conv2d) for m in small.features) == 13
    assert count_parameters(small.features) == 14_714_688  # torchvision VGG-16's conv layers


def test_errors_are_one_line():
    with pytest.raises(CnnError, match="unknown architecture 'nope'"):
        create_model("nope")
    with pytest.raises(CnnError, match="at least 16x16"):
        create_model("lenet", 3, 8, 10)
    with pytest.raises(CnnError, match="output-activation"):
        create_model("simple-cnn", output_activation="relu")


def test_pretrained_needs_the_cached_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CnnError) as error:
        create_model("resnet18-imagenet", 3, 224, 10, pretrained=True)
    message = str(error.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    with pytest.raises(CnnError, match="no pretrained weights"):
        create_model("lenet", pretrained=True)


def _cached_resnet18(tmp_path, monkeypatch):
    """A random resnet18 saved where torchvision looks for its weight file (TORCH_HOME=tmp_path)."""
    from torchvision.models import resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(1)
    reference = resnet18()
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(reference.state_dict(), folder / "resnet18-f37072fd.pth")
    return reference


def test_pretrained_loads_cached_weights_and_replaces_the_head(tmp_path, monkeypatch):
    reference = _cached_resnet18(tmp_path, monkeypatch)
    model = create_model("resnet18-imagenet", 3, 64, 5, pretrained=True)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.fc.out_features == 5


def test_list_archs_cli(cli):
    result = cli("train", "--list-archs", "--format", "json")
    assert result.exit_code == 0, result.stderr
    rows = {r["arch"]: r for r in result.json()["architectures"]}
    for name, expected in SPEC_COUNTS.items():
        assert rows[name]["parameters"] == expected
    assert set(rows) == set(ARCHITECTURES)
    assert all(r["description"] for r in rows.values())
    table = cli("train", "--list-archs")
    assert "62006" in table.stdout.replace(",", "") and "compact-cnn" in table.stdout
    assert cli("train", "--arch", "help").stdout == table.stdout  # the other spelling people try


def test_stored_catalog_is_what_the_real_models_give():
    """`train --list-archs` prints stored rows (cnntools.models.catalog) so it imports no torch;
    they must be the rows the real models give (rewrite them with `python -m cnntools.models.catalog`)."""
    from cnntools.models import catalog

    assert catalog.ROWS == list_architectures(), "run: python -m cnntools.models.catalog"


def test_list_architectures_counts_at_other_inputs():
    rows = {r["arch"]: r for r in list_architectures(in_channels=1, image_size=28, num_classes=10)}
    assert rows["mlp"]["parameters"] == 784 * 128 + 128 + 1290


def _no_weight_file_reads(monkeypatch):
    """Any attempt to find or read torchvision's weights fails the test."""
    import torch.hub

    from cnntools.models import hub

    def refuse(*args, **kwargs):
        raise AssertionError("a weight file was looked for")

    monkeypatch.setattr(hub, "cached_weights_path", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def test_torchvision_arch_trains_from_scratch_without_the_weight_file(cli, tmp_path, monkeypatch):
    """`train --arch torchvision:resnet18` with an empty torch cache: trains, writes a checkpoint
    that eval rebuilds; only an explicit --pretrained looks for the file, and says where."""
    home = tmp_path / "empty-torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    data = "fake:40,size=16,channels=1,classes=3"  # 30 train images: one weight update
    out = tmp_path / "tv.safetensors"
    with monkeypatch.context() as m:
        _no_weight_file_reads(m)
        result = cli("train", "--arch", "torchvision:resnet18", "--data", data, "--epochs", "1", "--batch-size", "32",
                     "--device", "cpu", "-o", out, "-q")
        assert result.exit_code == 0, result.stderr
        evaluated = cli("eval", out, "--data", data, "--format", "json", "--device", "cpu", "-q")
        assert evaluated.exit_code == 0, evaluated.stderr
    doc = evaluated.json()["models"][0]
    assert doc["arch"] == "torchvision:resnet18" and doc["images"] == 8 and 0 <= doc["accuracy"] <= 1
    from cnntools.checkpoint import read_metadata

    meta = read_metadata(out)
    assert meta.arch == {"arch": "torchvision:resnet18", "in_channels": 1, "image_size": 16, "num_classes": 3}
    assert not home.exists()  # nothing was looked up in, or written to, the torch cache
    pretrained = cli("train", "--arch", "torchvision:resnet18", "--pretrained", "--data", data, "--epochs", "1",
                     "--device", "cpu", "-o", tmp_path / "p.safetensors", "-q")
    lines = pretrained.stderr.strip().splitlines()
    assert pretrained.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: ")
    assert str(home / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in lines[0]
    assert not (tmp_path / "p.safetensors").exists()


@pytest.mark.parametrize("name", ["googlenet", "mobilenet_v3_small"])
def test_torchvision_builds_for_any_channels_and_classes(name, monkeypatch):
    """One tensor of logits in training mode (no auxiliary heads), a stem remade for 1 channel."""
    _no_weight_file_reads(monkeypatch)
    model = create_model(f"torchvision:{name}", in_channels=1, image_size=64, num_classes=4).train()
    out = model(torch.randn(2, 1, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1


def test_torchvision_pretrained_fills_what_fits(tmp_path, monkeypatch):
    """--pretrained on torchvision:NAME copies the cached weights; a 1-channel stem and a 5-class
    head keep their own init."""
    reference = _cached_resnet18(tmp_path, monkeypatch)
    model = create_model("torchvision:resnet18", 1, 64, 5, pretrained=True)
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.conv1.weight.shape == (64, 1, 7, 7) and model.fc.out_features == 5
    with pytest.raises(CnnError, match="torchvision has no model 'resnet_nope'"):
        create_model("torchvision:resnet_nope", 3, 64, 5)
