"""Convolutions smaller than their kernel's reach run in fp32 under CPU bf16 autocast.

On CPUs with native bf16 (AVX512-BF16/AMX), oneDNN's bf16 weight gradient of a strided
convolution whose input is smaller than its kernel (a 3x3 stride-2 conv on a 1x1 map: deep
networks on small images, e.g. timm's ResNets at 16 px) intermittently writes NaN into the
kernel taps that only ever see padding: about one step in five, in channels_last and NCHW
alike, in a bare PyTorch bf16 loop too (torch 2.14.1; fp32 never does). The gradient those
taps should get is exactly 0. Such layers work on one or a few pixels, so running them in
fp32 costs nothing measurable and removes the NaNs at their source.
"""

from __future__ import annotations

import torch
from torch import nn


def input_sizes(model: nn.Module, shape: tuple[int, ...], device) -> dict[nn.Module, tuple[int, int]]:
    """The spatial size (H, W) of every Conv2d's input in one eval-mode pass of a zero image
    of `shape` (C, H, W) — eval mode, so BatchNorm's running statistics are left alone."""
    sizes: dict[nn.Module, tuple[int, int]] = {}

    def record(conv, args) -> None:  # returns None: a pre-hook's return value would replace the input
        sizes.setdefault(conv, tuple(args[0].shape[-2:]))

    from cnntools.inference.hooks import Hooks

    was_training = model.training
    with Hooks() as hooks:
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                hooks.forward_pre(m, record)
        try:
            model.eval()
            with torch.no_grad():
                model(torch.zeros(1, *shape, device=device))
        finally:
            model.train(was_training)
    return sizes


def _fp32_forward(forward):
    def run(x, *args, **kwargs):
        with torch.autocast("cpu", enabled=False):
            return forward(x.float(), *args, **kwargs)

    return run


def guard_small_convs(model: nn.Module, shape: tuple[int, ...], device, precision: str) -> list[nn.Module]:
    """Under bf16 on the CPU, make every Conv2d whose input is smaller than its kernel run in
    fp32 (see the module's docstring); returns those layers. Nothing changes elsewhere."""
    if precision != "bf16" or torch.device(device).type != "cpu":
        return []
    guarded = []
    for conv, (height, width) in input_sizes(model, shape, device).items():
        if height < conv.kernel_size[0] or width < conv.kernel_size[1]:
            conv.forward = _fp32_forward(conv.forward)  # on the instance: the weights and state_dict are untouched
            guarded.append(conv)
    return guarded
