"""Outputs of the ops CNNs use, on the meta device, without torch's Python meta kernels.

The memory estimate (`cnntools.inference.memory`) runs a model on the meta device. Many of
torch's meta kernels are Python functions that call `torch._check` (whose first call imports
sympy through torch.fx.experimental.symbolic_shapes) or are wrapped in `torch._disable_dynamo`
(whose first call imports torch._dynamo): 2-5 s, more than the work of an `eval`. The ops a
CNN's forward and backward passes use are answered here from their shape formulas instead;
any other op returns NotImplemented and runs its own meta kernel (correct, only slower).

Every rule gives the shape, dtype and strides torch's meta kernel gives;
tests/test_memory.py compares the two on every built-in architecture, in NCHW and
channels_last, forward and backward.
"""

from __future__ import annotations

# Elementwise ops: the broadcast shape and the promoted dtype (floating inputs only).
ELEMENTWISE = frozenset({
    "relu", "add", "sub", "mul", "div", "sigmoid", "tanh", "hardtanh", "leaky_relu", "silu", "gelu",
    "hardswish", "hardsigmoid", "elu", "clamp_min", "threshold_backward", "sigmoid_backward",
    "tanh_backward", "hardtanh_backward", "leaky_relu_backward", "silu_backward", "gelu_backward",
    "hardswish_backward", "hardsigmoid_backward", "elu_backward",
})


def output(func, args, kwargs):
    """`func(*args, **kwargs)` for meta-tensor arguments when a rule here knows `func`,
    else NotImplemented."""
    import torch

    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if not tensors or any(t.device.type != "meta" for t in tensors) or kwargs.get("out") is not None:
        return NotImplemented
    name = func.overloadpacket.__name__
    if name in ELEMENTWISE:
        return _elementwise(tensors)
    if name.endswith("_") and name[:-1] in ELEMENTWISE:  # in place: the first argument, same shape
        return args[0] if _broadcast(t.shape for t in tensors) == tuple(args[0].shape) else NotImplemented
    rule = RULES.get(str(func))
    return NotImplemented if rule is None else rule(*args, **kwargs)


# ------------------------------------------------------------------------------------ helpers


def _broadcast(shapes) -> tuple[int, ...]:
    """numpy broadcasting of `shapes` (pure Python: torch.broadcast_shapes calls torch._check)."""
    shapes = [tuple(s) for s in shapes]
    ndim = max(len(s) for s in shapes)
    out = []
    for i in range(ndim):
        sizes = {s[i - ndim + len(s)] for s in shapes if i - ndim + len(s) >= 0} - {1}
        if len(sizes) > 1:
            raise RuntimeError(f"shapes {shapes} do not broadcast")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def _dense_strides(t) -> tuple[int, ...] | None:
    """`t`'s strides when they lay out its elements densely without overlap (preserve_format
    keeps them), else None."""
    pairs = sorted((st, n) for n, st in zip(t.shape, t.stride()) if n != 1)
    expected = 1
    for stride, size in pairs:
        if stride != expected:
            return None
        expected *= size
    return tuple(t.stride())


def _contiguous_strides(shape) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _channels_last_strides(shape) -> tuple[int, ...]:
    n, c, h, w = shape
    return (h * w * c, 1, w * c, c)


def _is_channels_last(t) -> bool:
    """torch's suggest_memory_format(t) == channels_last, for a 4-d tensor."""
    if t.dim() != 4:
        return False
    return t.stride() == _channels_last_strides(t.shape) and t.stride() != _contiguous_strides(t.shape)


def _new(shape, dtype, channels_last: bool = False):
    import torch

    shape = tuple(int(n) for n in shape)
    strides = _channels_last_strides(shape) if channels_last and len(shape) == 4 else _contiguous_strides(shape)
    return torch.empty_strided(shape, strides, dtype=dtype, device="meta")


def _like(t, dtype=None):
    """torch.empty_like(t) (preserve_format)."""
    import torch

    strides = _dense_strides(t)
    if strides is None:
        return _new(t.shape, dtype or t.dtype, _is_channels_last(t))
    return torch.empty_strided(tuple(t.shape), strides, dtype=dtype or t.dtype, device="meta")


def _promoted(dtypes):
    import torch

    dtype = None
    for d in dtypes:
        dtype = d if dtype is None else torch.promote_types(dtype, d)
    return dtype


def _elementwise(tensors):
    """TensorIterator's output: the strides of the first input of the full shape when all of
    them agree (the common case: activation, residual add), else contiguous."""
    if not all(t.is_floating_point() for t in tensors):
        return NotImplemented  # integer and bool promotion (div of ints gives floats): the meta kernel knows
    shape = _broadcast(t.shape for t in tensors)
    # A 0-d tensor (a wrapped scalar) does not raise the dtype within its category.
    dtype = _promoted(t.dtype for t in tensors if t.dim()) or _promoted(t.dtype for t in tensors)
    full = [t for t in tensors if tuple(t.shape) == shape]
    if full and all(t.stride() == full[0].stride() for t in full) and _dense_strides(full[0]) is not None \
            and all(t.dim() == 0 or tuple(t.shape) == shape for t in tensors):
        return _like(full[0], dtype)
    return NotImplemented if any(t.dim() and tuple(t.shape) != shape for t in tensors) else _new(shape, dtype)


def _pair(value, default=None):
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        value = default
    if isinstance(value, int):
        return (value, value)
    return tuple(value) * 2 if len(value) == 1 else tuple(value)


def _pool_size(size, kernel, pad, stride, dilation, ceil_mode):
    """ATen's pooling_output_shape."""
    numerator = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


# -------------------------------------------------------------------------------------- rules


def _convolution(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    if transposed or x.dim() != 4:
        return NotImplemented
    kernel = weight.shape[2:]
    spatial = [(n + 2 * p - d * (k - 1) - 1) // s + 1
               for n, k, s, p, d in zip(x.shape[2:], kernel, stride, padding, dilation)]
    # The meta kernel leaves the format contiguous (it cannot know the backend); the bytes are the same.
    return _new((x.shape[0], weight.shape[0], *spatial), x.dtype)


def _convolution_backward(grad, x, weight, bias_sizes, stride, padding, dilation, transposed, output_padding,
                          groups, output_mask):
    if transposed or x.dim() != 4:
        return NotImplemented
    channels_last = _is_channels_last(x) or _is_channels_last(weight)
    return (_new(x.shape, x.dtype, channels_last) if output_mask[0] else None,
            _new(weight.shape, weight.dtype, channels_last) if output_mask[1] else None,
            _new((weight.shape[0],), grad.dtype) if output_mask[2] else None)


def _max_pool(x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    if x.dim() != 4:
        return NotImplemented
    kernel = _pair(kernel_size)
    steps, pads, dils = _pair(stride, kernel), _pair(padding), _pair(dilation)
    spatial = [_pool_size(n, k, p, s, d, ceil_mode) for n, k, p, s, d in zip(x.shape[2:], kernel, pads, steps, dils)]
    import torch

    shape = (*x.shape[:2], *spatial)
    channels_last = _is_channels_last(x)
    return _new(shape, x.dtype, channels_last), _new(shape, torch.int64, channels_last)


def _avg_pool(x, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    if x.dim() != 4:
        return NotImplemented
    kernel = _pair(kernel_size)
    steps, pads = _pair(stride, kernel), _pair(padding)
    spatial = [_pool_size(n, k, p, s, 1, ceil_mode) for n, k, p, s in zip(x.shape[2:], kernel, pads, steps)]
    return _new((*x.shape[:2], *spatial), x.dtype, _is_channels_last(x))


def _adaptive_avg_pool(x, output_size):
    if x.dim() != 4:
        return NotImplemented
    return _new((*x.shape[:2], *_pair(output_size)), x.dtype, _is_channels_last(x))


def _grad_of_input(grad, x, *_, **__):
    """Backward ops whose result is shaped like their input (pooling)."""
    return _new(x.shape, x.dtype, _is_channels_last(x))


def _addmm(bias, mat1, mat2, *_, **__):
    return _new((mat1.shape[0], mat2.shape[1]), _promoted((bias.dtype, mat1.dtype, mat2.dtype)))


def _mm(mat1, mat2):
    return _new((mat1.shape[0], mat2.shape[1]), _promoted((mat1.dtype, mat2.dtype)))


def _reduce_dims(x, dim, keepdim=False, dtype=None):
    """sum.dim_IntList and mean.dim."""
    dims = {d % x.dim() for d in (dim or ())} or set(range(x.dim()))
    shape = [1 if i in dims else n for i, n in enumerate(x.shape) if keepdim or i not in dims]
    return _new(shape, dtype or x.dtype)


def _batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps):
    per_channel = (x.shape[1],)
    return _like(x), _new(per_channel, x.dtype), _new(per_channel, x.dtype)


def _batch_norm_backward(grad, x, weight, running_mean, running_var, save_mean, save_invstd, train, eps, output_mask):
    per_channel = (x.shape[1],)
    return (_like(x) if output_mask[0] else None,
            _new(per_channel, x.dtype) if output_mask[1] else None,
            _new(per_channel, x.dtype) if output_mask[2] else None)


def _empty_like(x, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    """empty_like and ones_like (the backward pass's seed): only the bytes matter."""
    import torch

    if memory_format not in (None, torch.preserve_format) or (device is not None and str(device) != "meta"):
        return NotImplemented
    return _like(x, dtype)


RULES = {
    "aten.convolution.default": _convolution,
    "aten.convolution_backward.default": _convolution_backward,
    "aten.max_pool2d_with_indices.default": _max_pool,
    "aten.max_pool2d_with_indices_backward.default": _grad_of_input,
    "aten.avg_pool2d.default": _avg_pool,
    "aten.avg_pool2d_backward.default": _grad_of_input,
    "aten._adaptive_avg_pool2d.default": _adaptive_avg_pool,
    "aten._adaptive_avg_pool2d_backward.default": _grad_of_input,
    "aten.addmm.default": _addmm,
    "aten.mm.default": _mm,
    "aten.mean.dim": _reduce_dims,
    "aten.sum.dim_IntList": _reduce_dims,
    "aten.native_batch_norm.default": _batch_norm,
    "aten.native_batch_norm_backward.default": _batch_norm_backward,
    "aten.empty_like.default": _empty_like,
    "aten.ones_like.default": _empty_like,
}
