"""rf-calc --arch across torchvision's classification zoo, checked against input gradients.

For every model, rf-calc's answer at the default input size must be one of:
- a number of pixels that equals the gradient extent of a centre unit of the last feature map
  (random positive weights, BatchNorm in eval mode) on an input wide enough to contain it --
  measured along the width, on an input as low as the architecture allows (the field along
  one axis does not depend on the other axis's size);
- `global`, where the gradient of that unit covers the whole input at every size tried, and
  already at the node rf-calc names (where the local field alone is far smaller than the input);
- a one-line refusal.
The regular suite runs one or two models per family; the full sweep is marked slow.
"""

from __future__ import annotations

import pytest
import torchvision

from cnntools.calc import rf_graph
from rf_zoo import cut, extent, materialise, measure, meta_graph, min_height, parameter_count, traced

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ZOO = torchvision.models.list_models(module=torchvision.models)
FAST = ["alexnet", "vgg11", "resnet18", "googlenet", "inception_v3", "mobilenet_v2", "mnasnet0_5", "shufflenet_v2_x0_5",
        "squeezenet1_1", "regnet_x_400mf", "efficientnet_b0", "mobilenet_v3_small", "regnet_y_400mf", "vit_b_32",
        "swin_t"]  # one per family, the cheapest to measure (DenseNet, ConvNeXt and MaxViT: slow sweep only)
BIG = 40_000_000  # parameters: above this, a global answer is measured where it becomes global only


def global_sizes(name: str) -> list[int]:
    """Two small square sizes the architecture takes."""
    if name.startswith("vit_"):
        patch = int(name.rsplit("_", 1)[1])
        return [2 * patch, 3 * patch]
    if name.startswith("maxvit"):
        return [224]
    return [64, 96]


def check_local(name: str, default) -> str:
    field_h, field_w = default.true
    height = max(min_height(name), 1)
    width = -(-(field_w.receptive_field + 2 * field_w.jump + 32) // 32) * 32
    model = meta_graph(name, width)
    wide = rf_graph.analyse(model, (height, width))
    assert wide.true == default.true, "the field of a local network does not depend on the input size"
    axis = wide.axes.index("W")
    u = (wide.shape[axis] - 1) // 2
    left = field_w.start + u * field_w.jump
    right = left + field_w.receptive_field - 1
    assert 0 <= left and right <= width - 1, f"{width} columns do not contain the field [{left}, {right}]"
    _, cols = measure(name, wide.node, wide.axes, height, width)
    assert cols == (left, right), name
    if field_h != field_w:  # a non-square field: measure the height too
        tall = rf_graph.analyse(model, (width, height))
        v = (tall.shape[tall.axes.index("H")] - 1) // 2
        top = field_h.start + v * field_h.jump
        rows, _ = measure(name, tall.node, tall.axes, width, height)
        assert rows == (top, top + field_h.receptive_field - 1), name
    return f"{name}: {field_w.receptive_field} px"


def check_global(name: str, default) -> str:
    for size in global_sizes(name):
        small = rf_graph.analyse(meta_graph(name, size), size)
        assert isinstance(small.true, rf_graph.Whole), f"{name} at {size}: {small.true}"
        whole = ((0, size - 1), (0, size - 1))
        # Where rf-calc says the field becomes global, the gradient already covers the input ...
        at = small.true.at
        gm = materialise(cut(traced(name, size), at))
        assert extent(gm, small.layouts[at], size, size) == whole, f"{name} at {size}: not global at {at}"
        # ... and so it does at the last feature map (measured where the model is small enough).
        gm = cut(traced(name, size), small.node)
        if parameter_count(gm) <= BIG:
            assert extent(materialise(gm), small.axes, size, size) == whole, f"{name} at {size}: {small.node}"
    return f"{name}: global from {default.true.at}"


# Models whose graphs differ from a sibling's only in channel counts (widths, groups): the
# fields cannot differ, so the test checks that rf-calc's rows are the sibling's, layer for
# layer, and leaves the gradient measurement to the sibling's own test.
TWINS = {
    "resnext50_32x4d": "resnet50", "wide_resnet50_2": "resnet50", "resnext101_32x8d": "resnet101",
    "resnext101_64x4d": "resnet101", "wide_resnet101_2": "resnet101", "convnext_base": "convnext_small",
    "convnext_large": "convnext_small", "swin_b": "swin_s", "swin_v2_b": "swin_v2_s", "mnasnet0_75": "mnasnet0_5",
    "mnasnet1_0": "mnasnet0_5", "mnasnet1_3": "mnasnet0_5", "shufflenet_v2_x1_0": "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_5": "shufflenet_v2_x0_5", "shufflenet_v2_x2_0": "shufflenet_v2_x0_5",
}


def geometry(analysis) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "size"} for row in analysis.rows]


def check(name: str, cli) -> str:
    size = rf_graph.torchvision_default_size(name)
    default = rf_graph.analyse(meta_graph(name, size), size)
    if name in TWINS:
        twin = TWINS[name]
        assert rf_graph.torchvision_default_size(twin) == size
        assert geometry(default) == geometry(rf_graph.analyse(meta_graph(twin, size), size)), f"{name} vs {twin}"
        return f"{name}: as {twin}"
    if isinstance(default.true, rf_graph.Unfollowed):
        result = cli("rf-calc", "--arch", f"torchvision:{name}")
        assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
        assert result.stderr.startswith("Error:") and default.true.at in result.stderr
        return f"{name}: refused"
    if isinstance(default.true, rf_graph.Whole):
        return check_global(name, default)
    return check_local(name, default)


@pytest.mark.parametrize("name", FAST)
def test_family_representatives(name, cli):
    check(name, cli)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(ZOO) - set(FAST)))
def test_whole_zoo(name, cli):
    check(name, cli)
