"""Running a trained model on images: batched prediction under `torch.inference_mode()`."""

from __future__ import annotations

import math
from typing import Callable

import torch

from cnntools import runtime
from cnntools.data.imageset import CHUNK_BYTES, chunk_rows


def wants_channels_last(device, precision: str, arch: str) -> bool:
    """channels_last pays on CUDA and with bf16 on CPUs that run it natively; not for the MLP."""
    if arch == "mlp":
        return False
    return device.type == "cuda" or (device.type == "cpu" and precision == "bf16")


def predict(
    lm_or_model,
    imageset,
    batch_size: int = 256,
    device=None,
    precision: str = "fp32",
    mean=None,
    std=None,
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits float32 CPU N×K, labels CPU N) of a model over an ImageSet, batched, under
    `torch.inference_mode()`.

    `lm_or_model` is a `LoadedModel` (its own preprocessing is applied) or an `nn.Module`
    (images scaled to [0, 1] and normalised with `mean`/`std` when given).
    `progress(n)` is called after each batch with the number of images done.
    """
    from cnntools.checkpoint import LoadedModel
    from cnntools.data.loader import fold_normalization, normalize_uint8

    if isinstance(lm_or_model, LoadedModel):
        model = lm_or_model.model
        prepare = lm_or_model.prepare
        device = device or lm_or_model.device
    else:
        model = lm_or_model
        device = device or next(model.parameters()).device
        scale, shift = fold_normalization(mean if mean is not None else [0.0] * imageset.channels,
                                          std if std is not None else [1.0] * imageset.channels, device)

        def prepare(images, channels_last=False):
            return normalize_uint8(images.to(device), scale, shift, channels_last)

    model.eval()
    # The layout the precision runs fastest in (bf16 on CPU without it: about half the speed).
    channels_last = wants_channels_last(device, precision, getattr(lm_or_model, "arch", ""))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    outputs = []
    # Large images go fewer per forward pass (inputs bounded in bytes), so the activations of
    # a batch of 224-px photos do not dwarf the rest of the process; small ones keep `batch_size`.
    step = min(batch_size, chunk_rows(4 * math.prod(imageset.images.shape[1:]), CHUNK_BYTES // 2))
    with torch.inference_mode():
        for start in range(0, len(imageset), step):
            x = prepare(imageset.images[start : start + step], channels_last)
            with runtime.autocast(device, precision):
                logits = model(x)
            outputs.append(logits.float().cpu())
            if progress is not None:
                progress(min(len(imageset), start + step))
    k = outputs[0].shape[1] if outputs else 0
    logits = torch.cat(outputs) if outputs else torch.empty(0, k)
    return logits, imageset.labels.clone()
