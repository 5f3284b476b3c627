"""Receptive fields of a real model, read from its own torch.fx graph.

Every tensor in the graph carries, along each spatial axis, the field of its units
(`cnntools.calc.rf.RF`: size, jump, start) and which of its dimensions are height, width or
a flattened token axis. Convolutions and pools (modules or functional calls), padding and
strided slices move the field; where branches meet (residual add, concatenation) it is the
union. A unit sees the whole input (`Whole`) after a global pooling, attention over every
token, a fully-connected layer over the spatial axes, or a window attention whose window
covers the map; reshapes and permutations that only move channels keep the field.

Two fields are followed side by side: the true one, and the *local* one that ignores gating
branches -- operands computed from a global pooling that scale or shift a feature map
(squeeze-and-excitation, global context). The local field is what people quote for
EfficientNet or MobileNetV3; the true one is global.

Anything the walk cannot follow is `Unfollowed`, named by its node; torch is imported inside
the functions, so only `rf-calc --arch` pays for it.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field, replace

from cnntools.calc.rf import RF
from cnntools.calc.rf_values import SPATIAL, Stop, Unfollowed, Value, Whole, display_name, pair, shape_of
from cnntools.calc.rf_walk import Walk
from cnntools.core.errors import CnnError

__all__ = ["SPATIAL", "Analysis", "Unfollowed", "Whole", "analyse", "build_torchvision", "display_name", "parameters_on_meta", "trace",
           "torchvision_default_size"]

MAX_FIELD = 10**9  # any field past this is an arithmetic bug, not a measurement


@dataclass
class Analysis:
    """The walk's result: one row per field-moving layer and the field of the last feature map."""

    rows: list = field(default_factory=list)
    feature_map: str | None = None  # its layer path
    node: str | None = None  # its torch.fx node name
    axes: tuple = ()
    shape: tuple = ()
    layouts: dict = field(default_factory=dict)  # layer path -> layout of its output
    true: object = None
    local: object = None


# ---------------------------------------------------------------------------- the walk


def analyse(model, input_size, in_channels: int = 3) -> Analysis:
    """Trace `model` (an nn.Module, or a GraphModule traced in eval mode) and follow the
    receptive field of every tensor.

    `input_size` is the input side, or (height, width); shapes come from a forward pass on
    zeros on the model's own device (the meta device costs nothing).
    """
    import torch

    height, width = pair(input_size)
    traced = model if isinstance(model, torch.fx.GraphModule) else trace(model)
    traced.eval()
    parameter = next(traced.parameters(), None)
    device = parameter.device if parameter is not None else "cpu"
    prop = _FastShapeProp(traced)
    try:
        # ShapeProp prints the traceback of a failing node itself; the user gets one line.
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            prop.propagate(torch.zeros(1, in_channels, height, width, device=device))
    except Exception as error:  # noqa: BLE001 - the model's own shape errors, as one line
        while error.__cause__ is not None:
            error = error.__cause__
        raise CnnError(f"the model cannot run on a {height}x{width} input: node {display_name(prop.current)}: "
                       f"{_first_line(error)}; try another --input-size") from None
    walk = Walk(dict(traced.named_modules()))
    values: dict = {}
    layouts: dict = {}  # tensor shape -> the layout last seen with it
    result = Analysis(rows=walk.rows)
    for node in traced.graph.nodes:
        if node.op == "placeholder":
            values[node] = Value((RF(), RF()), (RF(), RF()), (None, None, "H", "W"))
            continue
        meta = node.meta.get("tensor_meta")
        if meta is None or node.op == "output":
            continue  # sizes, flags and other non-tensor values
        incoming = []
        _collect(node.args, values, incoming)
        _collect(node.kwargs, values, incoming)
        if not incoming:
            continue  # parameters, buffers and what is computed from them alone
        try:
            value = walk.step(node, values, incoming)
        except Stop as stop:
            value = _stopped(node, incoming, str(stop))
        if value is None:
            continue
        if isinstance(value, Value):
            shape = shape_of(node)
            if "?" not in value.axes:
                layouts.setdefault(shape, value.axes)
            elif shape in layouts and not isinstance(value.true, tuple):
                # A lost layout back in a shape seen before (a window partition undone): the
                # field stays unfollowed or whole, but global layers after it can be read again.
                value = replace(value, axes=layouts[shape])
        values[node] = value
        _check_bound(node, value)
        if isinstance(value, (Value, list)):
            result.layouts[display_name(node)] = (value[0] if isinstance(value, list) else value).axes
        if isinstance(value, Value) and not value.pooled and any(a in SPATIAL + ("?",) for a in value.axes):
            result.feature_map, result.node, result.axes, result.shape = display_name(node), node.name, value.axes, shape
            result.true, result.local = value.true, value.local
    if result.feature_map is None:
        raise CnnError("the model has no spatial layers to follow")
    return result


def trace(model):
    """The model's torch.fx graph in eval mode (auxiliary heads and stochastic depth are
    training-only branches), or one line saying why it cannot be traced."""
    from torch import fx

    was_training = model.training
    model.eval()
    try:
        return fx.symbolic_trace(model)
    except Exception as error:  # noqa: BLE001 - fx raises many kinds on dynamic control flow
        raise CnnError(f"cannot trace the model's graph with torch.fx ({type(error).__name__}: {_first_line(error)})") from None
    finally:
        model.train(was_training)


def _FastShapeProp(traced):
    """ShapeProp that skips shape-keeping normalisations: on the meta device batch_norm runs
    through Python decompositions and took half the time of a DenseNet's walk."""
    from torch import nn
    from torch.fx.passes.shape_prop import ShapeProp

    class Prop(ShapeProp):
        current = None

        def run_node(self, node):
            self.current = node
            return super().run_node(node)

        def call_module(self, target, args, kwargs):
            module = self.fetch_attr(target)
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and args and not kwargs:
                return args[0]
            return super().call_module(target, args, kwargs)

    return Prop(traced)


def _first_line(error) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _collect(arg, values, found) -> None:
    from torch import fx

    if isinstance(arg, fx.Node):
        if arg in values:
            found.append(values[arg])
    elif isinstance(arg, (list, tuple)):
        for a in arg:
            _collect(a, values, found)
    elif isinstance(arg, dict):
        for a in arg.values():
            _collect(a, values, found)


def _stopped(node, incoming, why) -> Value:
    """A node the walk cannot follow: a whole field stays whole, anything else is unfollowed."""
    values = [v for v in incoming if isinstance(v, Value)] or [v for t in incoming for v in t]
    true = local = Unfollowed(display_name(node), why)
    for v in values:  # whole stays whole; an unfollowed field keeps its first reason
        true = v.true if isinstance(v.true, (Whole, Unfollowed)) and not isinstance(true, Whole) else true
        local = v.local if isinstance(v.local, (Whole, Unfollowed)) and not isinstance(local, Whole) else local
    shape = shape_of(node)
    return Value(true, local, ("?",) * len(shape) if shape else ("?",), pooled=all(v.pooled for v in values))


def _check_bound(node, value) -> None:
    items = value if isinstance(value, list) else [value]
    for v in items:
        for extent in (v.true, v.local):
            if isinstance(extent, tuple) and max(extent[0].receptive_field, extent[1].receptive_field) > MAX_FIELD:
                raise CnnError(f"node {node.name}: the receptive field passed {MAX_FIELD:,} pixels (an arithmetic bug; please report it)")


def model_receptive_fields(model, input_size, in_channels: int = 3) -> list[dict]:
    """One row per field-moving layer of `model` (conv, pool, attention, gate)."""
    return analyse(model, input_size, in_channels).rows


# ---------------------------------------------------------------------------- torchvision models


def torchvision_default_size(name: str) -> int:
    """The crop size of the model's default weights' transforms (299 for inception_v3); no weight file."""
    from cnntools.models.torchvision_models import default_size

    return default_size(name)


def build_torchvision(name: str, input_size: int):
    """torchvision model `name` without weights, on the meta device when it can be (nothing is
    allocated: a 600M-parameter ViT costs nothing); ViTs are built for `input_size`."""
    import torch

    from cnntools.models import torchvision_models

    torchvision_models.check_name(name)
    try:
        with torch.device("meta"):
            return torchvision_models.build(name, image_size=input_size)
    except CnnError:
        raise
    except Exception:  # noqa: BLE001
        pass  # builders that compute widths with tensors (RegNet): only parameters go to meta
    try:
        with parameters_on_meta():
            return torchvision_models.build(name, image_size=input_size)
    except CnnError:
        raise
    except Exception as error:  # noqa: BLE001 - e.g. a ViT input size its patches do not divide
        raise CnnError(f"cannot build torchvision:{name} for a {input_size}-pixel input ({_first_line(error)})") from None


def parameters_on_meta():
    """Create empty/zeros/ones tensors (parameters and buffers) on the meta device."""
    import torch
    from torch.overrides import TorchFunctionMode

    factories = {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn}

    class Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in factories and kwargs.get("device") is None:
                kwargs["device"] = "meta"
            return func(*args, **kwargs)

    return Mode()

