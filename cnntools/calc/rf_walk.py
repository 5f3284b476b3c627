"""How each graph node moves the receptive field: one handler per module type or function.

`Walk.step(node, ...)` returns the `Value` after the node, or raises `Stop` with the reason
it cannot be followed. Handlers are named after the call they follow (`fn_max_pool2d` for
`F.max_pool2d` and `x.max_pool2d`); modules are matched by type.
"""

from __future__ import annotations

import operator
from dataclasses import replace

from cnntools.calc.rf import RF
from cnntools.calc.rf_values import (
    SPATIAL, Stop, Unfollowed, Value, Whole, adaptive_geometry, arg, axes_dim, both, display_name, field_columns,
    merge, one, pair, regroup, set_axis, shape_of, spatial_dims, target_name, union,
)


class Walk:
    """One step per graph node: the Value after it, from the Values before it."""

    def __init__(self, modules: dict):
        self.modules = modules
        self.rows: list[dict] = []

    # ------------------------------------------------------------------ dispatch

    def step(self, node, values, incoming):
        from torch import nn

        if any(isinstance(v, list) for v in incoming) and not (node.op == "call_function" and node.target is operator.getitem):
            raise Stop("takes a tuple of tensors")
        first = values.get(node.args[0]) if node.args and not isinstance(node.args[0], (list, tuple)) else None
        if node.op == "call_module":
            module = self.modules[node.target]
            return self.module(node, module, first, incoming, nn)
        if node.op == "get_attr":
            return None
        name = target_name(node.target)
        handler = getattr(self, f"fn_{name}", None)
        if handler is not None:
            return handler(node, first, incoming)
        if name in _ELEMENTWISE:
            return self.elementwise(node, incoming)
        kind = "method" if node.op == "call_method" else "function"
        raise Stop(f"{kind} {name} is not one rf-calc can follow")

    def module(self, node, module, x, incoming, nn):
        kinds = {nn.Conv2d: "conv", nn.MaxPool2d: "maxpool", nn.AvgPool2d: "avgpool"}
        kind = next((k for cls, k in kinds.items() if isinstance(module, cls)), None)
        if kind is not None:
            dilation = pair(getattr(module, "dilation", 1))
            kernel = pair(module.kernel_size)
            padding = module.padding
            if isinstance(padding, str):  # 'same' / 'valid'
                padding = [d * (k - 1) // 2 if padding == "same" else 0 for k, d in zip(kernel, dilation)]
            stride = module.stride if module.stride is not None else module.kernel_size
            return self.window(node, kind, x, kernel, pair(stride), pair(padding), dilation)
        if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            return self.adaptive(node, x, module.output_size)
        if isinstance(module, nn.Linear):
            return self.linear(node, x)
        if isinstance(module, nn.LayerNorm):
            return self.norm_last(node, x, len(module.normalized_shape))
        if isinstance(module, nn.MultiheadAttention):
            return self.attention(node, incoming, seq_dim=1 if module.batch_first else 0, tuple_out=True)
        if isinstance(module, nn.Flatten):
            return self.reshape(node, x)
        if isinstance(module, nn.Softmax):
            return self.softmax_dim(node, x, module.dim)
        if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            raise Stop("transposed convolutions have no receptive field in this sense")
        if isinstance(module, _ELEMENTWISE_MODULES(nn)):
            return self.elementwise(node, incoming)
        raise Stop(f"{type(module).__name__} layers are not followed")

    # ------------------------------------------------------------------ geometry

    def window(self, node, kind, x, kernel, stride, padding, dilation, record=True):
        dh, dw = spatial_dims(x.axes)
        fn = lambda e: (e[0].after(kernel[0], stride[0], padding[0], dilation[0]),  # noqa: E731
                        e[1].after(kernel[1], stride[1], padding[1], dilation[1]))
        out = x.map(fn)
        if record:
            self.record(node, kind, out, kernel, stride, padding, dilation, (dh, dw))
        return out

    def adaptive(self, node, x, output_size):
        dh, dw = spatial_dims(x.axes)
        shape = shape_of(node.args[0])
        out_h, out_w = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
        if out_h == 1 and out_w == 1:
            return self.globalise(node, "globalpool", "global pooling", x, pooled=True)
        (kh, sh), (kw, sw) = adaptive_geometry(shape[dh], out_h), adaptive_geometry(shape[dw], out_w)
        # The head's pooling to a fixed size (VGG's 7x7): its field depends on the input size,
        # so the feature map people mean is its input.
        out = self.window(node, "adaptivepool", replace(x, pooled=True), (kh, kw), (sh, sw), (0, 0), (1, 1), record=False)
        self.record(node, "adaptivepool", out, (kh, kw), (sh, sw), (0, 0), (1, 1))
        return out

    def globalise(self, node, kind, why, x, pooled=False, tuple_out=False, axes=None):
        """Every unit of this node's output sees every unit of its input, hence the whole input."""
        whole = Whole(display_name(node), why)
        keep = lambda e: e if isinstance(e, Whole) else whole  # noqa: E731 - also ends an unfollowed field
        out = replace(x, true=keep(x.true), local=keep(x.local), pooled=x.pooled or pooled,
                      axes=axes if axes is not None else x.axes)
        self.record(node, kind, out)
        return [out, out] if tuple_out else out

    def linear(self, node, x):
        if x.axes[-1] in ("?",):
            raise Stop("a linear layer over an axis rf-calc lost track of")
        if x.axes[-1] is None:
            return x  # mixes channels at each position
        return self.globalise(node, "linear", "fully-connected layer over the spatial axes", x, axes=x.axes[:-1] + (None,))

    def norm_last(self, node, x, count: int):
        if any(a in SPATIAL + ("S",) for a in x.axes[-count:]):
            return self.globalise(node, "norm", "normalisation over the spatial axes", x)
        return x

    def attention(self, node, incoming, seq_dim, tuple_out=False):
        x = incoming[0]
        if not isinstance(x, Value) or x.axes[seq_dim] not in SPATIAL + ("S",):
            if isinstance(x, Value) and x.axes[seq_dim] is None:
                return [x, x] if tuple_out else x
            raise Stop("attention over an axis rf-calc lost track of")
        merged = x
        for other in incoming[1:]:
            merged = merge(merged, other)
        return self.globalise(node, "attention", "attention over every token", merged, tuple_out=tuple_out)

    def softmax_dim(self, node, x, dim):
        if dim is None or x.axes[axes_dim(dim, len(x.axes))] in SPATIAL + ("S",):
            return self.globalise(node, "softmax", "softmax over the spatial axes", x)
        return x

    def reshape(self, node, x):
        """view/reshape/flatten: follow which input dimensions each output dimension came from."""
        before, after = shape_of(node.args[0]), shape_of(node)
        axes, grid = regroup(before, after, x.axes, x.grid)
        return replace(x, axes=axes, grid=grid)

    def elementwise(self, node, incoming):
        values = [v for v in incoming if isinstance(v, Value)]
        out_shape = shape_of(node)
        features = [v for v in values if not v.pooled]
        gates = [v for v in values if v.pooled] if features else []
        merged = None
        for v in features or values:
            merged = v if merged is None else merge(merged, v)
        true = merged.true
        for gate in gates:  # a gate reaches every unit: the true field takes it, the local one does not
            true = union(true, gate.true)
            if isinstance(gate.true, Whole) and not isinstance(merged.true, Whole):
                true = Whole(display_name(node), f"gated by {gate.true.at} ({gate.true.why})")
        axes = merged.axes
        if out_shape is not None and len(out_shape) != len(axes):
            longest = max(values, key=lambda v: len(v.axes))
            axes = longest.axes if len(longest.axes) == len(out_shape) else ("?",) * len(out_shape)
        out = replace(merged, true=true, axes=axes, pooled=not features)
        if gates and isinstance(true, Whole) and true.at == display_name(node):
            self.record(node, "gate", out)
        return out

    def record(self, node, kind, out, kernel=None, stride=None, padding=None, dilation=None, dims=None):
        shape = shape_of(node)
        if dims is None and "H" in out.axes and "W" in out.axes:
            dims = (out.axes.index("H"), out.axes.index("W"))
        if out.pooled and kind not in ("globalpool", "adaptivepool"):
            return  # the inside of a gating branch: not a feature map
        row = {"layer": len(self.rows) + 1, "name": display_name(node), "type": kind,
               "kernel": one(kernel), "stride": one(stride), "padding": one(padding), "dilation": one(dilation),
               "size": one((shape[dims[0]], shape[dims[1]])) if shape and dims else None}
        row.update(field_columns(out.true))
        local = field_columns(out.local)
        row["local_receptive_field"] = local["receptive_field"]
        self.rows.append(row)

    # ------------------------------------------------------------------ functional calls

    def fn_shifted_window_attention(self, node, x, incoming):
        """torchvision's Swin: attention inside windows of the (N, H, W, C) token map."""
        window = pair(arg(node, 4, "window_size"))
        shape = shape_of(node.args[0])
        dh, dw = spatial_dims(x.axes)
        padded = [-(-shape[d] // w) * w for d, w in ((dh, window[0]), (dw, window[1]))]
        if window[0] >= padded[0] and window[1] >= padded[1]:
            return self.globalise(node, "attention", f"attention over every token (the {window[0]}x{window[1]} window covers the map)", x)
        why = (f"windowed attention ({window[0]}x{window[1]} windows on a {shape[dh]}x{shape[dw]} token map): "
               "a unit's field depends on its place in the window grid")
        return replace(x, true=both(x.true, Unfollowed(display_name(node), why)), local=both(x.local, Unfollowed(display_name(node), why)))

    def fn_patch_merging_pad(self, node, x, incoming):
        """torchvision's Swin patch merging: each 2x2 block of tokens becomes one."""
        return self.window(node, "patchmerge", x, (2, 2), (2, 2), (0, 0), (1, 1))

    def fn_conv2d(self, node, x, incoming):
        from torch import fx

        weight = node.args[1] if len(node.args) > 1 else node.kwargs["weight"]
        shape = shape_of(weight) if isinstance(weight, fx.Node) else None
        if shape is None:
            raise Stop("a functional conv2d whose weight shape is unknown")
        stride, padding, dilation = (arg(node, i, k, d) for i, k, d in ((3, "stride", 1), (4, "padding", 0), (5, "dilation", 1)))
        if isinstance(padding, str):
            raise Stop("a functional conv2d with string padding")
        return self.window(node, "conv", x, shape[-2:], pair(stride), pair(padding), pair(dilation))

    def fn_max_pool2d(self, node, x, incoming):
        kernel = arg(node, 1, "kernel_size")
        stride = arg(node, 2, "stride") or kernel
        return self.window(node, "maxpool", x, pair(kernel), pair(stride), pair(arg(node, 3, "padding", 0)),
                           pair(arg(node, 4, "dilation", 1)))

    def fn_avg_pool2d(self, node, x, incoming):
        kernel = arg(node, 1, "kernel_size")
        stride = arg(node, 2, "stride") or kernel
        return self.window(node, "avgpool", x, pair(kernel), pair(stride), pair(arg(node, 3, "padding", 0)), (1, 1))

    def fn_adaptive_avg_pool2d(self, node, x, incoming):
        return self.adaptive(node, x, arg(node, 1, "output_size"))

    fn_adaptive_max_pool2d = fn_adaptive_avg_pool2d

    def fn_linear(self, node, x, incoming):
        return self.linear(node, x)

    def fn_layer_norm(self, node, x, incoming):
        shape = arg(node, 1, "normalized_shape")
        return self.norm_last(node, x, len(shape) if isinstance(shape, (tuple, list)) else 1)

    def fn_scaled_dot_product_attention(self, node, x, incoming):
        return self.attention(node, incoming, seq_dim=len(x.axes) - 2)

    def fn_softmax(self, node, x, incoming):
        return self.softmax_dim(node, x, arg(node, 1, "dim"))

    def fn_matmul(self, node, x, incoming):
        left = x  # None when the left operand is a parameter
        right = incoming[-1] if left is None or len(incoming) > 1 else None
        contracted = ([left.axes[-1]] if left else []) + ([right.axes[-2]] if right and len(right.axes) > 1 else [])
        if "?" in contracted:
            raise Stop("a matrix product over an axis rf-calc lost track of")
        if left and right:
            merged, axes = merge(left, right), left.axes[:-1] + right.axes[-1:]
        elif left:
            merged, axes = left, left.axes[:-1] + (None,)
        else:
            merged, axes = right, right.axes[:-2] + (None,) + right.axes[-1:]
        if any(c in SPATIAL + ("S",) for c in contracted):
            return self.globalise(node, "matmul", "matrix product over the spatial axes", merged, axes=axes)
        return replace(merged, axes=axes)

    fn_bmm = fn_matmul

    def fn_interpolate(self, node, x, incoming):
        raise Stop("resampling (interpolate) changes the pixel pitch; rf-calc does not follow it")

    fn_upsample = fn_interpolate

    def fn_pad(self, node, x, incoming):
        pads = list(arg(node, 1, "pad"))
        out = x
        for i in range(0, len(pads), 2):  # (left, right) of the last dimension first
            dim = len(x.axes) - 1 - i // 2
            tag = x.axes[dim]
            if tag in ("H", "W") and pads[i]:
                k = 0 if tag == "H" else 1
                out = out.map(lambda e, k=k, p=pads[i]: set_axis(e, k, e[k].after(1, 1, p, 1)))
            elif tag not in ("H", "W", None) and (pads[i] or pads[i + 1]):
                raise Stop(f"padding along a {tag} axis")
        return out

    def fn_flatten(self, node, x, incoming):
        return self.reshape(node, x)

    fn_view = fn_reshape = fn_unflatten = fn_squeeze = fn_unsqueeze = fn_flatten

    def fn_permute(self, node, x, incoming):
        shape = shape_of(node)
        dims = node.args[1:] if len(node.args) > 2 or isinstance(arg(node, 1, "dims"), int) else arg(node, 1, "dims")
        dims = [axes_dim(int(d), len(x.axes)) for d in dims]
        if len(dims) != len(x.axes) or shape is None:
            raise Stop("a permutation rf-calc cannot read")
        return replace(x, axes=tuple(x.axes[d] for d in dims))

    def fn_transpose(self, node, x, incoming):
        a, b = (axes_dim(int(arg(node, i, k)), len(x.axes)) for i, k in ((1, "dim0"), (2, "dim1")))
        axes = list(x.axes)
        axes[a], axes[b] = axes[b], axes[a]
        return replace(x, axes=tuple(axes))

    def fn_contiguous(self, node, x, incoming):
        return x

    fn_clone = fn_to = fn_float = fn_type_as = fn_contiguous

    def fn_expand(self, node, x, incoming):
        if len(shape_of(node)) != len(x.axes):
            raise Stop("an expand that adds dimensions")
        return x

    def fn_cat(self, node, x, incoming):
        tensors = arg(node, 0, "tensors")
        dim = arg(node, 1, "dim", 0)
        values = [v for v in incoming if isinstance(v, Value)]
        ndim = len(values[0].axes)
        d = axes_dim(int(dim), ndim)
        merged = values[0]
        for v in values[1:]:
            merged = merge(merged, v)
        tag = merged.axes[d]
        if tag is not None:
            if tag == "T" and len(values) == 1 and len(tensors) > 1:
                return merged  # extra tokens (a class token) beside the image's tokens
            raise Stop(f"concatenation along a {tag} axis")
        return merged

    fn_concat = fn_concatenate = fn_cat

    def fn_chunk(self, node, x, incoming):
        dim = axes_dim(int(arg(node, 2, "dim", 0)), len(x.axes))
        if x.axes[dim] is not None:
            raise Stop(f"splitting along a {x.axes[dim]} axis")
        return [x] * len(node.meta["tensor_meta"])

    fn_split = fn_chunk

    def fn_getitem(self, node, x, incoming):
        source = incoming[0]
        index = node.args[1]
        if isinstance(source, list):
            return source[index] if isinstance(index, int) and index < len(source) else source[0]
        return self.index(node, source, index)

    def index(self, node, x, index):
        """x[...]: strided slices of a spatial axis move the field; picking one token keeps it."""
        index = index if isinstance(index, tuple) else (index,)
        if any(i is None for i in index):
            raise Stop("indexing that adds dimensions")
        if Ellipsis in index:
            at = index.index(Ellipsis)
            index = index[:at] + (slice(None),) * (len(x.axes) - len(index) + 1) + index[at + 1:]
        out, axes = x, []
        before = shape_of(node.args[0])
        for dim, item in enumerate(index):
            tag = x.axes[dim]
            if isinstance(item, slice):
                axes.append(tag)
                start, step = item.start or 0, item.step or 1
                if tag in ("H", "W"):
                    start = start + before[dim] if start < 0 else start
                    k = 0 if tag == "H" else 1
                    out = out.map(lambda e, k=k, s=start, t=step: set_axis(e, k, RF(e[k].receptive_field, e[k].jump * t,
                                                                                  e[k].start + s * e[k].jump)))
                elif tag not in (None,) and (start or step != 1):
                    raise Stop(f"slicing a {tag} axis")
            elif isinstance(item, int):
                if tag in ("H", "W", "S", "?"):
                    raise Stop(f"picking one position of a {tag} axis")
                if tag == "T" and not isinstance(out.true, Whole):
                    raise Stop("picking one token before attention has mixed them")
            else:
                raise Stop("indexing with a tensor")
        axes += list(x.axes[len(index):])
        return replace(out, axes=tuple(axes))

    def fn_mean(self, node, x, incoming):
        dims = arg(node, 1, "dim")
        keep = arg(node, 2, "keepdim", False)
        n = len(x.axes)
        dims = range(n) if dims is None else [axes_dim(int(d), n) for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
        axes = tuple(a for i, a in enumerate(x.axes) if keep or i not in dims)
        if any(x.axes[d] in SPATIAL + ("S",) for d in dims):
            return self.globalise(node, "globalpool", "global pooling", replace(x, axes=axes), pooled=True)
        if any(x.axes[d] == "?" for d in dims):
            raise Stop("a reduction over an axis rf-calc lost track of")
        return replace(x, axes=axes)

    fn_sum = fn_amax = fn_amin = fn_mean



def _ELEMENTWISE_MODULES(nn):
    return (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid,
            nn.Sigmoid, nn.Tanh, nn.Dropout, nn.Dropout2d, nn.Identity, nn.LocalResponseNorm, nn.LeakyReLU, nn.ELU,
            nn.Mish, nn.Softplus, nn.PReLU, nn.Hardtanh)


_ELEMENTWISE = frozenset(
    "add iadd sub isub mul imul truediv itruediv floordiv neg pow relu relu_ relu6 gelu silu sigmoid sigmoid_ tanh "
    "hardswish hardsigmoid hardtanh elu leaky_relu mish softplus dropout dropout2d stochastic_depth batch_norm exp log "
    "sqrt rsqrt abs clamp clip div erf mul_ add_ where".split()
)


