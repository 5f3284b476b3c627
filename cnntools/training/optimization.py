"""Optimiser, learning-rate schedule and loss class weights, built from a `TrainConfig`."""

from __future__ import annotations

import math

import torch

from cnntools.core.errors import UsageError
from cnntools.training.config import TrainConfig


def class_weight_tensor(spec: str, train_set, device) -> torch.Tensor | None:
    """Cross-entropy class weights: none, auto (n_samples / (n_classes × count), sklearn's
    "balanced"), smooth:ALPHA (∝ (1/count)^ALPHA, scaled to mean 1: 0 is no weighting, 1 is
    "balanced") or an explicit comma-separated list."""
    spec = (spec or "none").strip().lower()
    k = len(train_set.classes)
    if spec == "none":
        return None
    if spec == "auto" or spec.startswith("smooth:"):
        alpha = 1.0 if spec == "auto" else _smooth_alpha(spec)
        counts = torch.bincount(train_set.labels, minlength=k).double()
        if spec == "auto":
            weights = len(train_set) / (k * counts.clamp(min=1))
        else:
            weights = counts.clamp(min=1).pow(-alpha)
            weights = weights * k / weights.sum()
        return weights.float().to(device)
    try:
        values = [float(v) for v in spec.split(",")]
    except ValueError:
        raise UsageError(f"--class-weights '{spec}': use auto, none or {k} comma-separated numbers") from None
    if len(values) != k:
        raise UsageError(f"--class-weights has {len(values)} numbers but the data has {k} classes")
    if any(v < 0 for v in values) or sum(values) <= 0:
        raise UsageError("--class-weights must be non-negative and not all zero")
    return torch.tensor(values, dtype=torch.float32, device=device)


def _smooth_alpha(spec: str) -> float:
    try:
        alpha = float(spec.split(":", 1)[1])
    except ValueError:
        raise UsageError(f"--class-weights '{spec}': smooth takes a number, e.g. smooth:0.5") from None
    if not 0.0 <= alpha <= 4.0 or not math.isfinite(alpha):
        raise UsageError(f"--class-weights '{spec}': ALPHA must be between 0 (no weighting) and 4 (1 is balanced)")
    return alpha


def optimizer_states(cfg: TrainConfig) -> int:
    """Parameter-sized buffers the optimizer keeps: SGD's momentum (when used), Adam's two moments."""
    if cfg.opt == "sgd":
        return 1 if cfg.momentum else 0
    return 2


def build_optimizer(model, cfg: TrainConfig):
    """SGD, Adam or AdamW from cnntools.training.optimizers: torch.optim's update math and
    state dicts without torch.optim's torch.compile hooks (which import torch._dynamo)."""
    from cnntools.training import optimizers

    lr = cfg.resolved_lr()
    params = model.parameters()
    if cfg.opt == "sgd":
        return optimizers.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    if cfg.opt == "adam":
        return optimizers.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    return optimizers.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """A scheduler stepped once per weight update (so warm-up and one-cycle are smooth).

    step: ×gamma every `step_size` epochs; cosine: to zero over the run; onecycle: torch's
    OneCycleLR with the warm-up (default 30% of the run) as its rising phase.
    """
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(round(cfg.warmup * steps_per_epoch))
    if cfg.schedule == "onecycle":
        pct = min(0.99, max(warmup / total, 1e-3)) if warmup else 0.3
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.resolved_lr(), total_steps=total, pct_start=pct)
    step_size = cfg.step_size or max(1, math.ceil(cfg.epochs / 3))

    def factor(step: int) -> float:
        scale = min(1.0, (step + 1) / warmup) if warmup and step < warmup else 1.0
        if cfg.schedule == "step":
            scale *= cfg.gamma ** ((step // steps_per_epoch) // step_size)
        elif cfg.schedule == "cosine":
            progress = max(0.0, (step - warmup) / max(1, total - warmup))
            scale *= 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return scale

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
