"""rf-calc: SPEC cases, JSON shape, errors, and receptive fields measured by back-propagation."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from cnntools.calc import rf
from cnntools.calc.rf_graph import model_receptive_fields

HYPO = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    "args, expected",
    [
        (["-k", "3", "-s", "1", "-n", "3"], "7"),
        (["-k", "4", "-s", "2", "-n", "2"], "10"),
        (["-k", "3", "-d", "1,2,4"], "15"),
        (["-k", "3,2,3,2", "--type", "conv,pool,conv,pool"], "10"),
        (["--layers", "conv5,maxpool2,conv5,maxpool2"], "16"),
    ],
)
def test_quiet_prints_final_receptive_field(cli, args, expected):
    result = cli("rf-calc", *args, "-q")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == expected + "\n"


def test_json_document(cli):
    result = cli("rf-calc", "-k", "3", "-s", "2", "-p", "1", "-n", "3", "--input-size", "32", "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = result.json()
    assert doc["receptive_field"] == 15
    assert [layer["receptive_field"] for layer in doc["layers"]] == [3, 7, 15]
    assert [layer["jump"] for layer in doc["layers"]] == [2, 4, 8]
    assert [layer["start"] for layer in doc["layers"]] == [-1, -3, -7]
    assert [layer["center"] for layer in doc["layers"]] == [0, 0, 0]
    assert [layer["size"] for layer in doc["layers"]] == [16, 8, 4]


def test_table_and_csv(cli):
    table = cli("rf-calc", "-k", "3", "-n", "3")
    header = table.stdout.splitlines()[0].split()
    assert header == ["layer", "type", "kernel", "stride", "padding", "dilation", "receptive_field", "jump", "start", "center"]
    assert table.stdout.splitlines()[-1].split() == ["3", "conv", "3", "1", "0", "1", "7", "1", "0", "3"]
    # The headers are the JSON/CSV keys; center is a number column, right-aligned like the others.
    pooled = cli("rf-calc", "-k", "2", "--type", "pool", "-n", "2").stdout.splitlines()
    assert pooled[0].endswith("center") and [line.split()[-1] for line in pooled[1:]] == ["0.5", "1.5"]
    assert len(pooled[1]) == len(pooled[2]) == len(pooled[0])  # right-aligned: the cells end under the header
    csv = cli("rf-calc", "-k", "2", "--type", "pool", "-n", "2", "--format", "csv").stdout.splitlines()
    assert csv[0] == "layer,type,kernel,stride,padding,dilation,receptive_field,jump,start,center"
    assert csv[2] == "2,pool,2,2,0,1,4,4,0,1.5"


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give the layers one way"),
        (["-k", "3", "--layers", "conv3"], "-k and --layers"),
        (["-k", "3,3", "-s", "1,1,1"], "same length"),
        (["-k", "3,3", "-n", "3"], "does not match"),
        (["-k", "0"], "impossible layer"),
        (["-k", "3", "-s", "x"], "--stride"),
        (["-k", "3", "--type", "dense"], "unknown layer type"),
        (["--layers", "convT4-s2"], "transposed"),
        (["-k", "5", "-n", "3", "--input-size", "8"], "larger --input-size"),
        (["--layers", "conv3,blah"], "cannot read layer"),
        (["-k", "3", "-n", "0"], "-n must be at least 1"),
        (["-k", "3", "-n", "-1"], "-n must be at least 1"),
        (["-k", "x"], "--kernel: 'x'"),
        (["-k", "3", "-d", "1,x"], "--dilation"),
        (["-k", "3", "-p", "-1"], "impossible layer"),
        (["--arch", "no-such-net"], "unknown architecture"),
        (["--arch", "torchvision:no_such_net"], "torchvision has no model"),
    ],
)
def test_errors(cli, args, message):
    result = cli("rf-calc", *args)
    # A bad option value is bad usage (2, as Click's own checks); an architecture that does not exist is not
    assert result.exit_code == (1 if "--arch" in args else 2), result.stdout
    assert result.stderr.startswith("Error:") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- gradient measurement


def measured_extent(model: nn.Module, size: int, unit: int | None = None) -> tuple[int, int, int]:
    """(first, last) input column whose gradient is non-zero for one output unit, and that unit."""
    x = torch.ones(1, 1, size, size, dtype=torch.float64, requires_grad=True)
    y = model(x)
    u = (y.shape[-1] - 1) // 2 if unit is None else unit
    y[0, :, u, u].sum().backward()
    cols = torch.nonzero(x.grad[0, 0].abs().sum(0)).flatten()
    return int(cols.min()), int(cols.max()), u


def positive_weights(model: nn.Module, dtype=torch.float64) -> nn.Module:
    """All-positive weights (1/fan-in) and zero biases, so gradients cannot cancel; eval mode.

    With 1/fan-in weights a gradient path loses at most a factor k*k per layer, far above
    float32's smallest normal number for these depths.
    """
    model = model.to(dtype).eval().requires_grad_(False)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.fill_(1.0 / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
    return model


def stack(layers: list[dict]) -> nn.Sequential:
    """Real layers for rf.expand_layers' dicts (pools as AvgPool2d: same geometry, dense gradient)."""
    modules = []
    for layer in layers:
        if layer["type"] == "conv":
            modules.append(nn.Conv2d(1, 1, layer["kernel"], layer["stride"], layer["padding"], layer["dilation"]))
        else:
            modules.append(nn.AvgPool2d(layer["kernel"], layer["stride"], layer["padding"]))
    return positive_weights(nn.Sequential(*modules))


@st.composite
def layer_stacks(draw):
    n = draw(st.integers(1, 4))
    layers = []
    for _ in range(n):
        kind = draw(st.sampled_from(["conv", "conv", "pool"]))
        k = draw(st.integers(1, 5))
        layers.append(
            {
                "type": kind,
                "kernel": k,
                "stride": draw(st.integers(1, 2)) if kind == "conv" else draw(st.integers(1, k)),
                "padding": draw(st.integers(0, 2 if kind == "conv" else k // 2)),
                "dilation": draw(st.integers(1, 3)) if kind == "conv" else 1,
            }
        )
    return layers


@HYPO
@given(layers=layer_stacks())
def test_rf_equals_gradient_measured(layers):
    rows = rf.receptive_fields(layers)
    last = rows[-1]
    # Large enough that the centre unit's field and every window under it stay clear of the
    # padding: the measured extent is then exactly [start + u*jump, start + u*jump + rf - 1].
    size = 3 * last["receptive_field"] + 4 * sum(r["padding"] * r["jump"] for r in rows) + 8
    first, final, u = measured_extent(stack(layers), size)
    assert final - first + 1 == last["receptive_field"]
    assert first == last["start"] + u * last["jump"]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layers=layer_stacks())
def test_cli_json_matches_library(cli, layers):
    args = ["rf-calc", "-k", ",".join(str(r["kernel"]) for r in layers),
            "-s", ",".join(str(r["stride"]) for r in layers), "-p", ",".join(str(r["padding"]) for r in layers),
            "-d", ",".join(str(r["dilation"]) for r in layers), "--type", ",".join(r["type"] for r in layers),
            "--format", "json"]
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    expected = rf.receptive_fields(layers)
    assert result.json()["layers"] == expected
    assert result.json()["receptive_field"] == expected[-1]["receptive_field"]


def test_start_reaches_into_padding():
    layers = rf.expand_layers("3", "1", "1", n=3)
    last = rf.receptive_fields(layers)[-1]
    assert (last["receptive_field"], last["start"]) == (7, -3)
    first, final, _ = measured_extent(stack(layers), 16, unit=0)
    assert (first, final) == (0, last["start"] + last["receptive_field"] - 1)


# ---------------------------------------------------------------------------- models (--arch)


def measure_model_layers(model: nn.Module, rows: list[dict], size: int, in_channels: int = 3):
    """Measured extent of the centre unit of every reported layer (max pools swapped for avg)."""
    measured = copy.deepcopy(model)
    for name, module in list(measured.named_modules()):
        if isinstance(module, nn.MaxPool2d):
            parent = measured.get_submodule(name.rpartition(".")[0]) if "." in name else measured
            setattr(parent, name.rpartition(".")[2],
                    nn.AvgPool2d(module.kernel_size, module.stride, module.padding, ceil_mode=module.ceil_mode))
    measured = positive_weights(measured, torch.float32)
    outputs = {}
    handles = [
        measured.get_submodule(row["name"]).register_forward_hook(
            lambda _m, _i, out, name=row["name"]: outputs.__setitem__(name, out)
        )
        for row in rows
    ]
    x = torch.ones(1, in_channels, size, size, dtype=torch.float32, requires_grad=True)
    measured(x)
    for h in handles:
        h.remove()
    results = []
    for row in rows:
        out = outputs[row["name"]]
        u = (out.shape[-1] - 1) // 2
        (grad,) = torch.autograd.grad(out[0, :, u, u].sum(), x, retain_graph=True)
        cols = torch.nonzero(grad[0].abs().sum((0, 1))).flatten()
        results.append((row, u, int(cols.min()), int(cols.max())))
    return results


def check_model(model: nn.Module, size: int, in_channels: int = 3, most: int = 24):
    """Compare the graph walk with gradients for up to `most` layers (first ones, then spread out:
    every later layer's field already contains the unions of the branches before it)."""
    rows = model_receptive_fields(model, size, in_channels)
    assert all(row["size"] for row in rows if row["receptive_field"] != "global")  # every map has a size
    maps = [row for row in rows if row["size"]]  # (a linear layer over the flattened map has none)
    picked = maps if len(maps) <= most else maps[:3] + maps[3::-(-(len(maps) - 3) // (most - 4))] + maps[-1:]
    picked = list({row["name"]: row for row in picked}.values())
    for row, u, first, last in measure_model_layers(model, picked, size, in_channels):
        if row["receptive_field"] == "global":
            assert (first, last) == (0, size - 1), row["name"]
            continue
        left = row["start"] + u * row["jump"]
        right = left + row["receptive_field"] - 1
        assert (first, last) == (max(0, left), min(size - 1, right)), row["name"]
    return rows


class TwoBranch(nn.Module):
    """A residual block whose branches see very different fields (7x7 vs 3x3-stride path)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.wide = nn.Conv2d(4, 4, 7, padding=3)
        self.narrow = nn.Conv2d(4, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = self.wide(x) + self.narrow(x)
        return self.pool(self.down(x))


def test_residual_branches_take_the_larger_field():
    rows = check_model(TwoBranch(), 48, in_channels=1)
    by_name = {row["name"]: row for row in rows}
    assert by_name["wide"]["receptive_field"] == 9 and by_name["narrow"]["receptive_field"] == 5
    assert by_name["down"]["receptive_field"] == 11  # 9 (the larger branch) + 2
    assert by_name["pool"]["receptive_field"] == 13


def test_resnet18_matches_gradient_and_literature():
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    rows = model_receptive_fields(model, 224)
    last_conv = [row for row in rows if row["type"] == "conv"][-1]
    assert (last_conv["name"], last_conv["receptive_field"], last_conv["jump"]) == ("layer4.1.conv2", 435, 32)
    check_model(model, 64)


def test_vgg16_matches_gradient_and_literature():
    import torchvision

    # VGG-16's conv/pool trunk as torchvision builds it (its 100M-parameter classifier is not needed).
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    rows = model_receptive_fields(features, 224)
    assert len(rows) == 18 and rows[-1]["receptive_field"] == 212 and rows[-1]["jump"] == 32
    check_model(features, 32)


@pytest.mark.parametrize("arch", ["lenet", "simple-cnn", "compact-cnn", "resnet18"])
def test_registered_architectures_match_gradient(cli, arch):
    models = pytest.importorskip("cnntools.models")
    model = models.create_model(arch, in_channels=3, image_size=32, num_classes=10)
    rows = check_model(model, 32)
    result = cli("rf-calc", "--arch", arch, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["layers"] == rows
    quiet = cli("rf-calc", "--arch", arch, "-q")
    local = [r["receptive_field"] for r in rows if r["receptive_field"] != "global"]
    assert quiet.stdout == f"{result.json()['receptive_field']}\n"
    assert result.json()["receptive_field"] == max(local)  # the last feature map holds every branch's field


def test_functional_pool_is_named_by_its_graph_node():
    # Names must be stable: a function's repr carries its memory address.
    import torch.nn.functional as F

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return F.adaptive_avg_pool2d(self.conv(x), 1)

    rows = model_receptive_fields(Net(), 8)
    assert [r["name"] for r in rows] == ["conv", "adaptive_avg_pool2d"]
    assert rows[-1]["receptive_field"] == "global"


# ---------------------------------------------------------------------------- torchvision (--arch torchvision:NAME)


def test_default_size_comes_from_the_weights_transforms(cli):
    # inception_v3's weights use 299 crops; its aux head (training only) is not traced.
    result = cli("rf-calc", "--arch", "torchvision:inception_v3", "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = result.json()
    assert doc["schema"] == "cnntools.rf-calc/1"
    assert (doc["input_size"], doc["receptive_field"], doc["jump"], doc["start"]) == (299, 1311, 32, -618)  # Araujo et al.
    assert doc["exceeds_input"] is True and doc["global_at"] is None
    assert any(row["name"].endswith("max_pool2d") for row in doc["layers"])  # F.max_pool2d followed


def test_gated_network_is_global_with_its_local_field_beside(cli):
    result = cli("rf-calc", "--arch", "torchvision:efficientnet_b0", "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = result.json()
    assert doc["receptive_field"] == "global" and doc["global_at"] == "features.1.0.block.1.mul"
    assert "features.1.0.block.1.avgpool" in doc["global_reason"]
    assert doc["local_receptive_field"] == 851 and doc["exceeds_input"] is False
    quiet = cli("rf-calc", "--arch", "torchvision:efficientnet_b0", "-q")
    assert quiet.stdout == "global\n"
    table = cli("rf-calc", "--arch", "torchvision:efficientnet_b0")
    assert "local_receptive_field" in table.stdout.splitlines()[0]
    assert "local field, ignoring gating branches" in table.stderr and "851 px" in table.stderr


def test_field_within_the_input_is_not_flagged(cli):
    doc = cli("rf-calc", "--arch", "torchvision:alexnet", "--format", "json").json()
    assert (doc["receptive_field"], doc["exceeds_input"]) == (195, False)
    doc = cli("rf-calc", "--arch", "torchvision:resnet50", "--format", "json").json()
    assert (doc["receptive_field"], doc["exceeds_input"]) == (427, True)


def test_unfollowable_graph_is_refused_in_one_line(cli):
    # At 512 Swin's last map is 16x16 tokens under 7x7 shifted windows: a unit's field depends
    # on where it sits in the window grid, which a single number cannot say.
    result = cli("rf-calc", "--arch", "torchvision:swin_t", "--input-size", "512")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("Error: torchvision:swin_t: node ") and "windowed attention" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert cli("rf-calc", "--arch", "torchvision:swin_t", "-q").stdout == "global\n"  # 224: the 7x7 window covers the map


def test_bad_input_size_is_one_line(cli):
    result = cli("rf-calc", "--arch", "torchvision:vgg11", "--input-size", "8")
    assert result.exit_code == 1 and result.stderr.startswith("Error:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_functional_calls_are_followed():
    import torch.nn.functional as F

    from cnntools.calc.rf_graph import analyse

    class Net(nn.Module):
        def __init__(self, pool):
            super().__init__()
            self.pool = pool
            self.a = nn.Conv2d(1, 2, 3)
            self.b = nn.Conv2d(1, 2, 5, padding=2)

        def forward(self, x):
            y = self.pool(self.a(F.pad(x, (1, 1, 1, 1))), 3, stride=2, padding=1)
            z = F.avg_pool2d(self.b(x), 2)
            return torch.cat([y, z], 1).relu()

    analysis = analyse(Net(F.max_pool2d), 48, in_channels=1)
    assert [row["type"] for row in analysis.rows] == ["conv", "maxpool", "conv", "avgpool"]
    assert [row["receptive_field"] for row in analysis.rows] == [3, 5, 5, 6]
    field = analysis.true[1]  # the union of both branches
    # Measured with the max pool as an average pool of the same geometry (a dense gradient).
    first, last, u = measured_extent(positive_weights(Net(F.avg_pool2d)), 48)
    assert (first, last) == (field.start + u * field.jump, field.start + u * field.jump + field.receptive_field - 1)


def test_overflowing_arithmetic_is_caught():
    from cnntools.calc.rf_graph import MAX_FIELD, analyse
    from cnntools.core.errors import CnnError

    with torch.device("meta"):
        wild = nn.Conv2d(1, 1, 3, dilation=MAX_FIELD, padding=MAX_FIELD)
    with pytest.raises(CnnError, match="arithmetic bug"):
        analyse(wild, 8, in_channels=1)
