"""Running a model on images: the one place that does it.

`Preprocessing` (`cnntools.inference.preprocessing`) says how a model wants its input;
`forward_batches` runs the model over uint8 images batch by batch (preprocessing on the
device, the chosen precision under autocast, channels_last where it pays, optional hooked
layers) and `predict` collects the logits. eval, confusion, saliency (its prediction pass),
featmaps, filters and tsne all go through here, so a precision or memory-format choice made
here holds everywhere. Layers are captured with `capture_activations` (the hook holder of
`cnntools.inference.hooks`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from cnntools.core import runtime
from cnntools.data.imageset import CHUNK_BYTES, chunk_rows
from cnntools.inference.preprocessing import Preprocessing


def wants_channels_last(device, precision: str, arch: str, training: bool = False) -> bool:
    """The memory format that runs the model fastest: channels_last on CUDA; on the CPU,
    channels_last for training, and for inference in bf16 (where it was measured to pay; not
    re-measured since); NCHW for the MLP.

    Training measured with tests/benchmarks/bench_layout.py (a bare training step both ways,
    idle AVX-512/AVX512-BF16 Xeon): channels_last / NCHW in fp32 1.32x (simple-cnn 32 px),
    1.04x (resnet18 32 px), 1.26x (compact-cnn 128 px), and 1.15-1.23x on an AVX2 EPYC (issue
    29); in bf16 1.24x (simple-cnn 16 px, the README quick start), 1.23-1.31x (simple-cnn 32
    px), 1.00x (resnet18 32 px), 1.12x (compact-cnn 128 px). An earlier run under a load of
    11-17 had NCHW ahead for bf16 below 64 px; at idle it never is (docs/performance.md).
    """
    if arch == "mlp":
        return False
    if device.type == "cpu" and training:
        return True
    return device.type == "cuda" or (device.type == "cpu" and precision == "bf16")


@contextlib.contextmanager
def capture_activations(model, names: Sequence[str], clone: bool = True, inputs: bool = False) -> Iterator[dict]:
    """Record the named layers' outputs (with `inputs`: their first inputs) during the forward
    passes inside the block; the dict holds the last pass's tensors (`Hooks.record`: cloned by
    default). The hooks are removed when the block exits, errors included.
    """
    from cnntools.inference.hooks import Hooks

    with Hooks() as hooks:
        yield hooks.record(model, names, inputs=inputs, clone=clone)


@dataclass
class Batch:
    """One forward pass of `forward_batches`: where it starts among the images, how many it
    holds, the logits (float32, on the model's device) and the captured layers (in the dtype
    the model produced them: bfloat16 under bf16 autocast)."""

    start: int
    size: int
    logits: torch.Tensor
    activations: dict


def batch_rows(preprocessing: Preprocessing, batch_size: int) -> int:
    """Images per forward pass: `batch_size`, fewer for large images. The float32 inputs of a
    pass are bounded in bytes, so the activations of a batch of 224-px photos do not dwarf
    the rest of the process; small images keep `batch_size`."""
    return min(batch_size, chunk_rows(4 * math.prod(preprocessing.shape), CHUNK_BYTES // 2))


def forward_batches(
    model,
    images: torch.Tensor,
    preprocessing: Preprocessing,
    *,
    batch_size: int = 256,
    device=None,
    precision: str = "fp32",
    channels_last: bool | None = None,
    arch: str = "",
    layers: Sequence[str] = (),
    layer_inputs: bool = False,
) -> Iterator[Batch]:
    """Run `model` over uint8 N×C×H×W `images` in batches under `torch.inference_mode()`.

    Each batch (at most `batch_rows(preprocessing, batch_size)` images) is preprocessed on
    `device` (default: the model's) and run under autocast for `precision` (a resolved one:
    fp32, bf16 or fp16), in channels_last when `channels_last` (None: where it pays, see
    `wants_channels_last`). `layers` are captured with forward hooks (their inputs with
    `layer_inputs`); the hooks are removed when the iteration ends or is abandoned.
    """
    from cnntools.core.errors import CnnError

    if device is None:
        device = runtime.module_device(model)
    if channels_last is None:
        channels_last = wants_channels_last(device, precision, arch)
    model.eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step = batch_rows(preprocessing, batch_size)
    with capture_activations(model, layers, inputs=layer_inputs) as store, torch.inference_mode():
        for start in range(0, len(images), step):
            x = preprocessing(images[start : start + step], device, channels_last)
            store.clear()
            with runtime.autocast(device, precision):
                logits = model(x)
            missing = [n for n in layers if n not in store]
            if missing:
                raise CnnError(f"layer(s) {', '.join(missing)} did not run in the forward pass; pick another layer")
            yield Batch(start, x.shape[0], logits.float(), dict(store))


def predict(model, images: torch.Tensor, preprocessing: Preprocessing, *,
            progress: Callable[[int], None] | None = None, **options) -> torch.Tensor:
    """Logits (float32, CPU, N×K) of `model` over uint8 `images`; `options` are those of
    `forward_batches` (batch_size, device, precision, channels_last, arch). `progress(n)` is
    called after each batch with the number of images done."""
    outputs = []
    for batch in forward_batches(model, images, preprocessing, **options):
        outputs.append(batch.logits.cpu())
        if progress is not None:
            progress(batch.start + batch.size)
    k = outputs[0].shape[1] if outputs else 0
    return torch.cat(outputs) if outputs else torch.empty(0, k)
