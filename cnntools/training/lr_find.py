"""Leslie Smith's learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training
Neural Networks", §3.3), as fastai's `lr_find` and Lightning's tuner run it.

The learning rate grows exponentially from `start_lr` to `end_lr` over `steps` weight
updates of a fresh model; each update's loss is recorded and smoothed with a debiased
exponential moving average (beta 0.98); the sweep stops early once the smoothed loss passes
`diverge` times its minimum (or is not finite). Two suggestions are read off the smoothed
curve, fastai's:

- steepest: the rate where the loss falls fastest per unit of log learning rate;
- valley: the longest run of falling loss (longest decreasing subsequence), and the rate
  two thirds of the way down it (fastai's `valley`, the default since fastai 2.5): more
  robust than the steepest point, which noise can place anywhere.

Both skip the first tenth of the sweep and its last five points, where the moving average
is still warming up and where the loss already climbs.
"""

from __future__ import annotations

import math

import torch

from cnntools.core import runtime


def lr_at(step: int, steps: int, start_lr: float, end_lr: float) -> float:
    """The exponential schedule: start_lr at step 0, end_lr at step steps-1."""
    return start_lr * (end_lr / start_lr) ** (step / max(1, steps - 1))


def range_test(trainer, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 200, beta: float = 0.98,
               diverge: float = 4.0, on_step=None) -> dict:
    """Run the sweep on `trainer`'s model, optimizer and training batches (they are spent:
    build the trainer for this alone, with no output file). Returns the records and the
    suggestions; see the module docstring."""
    model, optimizer, criterion = trainer.model, trainer.optimizer, trainer.criterion
    records: list[dict] = []
    average, best, stopped = 0.0, math.inf, "end"
    model.train()
    epoch = 0
    while len(records) < steps and stopped == "end":
        epoch += 1
        trainer.train_loader.set_epoch(epoch)
        for x, y in trainer.train_loader:
            step = len(records)
            if step >= steps:
                break
            lr = lr_at(step, steps, start_lr, end_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with runtime.autocast(trainer.device, trainer.precision):
                loss = criterion(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            trainer.scaler.scale(loss).backward()
            trainer.scaler.step(optimizer)
            trainer.scaler.update()
            value = float(loss.detach())
            if not math.isfinite(value):
                stopped = "diverged"
                break
            average = beta * average + (1 - beta) * value
            smoothed = average / (1 - beta ** (step + 1))
            records.append({"step": step + 1, "lr": lr, "loss": value, "smoothed_loss": smoothed})
            if on_step is not None:
                on_step(step + 1, steps, records[-1])
            if step > 0 and smoothed > diverge * best:
                stopped = "diverged"
                break
            best = min(best, smoothed)
    return {"records": records, "stopped": stopped, "suggestions": suggest(records, steps)}


def suggest(records: list[dict], steps: int) -> dict:
    """{"steepest": lr, "valley": lr} (None where the sweep is too short to tell)."""
    window = records[steps // 10 : len(records) - 5]
    if len(window) < 3:
        return {"steepest": None, "valley": None}
    lrs = torch.tensor([r["lr"] for r in window], dtype=torch.float64)
    losses = torch.tensor([r["smoothed_loss"] for r in window], dtype=torch.float64)
    return {"steepest": steepest(lrs, losses), "valley": valley(lrs, losses)}


def steepest(lrs: torch.Tensor, losses: torch.Tensor) -> float:
    """The rate at the most negative slope of loss against log(lr) (fastai's `steep`)."""
    slopes = (losses[1:] - losses[:-1]) / (lrs[1:].log() - lrs[:-1].log())
    return float(lrs[int(slopes.argmin())])


def valley(lrs: torch.Tensor, losses: torch.Tensor) -> float:
    """fastai's `valley`: the longest decreasing run of the loss (O(n²) longest decreasing
    subsequence), and the rate two thirds of the way down it."""
    n = len(losses)
    values = losses.tolist()
    lds = [1] * n
    max_start, max_end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if values[i] < values[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    index = max_start + int(sections) + int(sections / 2)
    return float(lrs[index])


def plot(result: dict, path: str, title: str) -> None:
    """Smoothed loss against the learning rate (log axis), raw losses faint, both suggestions marked."""
    from cnntools.output.plots import new_figure, save_figure

    records = result["records"]
    fig = new_figure(7, 4.5)
    ax = fig.add_subplot()
    lrs = [r["lr"] for r in records]
    ax.plot(lrs, [r["loss"] for r in records], color="0.75", linewidth=0.8, label="loss")
    ax.plot(lrs, [r["smoothed_loss"] for r in records], color="C0", linewidth=1.8, label="smoothed loss")
    by_lr = {r["lr"]: r["smoothed_loss"] for r in records}
    for (name, lr), color, marker in zip(result["suggestions"].items(), ("C3", "C2"), ("o", "s")):
        if lr is not None:
            ax.plot([lr], [by_lr[lr]], marker=marker, color=color, markersize=8, linestyle="none",
                    label=f"{name}: {lr:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title(title)
    smoothed = [r["smoothed_loss"] for r in records]
    if smoothed:
        # From the lowest smoothed loss to the highest before it (the divergence after it
        # would squash the interesting part), and never narrower than 2% of the loss (a flat
        # stretch would otherwise be drawn as noise).
        lowest = min(range(len(smoothed)), key=smoothed.__getitem__)
        low, top = smoothed[lowest], max(smoothed[: lowest + 1])
        span = max(top - low, 0.02 * abs(low), 1e-6)
        ax.set_ylim(low - 0.15 * span, top + 0.35 * span)
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    save_figure(fig, path)
