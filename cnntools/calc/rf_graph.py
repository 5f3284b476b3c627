"""Receptive fields of every conv/pool layer of a real model, read from its own graph.

The model is traced with torch.fx; receptive field, jump and start flow along the graph
(`cnntools.calc.rf.RF`). Where branches meet (a residual add, a concatenation) the field
is the union of the incoming fields, so a residual block reports the larger one. Layers
whose geometry does not move the field (ReLU, BatchNorm, dropout, flatten) pass it through.
Heights are followed; the registered architectures are square.

torch is imported inside the functions: only `rf-calc --arch` pays for it.
"""

from __future__ import annotations

import math

from cnntools.calc.rf import RF
from cnntools.output import CnnError


def _pair(value) -> int:
    """First (height) element of an int-or-tuple module argument."""
    if isinstance(value, (tuple, list)):
        return int(value[0])
    return int(value)


def _conv_geometry(module) -> tuple[int, int, int, int]:
    kernel = _pair(module.kernel_size)
    stride = _pair(module.stride)
    dilation = _pair(getattr(module, "dilation", 1))
    padding = module.padding
    if isinstance(padding, str):  # 'same' / 'valid'
        padding = dilation * (kernel - 1) // 2 if padding == "same" else 0
    return kernel, stride, _pair(padding), dilation


def _adaptive_geometry(in_size: int, out_size) -> tuple[int, int]:
    """Largest window and smallest step of an adaptive pool (exact when sizes divide)."""
    out = out_size[0] if isinstance(out_size, (tuple, list)) else out_size
    out = in_size if out is None else int(out)  # None: that dimension keeps its size
    kernel = max(math.ceil((i + 1) * in_size / out) - (i * in_size) // out for i in range(out))
    stride = in_size // out if out > 1 else in_size
    return kernel, max(1, stride)


def model_receptive_fields(model, input_size: int, in_channels: int = 3) -> list[dict]:
    """RF, jump, start and output size of every conv/pool layer of `model` (an nn.Module).

    `input_size` is the (square) input side; shapes come from a forward pass on zeros.
    """
    import torch
    from torch import fx, nn
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        traced = fx.symbolic_trace(model)
    except Exception as error:  # noqa: BLE001 - fx raises many kinds on dynamic control flow
        raise CnnError(f"cannot trace the model's graph with torch.fx ({type(error).__name__}: {error})") from None
    was_training = model.training
    traced.eval()
    with torch.no_grad():
        ShapeProp(traced).propagate(torch.zeros(1, in_channels, input_size, input_size))
    if was_training:
        model.train()
    modules = dict(traced.named_modules())
    fields: dict = {}
    rows: list[dict] = []

    def height(node) -> int | None:
        meta = node.meta.get("tensor_meta")
        shape = getattr(meta, "shape", None)
        return int(shape[2]) if shape is not None and len(shape) == 4 else None

    def inputs(node) -> list:
        found = []

        def visit(arg):
            if isinstance(arg, fx.Node) and arg in fields:
                found.append(fields[arg])
            elif isinstance(arg, (list, tuple)):
                for a in arg:
                    visit(a)
            elif isinstance(arg, dict):
                for a in arg.values():
                    visit(a)

        visit(node.args)
        visit(node.kwargs)
        return found

    def record(node, kind: str, rf: RF, kernel: int, stride: int, padding: int, dilation: int) -> None:
        rows.append(
            {"layer": len(rows) + 1, "name": node.target if node.op == "call_module" else node.name, "type": kind, "kernel": kernel, "stride": stride,
             "padding": padding, "dilation": dilation, "size": height(node), **rf.as_dict()}
        )

    for node in traced.graph.nodes:
        if node.op == "placeholder":
            fields[node] = RF()
            continue
        incoming = inputs(node)
        if not incoming:
            continue
        rf = incoming[0]
        for other in incoming[1:]:
            rf = rf.union(other)
        target = modules.get(node.target) if node.op == "call_module" else None
        fn = node.target if node.op == "call_function" else None
        in_height = height(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        if isinstance(target, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            raise CnnError(f"layer {node.target}: transposed convolutions have no receptive field in this sense")
        if isinstance(target, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            kind, geometry = "conv", _conv_geometry(target)
        elif isinstance(target, (nn.MaxPool2d, nn.AvgPool2d, nn.MaxPool1d, nn.AvgPool1d)):
            kind = "maxpool" if "Max" in type(target).__name__ else "avgpool"
            geometry = _conv_geometry(target)
        elif isinstance(target, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and in_height is not None:
            kind, geometry = "adaptivepool", (*_adaptive_geometry(in_height, target.output_size), 0, 1)
        elif fn is not None and getattr(fn, "__name__", "") in ("max_pool2d", "avg_pool2d", "conv2d"):
            raise CnnError(
                f"node {node.name}: functional {fn.__name__} calls are not followed; use nn modules in the model"
            )
        elif fn is not None and getattr(fn, "__name__", "") in ("adaptive_avg_pool2d", "adaptive_max_pool2d"):
            out_size = node.args[1] if len(node.args) > 1 else 1
            kind, geometry = "adaptivepool", (*_adaptive_geometry(in_height, out_size), 0, 1)
        elif height(node) is None:
            # Flattened or fully connected: no spatial structure left to follow.
            continue
        else:
            fields[node] = rf
            continue
        fields[node] = rf.after(*geometry)
        record(node, kind, fields[node], *geometry)
    if not rows:
        raise CnnError("the model has no convolution or pooling layers to report")
    return rows
