"""How big a model is: parameters and multiply-accumulates (MACs; FLOPs = 2 x MACs), counted
by torch's own FlopCounterMode — the one counter behind `featmaps --list-layers`, the report
and the dry run's cheaper-run estimates. Works on the meta device (shapes only)."""

from __future__ import annotations

import torch
from torch import nn


def count_macs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Run `model(example)` once under FlopCounterMode: module name → MACs ("" = the whole model).

    FlopCounterMode names modules after the root's class ("SimpleCNN.features.0"); its
    "Global" entry is everything the pass computed, functional calls included.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, depth=None)
    with torch.no_grad(), counter:  # not inference_mode: the counter's module tracker needs autograd hooks
        model(example)
    root = type(model).__name__
    out = {"": counter.get_total_flops() // 2}
    for key, ops in counter.get_flop_counts().items():
        if key.startswith(root + "."):
            out[key[len(root) + 1:]] = sum(ops.values()) // 2
    return out


def model_totals(model: nn.Module, in_channels: int, image_size: int) -> dict:
    """Parameters (all and trainable) and multiply-accumulates for one image of the input size."""
    device = next(model.parameters()).device
    macs = count_macs(model, torch.zeros(1, in_channels, image_size, image_size, device=device))[""]
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "macs": macs,
    }
