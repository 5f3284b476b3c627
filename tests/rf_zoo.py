"""Gradient measurements of torchvision models' receptive fields, for tests/test_rf_zoo.py.

A model is traced with its parameters on the meta device, cut at the node to measure, and
only then given real (positive, random) weights: a 600M-parameter ViT measured at its first
attention allocates one layer. Max pools become average pools of the same geometry, so the
gradient reaches every pixel a unit depends on, not just the maximum's.
"""

from __future__ import annotations

import copy
import functools
import operator
import warnings

import torch
import torchvision
from torch import fx, nn

from cnntools.calc import rf_graph

_MAX_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def min_height(name: str) -> int:
    """The smallest input side the architecture runs on, from its weights' metadata."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    return int(weights.meta.get("min_size", (1, 1))[0])


def _image_size(name: str, size: int) -> int | None:
    return size if name.startswith("vit_") else None  # only ViTs are built for one input size


@functools.lru_cache(maxsize=2)
def _meta_graph(name: str, image_size: int | None) -> fx.GraphModule:
    return rf_graph.trace(rf_graph.build_torchvision(name, image_size or 224))


def meta_graph(name: str, size: int) -> fx.GraphModule:
    """What rf-calc walks: the model's graph on the meta device (built and traced once)."""
    return _meta_graph(name, _image_size(name, size))


@functools.lru_cache(maxsize=2)
def _traced(name: str, image_size: int | None) -> fx.GraphModule:
    kwargs = {"image_size": image_size} if image_size else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rf_graph.parameters_on_meta():
            model = torchvision.models.get_model(name, weights=None, **kwargs)
    return fx.symbolic_trace(model.eval())


def traced(name: str, size: int) -> fx.GraphModule:
    """A fresh copy of the graph to measure: parameters on meta (buffers computed at build
    time, such as Swin's relative position index, stay real)."""
    return copy.deepcopy(_traced(name, _image_size(name, size)))


def node_named(gm: fx.GraphModule, display: str):
    """The graph node rf-calc calls `display` (a layer path)."""
    for node in gm.graph.nodes:
        if rf_graph.display_name(node) == display or node.name == display:
            return node
    raise KeyError(display)


def cut(gm: fx.GraphModule, display: str) -> fx.GraphModule:
    """The graph up to node `display`, with every max pool made an average pool."""
    node = node_named(gm, display)
    firsts = [u for u in node.users if u.target is operator.getitem and u.args[1] == 0]
    if firsts:
        node = firsts[0]  # a layer returning a tuple (attention): its first output
    output = next(n for n in gm.graph.nodes if n.op == "output")
    output.args = (node,)
    for n in list(gm.graph.nodes):
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.MaxPool2d):
            m = gm.get_submodule(n.target)
            assert m.dilation in (1, (1, 1))
            parent, _, leaf = n.target.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, leaf,
                    nn.AvgPool2d(m.kernel_size, m.stride, m.padding, ceil_mode=m.ceil_mode))
        elif n.op == "call_function" and n.target is torch.nn.functional.max_pool2d:
            given = {**dict(zip(_MAX_POOL_ARGS, n.args)), **n.kwargs}
            n.target = torch.nn.functional.avg_pool2d
            n.args = (given["input"], given["kernel_size"])
            n.kwargs = {"stride": given.get("stride"), "padding": given.get("padding", 0),
                        "ceil_mode": given.get("ceil_mode", False)}
    # eliminate_dead_code keeps call_module nodes (torch counts them as possibly impure), so a
    # cut at a ViT's first attention would keep (and materialise) all 32 layers: erase by hand.
    for n in reversed(list(gm.graph.nodes)):
        if n.op not in ("output", "placeholder") and not n.users:
            gm.graph.erase_node(n)
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def parameter_count(gm: nn.Module) -> int:
    return sum(p.numel() for p in gm.parameters())


def materialise(gm: nn.Module, seed: int = 0) -> nn.Module:
    """Real float64 weights (a DenseNet's far-edge gradient, ~90^-58, underflows float32):
    conv/linear weights positive random / fan-in (so activations stay positive
    and no path cancels), biases 0, norms the identity, everything else positive random."""
    generator = torch.Generator().manual_seed(seed)
    norms = (nn.BatchNorm2d, nn.BatchNorm1d, nn.LayerNorm, nn.GroupNorm)
    for module in gm.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            value = torch.empty(p.shape, dtype=torch.float64)
            if isinstance(module, norms) or "bias" in name:
                value.fill_(0.0 if "bias" in name else 1.0)
            else:
                value.uniform_(0.5, 1.5, generator=generator)
                if value.dim() >= 2 and isinstance(module, (nn.Conv2d, nn.Linear, nn.MultiheadAttention)):
                    value /= value[0].numel()
            setattr(module, name, nn.Parameter(value, requires_grad=False))
        for name, b in list(module.named_buffers(recurse=False)):
            if b.is_meta:
                dtype = torch.float64 if b.is_floating_point() else b.dtype
                module._buffers[name] = torch.full(b.shape, 1 if name == "running_var" else 0, dtype=dtype)
            elif b.is_floating_point():
                module._buffers[name] = b.double()
    return gm.eval()


def extent(gm: nn.Module, axes: tuple, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(first, last) input row and column reached by the gradient of the centre unit."""
    # Small positive pixels: residual sums double the activations block after block, and a
    # squeeze-and-excitation sigmoid fed with thousands has a derivative of exactly 0.
    x = (torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5) / 1000
    x.requires_grad_(True)
    y = gm(x)
    index = [0] + [slice(None)] * (y.dim() - 1)
    for dim, tag in enumerate(axes):
        if tag in rf_graph.SPATIAL:
            index[dim] = (y.shape[dim] - 1) // 2
    unit = y[tuple(index)]
    # A random mix of the unit's channels: their plain sum after a LayerNorm is constant (0).
    mix = torch.rand(unit.shape, generator=torch.Generator().manual_seed(2), dtype=unit.dtype) + 0.5
    (grad,) = torch.autograd.grad((unit * mix).sum(), x)
    reached = grad[0].abs().sum(0) > 0
    rows = torch.nonzero(reached.any(1)).flatten()
    cols = torch.nonzero(reached.any(0)).flatten()
    return (int(rows.min()), int(rows.max())), (int(cols.min()), int(cols.max()))


def measure(name: str, display: str, axes: tuple, height: int, width: int, image_size: int | None = None):
    """Build, cut, weight and measure torchvision model `name` at node `display`."""
    gm = materialise(cut(traced(name, image_size or height), display))
    return extent(gm, axes, height, width)
