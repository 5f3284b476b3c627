"""A model's mean loss and accuracy over a validation or test split, summed across ranks
under DistributedDataParallel."""

from __future__ import annotations

import torch

from cnntools.core import runtime
from cnntools.training.collectives import reduce_sum


def evaluate(model, loader, criterion, device, precision: str = "fp32") -> dict:
    """Mean loss and accuracy over a loader (summed across ranks under DDP: give each rank an
    unpadded shard and the unwrapped model). The loader yields batches in the model's memory
    format."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    with torch.inference_mode():
        for x, y in loader:
            with runtime.autocast(device, precision):
                logits = model(x)
            logits = logits.float()
            totals[0] += criterion(logits, y).double() * y.numel()
            totals[1] += (logits.argmax(1) == y).sum()
            totals[2] += y.numel()
    totals = reduce_sum(totals).cpu()
    n = max(1.0, float(totals[2]))
    return {"loss": float(totals[0]) / n, "acc": float(totals[1]) / n, "count": int(totals[2])}
