"""Exact per-channel statistics and the normalisation constants built from them."""

from __future__ import annotations

import math

import torch

from cnntools.data.imageset import iter_chunks
from cnntools.core.errors import CnnError, UsageError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
NORMALIZATIONS = ("none", "half", "imagenet", "dataset")


def channel_stats(images, scale: float = 255.0) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and population std over every pixel of uint8 N×C×H×W images
    (a tensor, or an ImageSet, read in pieces bounded in bytes).

    Each channel's 256-bin histogram is counted exactly; Σx and Σx² follow from it in
    Python integers and the variance is formed as (n·Σx² − (Σx)²) / n² before the single
    division, so the result is the float64 rounding of the exact value. Values are divided
    by `scale` (255 → pixels in 0..1, the scale models see).
    """
    chunks = images.chunks() if hasattr(images, "chunks") else iter_chunks(images)
    tensor = images.images if hasattr(images, "chunks") else images
    if tensor.numel() == 0:
        raise CnnError("cannot compute mean/std of an empty split")
    c = tensor.shape[1]
    counts = torch.zeros(c, 256, dtype=torch.int64)
    for _, chunk in chunks:
        for channel in range(c):
            counts[channel] += torch.bincount(chunk[:, channel].reshape(-1), minlength=256)
    values = list(range(256))
    n = tensor.numel() // c
    total = [sum(v * k for v, k in zip(values, row)) for row in counts.tolist()]
    squares = [sum(v * v * k for v, k in zip(values, row)) for row in counts.tolist()]
    means = [t / n / scale for t in total]
    stds = [math.sqrt((n * q - t * t) / (n * n)) / scale for t, q in zip(total, squares)]
    return means, stds


def normalization(spec: str, train_set=None) -> tuple[list[float], list[float]]:
    """Mean and std (one per channel, for pixels scaled to 0..1) named by `spec`.

    `none` → 0/1, `half` → 0.5/0.5, `imagenet` → ImageNet's (grey: their average),
    `dataset` → the exact statistics of `train_set`, or numbers: `MEAN,STD` (every
    channel) or `M1,M2,M3,S1,S2,S3` (one per channel).
    """
    channels = train_set.channels if train_set is not None else 3
    name = (spec or "none").strip().lower()
    if name == "none":
        return [0.0] * channels, [1.0] * channels
    if name == "half":
        return [0.5] * channels, [0.5] * channels
    if name == "imagenet":
        if channels == 3:
            return list(IMAGENET_MEAN), list(IMAGENET_STD)
        return [sum(IMAGENET_MEAN) / 3] * channels, [sum(IMAGENET_STD) / 3] * channels
    if name == "dataset":
        if train_set is None:
            raise UsageError("--normalize dataset needs the training split to measure")
        mean, std = channel_stats(train_set)
        # A channel that never varies (a constant colour plane) has nothing to scale: leave it
        # at std 1 rather than divide by zero.
        return mean, [v if v > 0 else 1.0 for v in std]
    try:
        numbers = [float(v) for v in name.replace("/", ",").split(",") if v.strip()]
    except ValueError:
        raise CnnError(
            f"--normalize '{spec}': use none, half, imagenet, dataset, MEAN,STD or one mean and std per channel"
        ) from None
    if len(numbers) == 2:
        mean, std = [numbers[0]] * channels, [numbers[1]] * channels
    elif len(numbers) == 2 * channels:
        mean, std = numbers[:channels], numbers[channels:]
    else:
        raise UsageError(f"--normalize '{spec}': give MEAN,STD or {channels} means then {channels} stds")
    if any(s <= 0 for s in std):
        raise UsageError(f"--normalize '{spec}': std must be positive")
    return mean, std
