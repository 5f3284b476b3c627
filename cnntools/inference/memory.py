"""How much memory running a model will take, measured before it runs.

A checkpoint's image size, `--image-size` and `--batch-size` come from the user or from a file;
one 4096-px image through resnet18 needs 16 GiB of activations. Before the first forward pass
every model-running command asks `fit_batch` (or `check_training`) for a batch size whose peak
fits the memory the device can give, so an impossible run stops with one line instead of the
kernel's OOM killer or a MemoryError halfway through.

The estimate runs the model once on the meta device (shapes only, no data, milliseconds) and
follows every tensor the dispatcher creates and frees: its peak is the peak the real run's
allocator sees. Convolutions get their working buffers while they run (`conv_workspace`:
oneDNN's channel-blocked copies on CPU, cuDNN's workspace). The ops CNNs use get their shapes
from `meta_shapes` rather than torch's Python meta kernels, which import torch._dynamo and
sympy (seconds). Checked against measured peak RSS in tests/test_memory.py.
"""

from __future__ import annotations

import math
import weakref

from cnntools.core import runtime
from cnntools.core.errors import CnnError
from cnntools.output.emitter import info

# A backward pass has working buffers the dispatcher never sees (oneDNN reorders of the
# gradients, autograd's accumulation buffers): measured 1.2-1.4x the traced peak on CPU.
TRAINING_MARGIN = 1.5
# Automatic batch sizes leave half of what is available to everything else (the data, the
# page cache, other processes); only a single image is allowed all of it.
BATCH_SHARE = 0.5


def forward_peak_bytes(model, input_shape: tuple[int, ...], training: bool = False,
                       keep: tuple[str, ...] = (), device="cpu") -> int | None:
    """Peak bytes of tensors alive while `model` runs one batch of `input_shape` (float32),
    the input included and the weights not; with `training`, the backward pass and the
    parameters' gradients too; `keep`: modules whose outputs the caller holds on to (hooked
    feature maps); `device`: where it will run (convolutions' working buffers differ). None
    when the model cannot run on the meta device (code that reads values, ops without a meta
    kernel): then nothing is known.
    """
    import torch
    from torch.func import functional_call

    tracker = _LiveTensors(device)
    kept: list = []
    modules = dict(model.named_modules())
    from cnntools.inference.hooks import Hooks

    hooks = Hooks()
    for name in keep:
        if name in modules:
            hooks.forward(modules[name], lambda _m, _i, out: kept.append(out))
    try:
        params = {name: torch.empty_like(p, device="meta").requires_grad_(training and p.requires_grad)
                  for name, p in model.named_parameters()}
        buffers = {name: torch.empty_like(b, device="meta") for name, b in model.named_buffers()}
        was_training = model.training
        model.train(training)
        try:
            with (torch.enable_grad() if training else torch.no_grad()), tracker:
                x = torch.empty(input_shape, device="meta")
                tracker.track(x)
                out = functional_call(model, {**params, **buffers}, (x,))
                if training:
                    first = out[0] if isinstance(out, (tuple, list)) else out
                    first.float().sum().backward()
                del out, x
        finally:
            model.train(was_training)
    except Exception:  # noqa: BLE001 - any model that cannot be traced this way: no estimate
        return None
    finally:
        hooks.remove()
        kept.clear()
    return tracker.peak


class _LiveTensors:
    """A dispatch mode that adds up the storages of the tensors alive after every op."""

    def __init__(self, device="cpu"):
        from torch.utils._python_dispatch import TorchDispatchMode

        from cnntools.inference import meta_shapes

        tracker = self

        class Mode(TorchDispatchMode):
            # Wrapping __torch_dispatch__ to keep torch.compile out of it imports torch._dynamo
            # and sympy (2-5 s) on first use; nothing is compiled inside this mode.
            @classmethod
            def _should_skip_dynamo(cls) -> bool:
                return False

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = meta_shapes.output(func, args, kwargs or {})
                if out is NotImplemented:
                    out = func(*args, **(kwargs or {}))
                return tracker.op(func, args, out)

        self.mode = Mode()
        self.block = channel_block(device)
        self.live: dict[int, list[int]] = {}  # storage → [bytes, tensors seen on it]
        self.now = 0
        self.peak = 0

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)

    def track(self, tensor) -> int:
        storage = tensor.untyped_storage()
        key = storage._cdata
        entry = self.live.get(key)
        if entry is None:
            entry = self.live[key] = [storage.nbytes(), 0]
            self.now += entry[0]
        entry[1] += 1
        weakref.finalize(tensor, self._release, key)
        return entry[0]

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                self.now -= entry[0]
                del self.live[key]

    def op(self, func, args, out):
        import torch
        from torch.utils._pytree import tree_flatten

        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self.track(tensor)
        workspace = conv_workspace(args[0], out, self.block) if func.overloadpacket is torch.ops.aten.convolution else 0
        self.peak = max(self.peak, self.now + workspace)
        return out


def channel_block(device) -> int:
    """The channel block of oneDNN's convolution layout on this device: 16 floats on a CPU with
    AVX-512, 8 with AVX2; 0 elsewhere (CUDA, MPS, other CPUs)."""
    if getattr(device, "type", str(device)) != "cpu":
        return 0
    import torch

    return {"AVX512": 16, "AVX2": 8}.get(torch.backends.cpu.get_cpu_capability(), 0)


def conv_workspace(x, y, block: int) -> int:
    """Bytes a convolution of input `x` into output `y` holds while it runs, beyond both.

    oneDNN computes an NCHW convolution in a channel-blocked layout (channels rounded up to
    `block`): the input is reordered into it (not a 1-3 channel image: the first-layer kernel
    reads it as is), the output is computed blocked and reordered back into `y` once the
    blocked input is freed, so the peak is x + max(xb + yb, yb + y). On an AVX-512 CPU a
    24-channel layer pads to 32: measured 381.6 MB against this 381.7 MB (compact-cnn at 256 px,
    batch 16). channels_last inputs and other devices: one output-sized buffer (cuDNN's
    workspace; oneDNN's nhwc kernels need less).
    """
    y_bytes = y.numel() * y.element_size()
    if not block or x.dim() != 4 or y.dim() != 4 or x.stride()[1] == 1:
        return y_bytes

    def blocked(t):
        return t.numel() // t.shape[1] * -(-t.shape[1] // block) * block * t.element_size()

    x_blocked = blocked(x) if x.shape[1] > 3 else 0
    return blocked(y) + max(x_blocked - y_bytes, 0)


def device_memory(device) -> tuple[int | None, str]:
    """(bytes the device can still give this process, where: "RAM" or "cuda:0 memory")."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        # Memory torch's caching allocator holds but does not use is free for us too.
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        index = device.index if device.index is not None else torch.cuda.current_device()
        return free + cached, f"cuda:{index} memory"
    return runtime.available_memory(), "RAM"


def fit_batch(model, sample_shape: tuple[int, ...], batch_size: int, device, what: str,
              training: bool = False, kept_per_image: int = 0, keep: tuple[str, ...] = ()) -> int:
    """The batch size to run `model` at: `batch_size` when its estimated peak fits, else the
    largest that fits in half the available memory (said on stderr); one image that does not
    fit in all of it is refused with one line. `sample_shape` is one input (C, H, W);
    `kept_per_image` bytes the caller keeps of every image it runs (features gathered);
    `keep` and `training` as in `forward_peak_bytes`.
    """
    avail, where = device_memory(device)
    if avail is None:
        return batch_size

    def need(batch: int) -> int | None:
        peak = forward_peak_bytes(model, (batch, *sample_shape), training, keep, device)
        if peak is None:
            return None
        return int(peak * (TRAINING_MARGIN if training else 1.0)) + batch * kept_per_image

    one = need(1)
    if one is None:
        return batch_size
    shape = "×".join(str(d) for d in sample_shape)
    if one > avail:
        raise CnnError(f"{what}: one {shape} image needs about {runtime.human_bytes(one)} of memory to run, "
                       f"more than the {runtime.human_bytes(avail)} of {where} available")
    budget = avail * BATCH_SHARE
    if batch_size == 1:
        return batch_size
    requested = need(batch_size)
    if requested <= budget:
        return batch_size
    two = need(2)
    per_image = max(1, two - one)
    fitted = max(1, min(batch_size - 1, int((budget - (one - per_image)) // per_image)))
    while fitted > 1 and need(fitted) > budget:  # activations grow linearly; this rarely loops
        fitted = max(1, fitted * 9 // 10)
    info(f"{what}: a batch of {batch_size:,} {shape} images needs about {runtime.human_bytes(requested)}, "
         f"more than half the {runtime.human_bytes(avail)} of {where} available; running {fitted:,} at a time")
    return fitted


def fit_model_batch(lm, batch_size: int, training: bool = False, keep: tuple[str, ...] = ()) -> int:
    """`fit_batch` for a loaded model (`cnntools.checkpoint.LoadedModel`) at its own input size."""
    return fit_batch(lm.model, lm.preprocessing.shape, batch_size, runtime.module_device(lm.model), lm.source,
                     training=training, keep=keep)


def check_training(model, sample_shape: tuple[int, ...], batch_size: int, device, what: str,
                   optimizer_states: int = 1) -> None:
    """Refuse a training step that cannot fit: forward, backward and gradients of a batch of
    `batch_size` (the batch is the experiment, so it is never changed), plus `optimizer_states`
    parameter-sized buffers (SGD momentum 1, Adam 2). The message names the largest batch
    that fits."""
    avail, where = device_memory(device)
    if avail is None:
        return
    state = optimizer_states * sum(p.numel() * p.element_size() for p in model.parameters())

    def need(batch: int) -> int | None:
        peak = forward_peak_bytes(model, (batch, *sample_shape), training=True, device=device)
        return None if peak is None else int(peak * TRAINING_MARGIN) + state

    total = need(batch_size)
    if total is None or total <= avail:
        return
    shape = "×".join(str(d) for d in sample_shape)
    one = need(1)
    if one > avail:
        raise CnnError(f"{what}: training on one {shape} image needs about {runtime.human_bytes(one)} of memory, "
                       f"more than the {runtime.human_bytes(avail)} of {where} available; use a smaller --image-size")
    per_image = max(1, need(2) - one)
    largest = max(1, min(batch_size - 1, int((avail - (one - per_image)) // per_image)))
    raise CnnError(f"{what}: a batch of {batch_size:,} {shape} images needs about {runtime.human_bytes(total)} of memory "
                   f"to train, more than the {runtime.human_bytes(avail)} of {where} available; use --batch-size {largest} or less")


def check_weights(model_on_meta, what: str) -> None:
    """Refuse building a model whose parameters alone exceed the memory available
    (`model_on_meta` built on the meta device: it holds shapes, no data)."""
    nbytes = sum(t.numel() * t.element_size() for t in [*model_on_meta.parameters(), *model_on_meta.buffers()])
    runtime.check_allocation(nbytes, f"{what}: the weights")


def gathered_bytes(rows: int, *shape: int, itemsize: int = 4) -> int:
    """Bytes of a rows×shape array (the size of a sample or feature matrix before it is made)."""
    return rows * math.prod(shape) * itemsize
