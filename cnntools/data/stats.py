"""Exact per-channel statistics and the normalisation constants built from them."""

from __future__ import annotations

import math

import torch

from cnntools.output import CnnError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
NORMALIZATIONS = ("none", "half", "imagenet", "dataset")


def channel_stats(images: torch.Tensor, scale: float = 255.0) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and population std over every pixel of a uint8 N×C×H×W batch.

    Sums of values and of squares are accumulated in int64 (exact for uint8), and the
    variance is formed as (n·Σx² − (Σx)²) / n² in Python integers before the single
    division, so the result is the float64 rounding of the exact value. Values are divided
    by `scale` (255 → pixels in 0..1, the scale models see).
    """
    if images.numel() == 0:
        raise CnnError("cannot compute mean/std of an empty split")
    c = images.shape[1]
    total = [0] * c
    squares = [0] * c
    for chunk in images.split(4096):
        values = chunk.to(torch.int64).transpose(0, 1).reshape(c, -1)
        total = [t + int(s) for t, s in zip(total, values.sum(1).tolist())]
        squares = [q + int(s) for q, s in zip(squares, (values * values).sum(1).tolist())]
    n = images.numel() // c
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
            raise CnnError("--normalize dataset needs the training split to measure")
        mean, std = channel_stats(train_set.images)
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
        raise CnnError(f"--normalize '{spec}': give MEAN,STD or {channels} means then {channels} stds")
    if any(s <= 0 for s in std):
        raise CnnError(f"--normalize '{spec}': std must be positive")
    return mean, std
