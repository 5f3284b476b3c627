"""Running sums of an epoch: what the epoch record, the progress line and `--print-every` report.

The sums stay on the training device, so adding a batch never waits for it; they are read
(one transfer) where the loop reads the loss anyway, and reduced across DDP ranks where a
record is made.
"""

from __future__ import annotations

import time

import torch

from cnntools.training.collectives import reduce_sum


class EpochMeters:
    """Loss, correct predictions and images of one epoch, and of the current `--print-every`
    window. `partial`: the sums an interrupted epoch stopped with (resume continues them)."""

    def __init__(self, device: torch.device, partial: dict | None = None):
        part = partial or {}
        self.totals = torch.tensor(
            [part.get("loss_sum", 0.0), part.get("correct", 0.0), part.get("count", 0.0)], dtype=torch.float64, device=device
        )
        self.window = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, batches, correct, images
        self.seconds_before = float(part.get("seconds", 0.0))
        self.start = self.window_start = time.perf_counter()
        self.images = 0  # seen in this process since it started the epoch (throughput)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """One batch: its detached mean loss and the logits it was computed from."""
        n = labels.numel()
        correct = (logits.argmax(1) == labels).sum()
        self.images += n
        self.totals[0] += loss.double() * n
        self.totals[1] += correct
        self.totals[2] += n
        self.window[0] += loss.double()
        self.window[1] += 1
        self.window[2] += correct
        self.window[3] += n

    def running(self, lr: float) -> dict:
        """The epoch so far, for the progress line (this rank's batches; reads the device)."""
        loss_sum, hits, count = self.totals.tolist()
        return {"loss": loss_sum / max(1.0, count), "acc": hits / max(1.0, count), "lr": lr}

    def take_window(self) -> dict:
        """The `--print-every` window's mean loss, accuracy and images/s over every rank (all
        ranks must call it together), then a new window."""
        w = reduce_sum(self.window).cpu().tolist()
        now = time.perf_counter()
        taken = {"train_loss": w[0] / max(1.0, w[1]), "train_acc": w[2] / max(1.0, w[3]),
                 "images_per_s": w[3] / max(1e-9, now - self.window_start)}
        self.window.zero_()
        self.window_start = now
        return taken

    def seconds(self) -> float:
        """Wall time of the epoch, the part before an interruption included."""
        return self.seconds_before + time.perf_counter() - self.start

    def partial(self) -> dict:
        """What a checkpoint of an interrupted epoch stores to continue these sums."""
        return {"loss_sum": float(self.totals[0]), "correct": float(self.totals[1]), "count": float(self.totals[2]),
                "seconds": self.seconds()}

    def epoch_totals(self, world_size: int) -> dict:
        """train_loss, train_acc over every rank (all ranks call it together), seconds and images/s."""
        totals = reduce_sum(self.totals).cpu()
        count = max(1.0, float(totals[2]))
        return {
            "train_loss": float(totals[0]) / count,
            "train_acc": float(totals[1]) / count,
            "seconds": round(self.seconds(), 3),
            "images_per_s": round(self.images * world_size / max(1e-9, time.perf_counter() - self.start), 1),
        }
