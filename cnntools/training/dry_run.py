"""`train --dry-run`: what a run will do and roughly how long it will take, before it starts.

The data, model and options are resolved exactly as the run would (a `Trainer` with no
output file), then a few real training steps and validation batches are timed on the chosen
device; the run's wall time is extrapolated from them:

    start-up + epochs × (updates per epoch × seconds per update + validation batches × seconds per batch)

Memory: parameters, gradients and optimizer state are counted exactly; activations are the
measured peak of the timed steps on CUDA, and on the CPU the peak of one training step
traced on the meta device (`cnntools.inference.memory`, the estimate `train` checks a step against);
the process's peak resident memory after the timed steps is reported as measured. Nothing
is written.
"""

from __future__ import annotations

import time

import torch

from cnntools.core import runtime
from cnntools.checkpoint import unwrap_model
from cnntools.inference.memory import forward_peak_bytes

# Optimizer state per parameter, in parameter-sized tensors.
STATE_PER_PARAMETER = {"adam": 2, "adamw": 2, "sgd": 1}

WARMUP_STEPS = 2  # the first steps pay for allocator growth and kernel selection
TIMED_STEPS = 5
TIMED_SECONDS = 10.0  # stop timing early on slow models
EVAL_BATCHES = 3


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(trainer, x, y) -> None:
    # One weight update as the training loop makes it (autocast, scaler, optimizer).
    with runtime.autocast(trainer.device, trainer.precision):
        loss = trainer.criterion(trainer.model(x).float(), y)
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scaler.scale(loss).backward()
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()


def _batches(loader, count: int) -> tuple[list, float]:
    """The loader's first `count` batches, and the mean seconds it took to make one (reading,
    augmenting, moving to the device), the first one left out: it pays for starting the epoch."""
    loader.set_epoch(1)
    out, times = [], []
    start = time.perf_counter()
    for batch in loader:
        out.append(batch)
        times.append(time.perf_counter() - start)
        if len(out) == count:
            break
        start = time.perf_counter()
    later = times[1:] or times
    return out, sum(later) / max(1, len(later))


def _peak_rss_bytes() -> int | None:
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux
    except (ImportError, OSError):
        return None


def estimate(trainer, setup_seconds: float = 0.0) -> dict:
    """The dry run's report for a freshly built `Trainer` (its model and optimizer are spent);
    `setup_seconds`: what loading the data and building the trainer took, which the run pays too."""
    from cnntools.models import count_parameters

    cfg, device = trainer.cfg, trainer.device
    model = unwrap_model(trainer.model)
    params = list(model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    grad_bytes = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    state_bytes = grad_bytes * STATE_PER_PARAMETER.get(cfg.opt, 0) if cfg.opt != "sgd" or cfg.momentum else 0
    data_bytes = sum(s.images.numel() * s.images.element_size() for s in (trainer.train_set, trainer.val_set) if s is not None)

    batches, load_seconds = _batches(trainer.train_loader, WARMUP_STEPS + TIMED_STEPS)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    trainer.model.train()
    for x, y in batches[:WARMUP_STEPS]:
        _step(trainer, x, y)
    _sync(device)
    timed, start = 0, time.perf_counter()
    for x, y in batches[WARMUP_STEPS:] or batches:
        _step(trainer, x, y)
        timed += 1
        if time.perf_counter() - start > TIMED_SECONDS:
            break
    _sync(device)
    # The loop makes each batch and then steps on it: an update costs both.
    step_seconds = (time.perf_counter() - start) / max(1, timed) + load_seconds
    if device.type == "cuda":
        activation_bytes = max(0, torch.cuda.max_memory_allocated(device) - base - grad_bytes - state_bytes)
        activation_how = "measured peak"
    else:
        # The same traced estimate `train` checks a step against (cnntools.inference.memory), less the
        # gradients it includes, which are counted on their own above.
        peak = forward_peak_bytes(model, tuple(batches[0][0].shape), training=True)
        activation_bytes = max(0, peak - grad_bytes) if peak is not None else 0
        activation_how = "traced peak" if peak is not None else "not estimated (the model does not run on the meta device)"

    eval_seconds, val_batches = 0.0, 0
    # Evaluation batches per epoch: validation once per epoch and at every --val-every
    # update, the test split with --test-each-epoch; all timed as validation batches.
    passes = 1 + (trainer.steps_per_epoch // cfg.val_every if cfg.val_every else 0)
    if trainer.val_loader is not None:
        val_batches = len(trainer.val_loader) * passes
    if trainer.test_loader is not None:
        val_batches += len(trainer.test_loader)
    loader = trainer.val_loader or trainer.test_loader
    if loader is not None:
        sample, eval_load_seconds = _batches(loader, EVAL_BATCHES)
        model.eval()
        _sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            for x, _ in sample:
                with runtime.autocast(device, trainer.precision):
                    model(x)
        _sync(device)
        eval_seconds = (time.perf_counter() - start) / max(1, len(sample)) + eval_load_seconds
    epoch_seconds = trainer.steps_per_epoch * step_seconds + val_batches * eval_seconds
    total = {
        "parameters": param_bytes, "gradients": grad_bytes, "optimizer_state": state_bytes,
        "activations": activation_bytes, "dataset": data_bytes,
    }
    return {
        "arch": cfg.arch,
        "parameters": count_parameters(model),
        "trainable_parameters": count_parameters(model, trainable_only=True),
        "data": cfg.data,
        "train_images": len(trainer.train_set),
        "val_images": len(trainer.val_set) if trainer.val_set is not None else 0,
        "input": f"{trainer.in_channels}x{trainer.image_size}x{trainer.image_size}",
        "classes": len(trainer.classes),
        "device": str(device),
        "precision": trainer.precision,
        "batch_size": cfg.batch_size,
        "epochs": cfg.epochs,
        "steps_per_epoch": trainer.steps_per_epoch,
        "total_steps": trainer.steps_per_epoch * cfg.epochs,
        "val_batches_per_epoch": val_batches,
        "memory_bytes": {**total, "total": sum(total.values())},
        "activations_estimate": activation_how,
        "peak_rss_bytes": _peak_rss_bytes(),
        "timed_steps": timed,
        "seconds_per_step": step_seconds,
        "seconds_per_val_batch": eval_seconds,
        "estimated_epoch_seconds": epoch_seconds,
        "setup_seconds": setup_seconds,
        "estimated_seconds": setup_seconds + epoch_seconds * cfg.epochs,
    }


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def table_rows(report: dict) -> list[dict]:
    """The report as (item, value) rows for people."""
    mem = report["memory_bytes"]
    rows = [
        ("architecture", f"{report['arch']} ({report['parameters']:,} parameters, {report['trainable_parameters']:,} trainable)"),
        ("data", f"{report['data']}: {report['train_images']:,} train, {report['val_images']:,} validation images, "
                 f"{report['input']}, {report['classes']} classes"),
        ("device", f"{report['device']} {report['precision']}"),
        ("steps", f"{report['steps_per_epoch']:,} per epoch of {report['batch_size']} images x {report['epochs']} epochs "
                  f"= {report['total_steps']:,}"),
        ("memory", f"{human_bytes(mem['total'])}: parameters {human_bytes(mem['parameters'])}, gradients "
                   f"{human_bytes(mem['gradients'])}, optimizer {human_bytes(mem['optimizer_state'])}, activations "
                   f"{human_bytes(mem['activations'])} ({report['activations_estimate']}), data {human_bytes(mem['dataset'])}"),
        ("peak process memory", human_bytes(report["peak_rss_bytes"])),
        ("time per step", f"{report['seconds_per_step'] * 1000:.1f} ms (mean of {report['timed_steps']} timed steps)"),
        ("evaluation per epoch", f"{report['seconds_per_val_batch'] * report['val_batches_per_epoch'] * 1000:.1f} ms "
                                 f"({report['val_batches_per_epoch']} batch{'es' if report['val_batches_per_epoch'] != 1 else ''}: "
                                 "validation, --val-every, --test-each-epoch)"),
        ("setup", f"{report['setup_seconds']:.1f} s (start-up, data and model)"),
        ("estimated epoch", _duration(report["estimated_epoch_seconds"])),
        ("estimated run", _duration(report["estimated_seconds"])),
    ]
    return [{"item": k, "value": v} for k, v in rows]


def _duration(seconds: float) -> str:
    """h:mm:ss, with the seconds themselves under a minute (an epoch of 1.2 s is not 0:00:01)."""
    from cnntools.output.progress import format_duration

    return f"{seconds:.1f} s" if seconds < 60 else format_duration(seconds)


def process_seconds() -> float | None:
    """Seconds since this process started (Linux: from /proc), None where that is unknown."""
    import os

    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as handle:
            uptime = float(handle.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))  # field 22: start time in ticks
    except (OSError, ValueError, IndexError):
        return None
