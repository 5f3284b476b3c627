"""`train --dry-run`: what a run will do and roughly how long it will take, before it starts.

The data, model and options are resolved exactly as the run would (a `Trainer` with no
output file), then a few real training steps and validation batches are timed on the chosen
device; the run's wall time is extrapolated from them:

    start-up + epochs × (updates per epoch × seconds per update + validation batches × seconds per batch)

The timing keeps to a budget (TIME_BUDGET seconds, `time_within`): fast steps are timed a
few times at the full batch; a step too slow for that is timed on sub-batches of growing
size and scaled to the batch, so a dry run answers in seconds whatever the model and image
size. The report gives the range of the timed steps and the load average: on a shared
machine the figure holds for the load it was measured under. A run estimated at more than
an hour comes with cheaper runs and their estimates (`cheaper_runs`).

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

TIME_BUDGET = 15.0  # seconds of timing: with set-up and import the answer comes within 30 s
TIMED_STEPS = 5  # full steps timed when they are fast enough
GROWTH = 2  # a slow model is timed on sub-batches of 2, 4, 8, ... images
HOUR = 3600.0
clock = time.perf_counter  # tests replace it


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


def time_within(run, full: int, budget: float, device, steps: int = TIMED_STEPS, smallest: int = 2) -> dict:
    """Seconds per call of `run(k)` (a step on `k` images) at `full` images, measured within
    about `budget` seconds.

    The first call of all and the first at each larger size pay for kernel selection and
    allocator growth: the first is never counted, the others only when no second one fits.
    A model too slow for `steps` full calls within the budget is timed on sub-batches growing
    by GROWTH from `smallest` images, as far as the budget allows, and its time extrapolated
    to `full` images along the line through the last two sizes (a call's fixed part and its
    cost per image), or in proportion to the images when only one size was timed. Returns the mean and the min-max per call, the calls timed and the
    images per timed call.
    """
    deadline = clock() + budget
    k = min(full, smallest)
    run(k)  # the first call of all pays for kernel selection and set-up: never counted
    _sync(device)
    times: list[float] = []
    skip, previous = 0, None  # calls to leave out at this size (its warm-up); the last size's (k, mean)
    while True:
        start = clock()
        run(k)
        _sync(device)
        times.append(clock() - start)
        left = deadline - clock()
        if k < full:
            bigger = min(full, k * GROWTH)
            if 2 * times[-1] * bigger / k <= left:  # a warm-up and a timed call at the next size fit
                kept = times[skip:] or times
                previous, k, times, skip = (k, sum(kept) / len(kept)), bigger, [], 1
                continue
            if len(times) < 3 and times[-1] <= left:
                continue
            break
        if len(times) > steps or times[-1] > left:
            break
    kept = times[skip:] or times
    mean = sum(kept) / len(kept)
    scale = 1.0
    if k < full:
        # Two sizes give the fixed part of a call and its cost per image; one size: proportional (an upper bound).
        per_image = (mean - previous[1]) / (k - previous[0]) if previous else 0.0
        scale = (mean + per_image * (full - k)) / mean if per_image > 0 else full / k
    return {"mean": mean * scale, "min": min(kept) * scale, "max": max(kept) * scale, "timed": len(kept), "images": k}


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


def estimate(trainer, setup_seconds: float = 0.0, time_budget: float | None = None) -> dict:
    """The dry run's report for a freshly built `Trainer` (its model and optimizer are spent);
    `setup_seconds`: what loading the data and building the trainer took, which the run pays too;
    `time_budget`: seconds the timing may take (TIME_BUDGET)."""
    from cnntools.models import count_parameters

    started = clock()
    cfg, device = trainer.cfg, trainer.device
    model = unwrap_model(trainer.model)
    params = list(model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    grad_bytes = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    state_bytes = grad_bytes * STATE_PER_PARAMETER.get(cfg.opt, 0) if cfg.opt != "sgd" or cfg.momentum else 0
    data_bytes = sum(s.images.numel() * s.images.element_size() for s in (trainer.train_set, trainer.val_set) if s is not None)

    budget = TIME_BUDGET if time_budget is None else time_budget
    batches, load_seconds = _batches(trainer.train_loader, 3)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    trainer.model.train()
    turn = iter(range(1 << 30))

    def train_step(k: int) -> None:
        x, y = batches[next(turn) % len(batches)]
        _step(trainer, x[:k], y[:k])

    # Training gets most of the budget; evaluation (a forward only) the rest.
    has_eval = trainer.val_loader is not None or trainer.test_loader is not None
    steps = time_within(train_step, len(batches[0][1]), budget * (0.75 if has_eval else 1.0), device)
    # The loop makes each batch and then steps on it: an update costs both.
    step_seconds = steps["mean"] + load_seconds
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
        sample, eval_load_seconds = _batches(loader, 2)
        model.eval()

        def eval_batch(k: int) -> None:
            with torch.inference_mode(), runtime.autocast(device, trainer.precision):
                model(sample[0][0][:k])

        evals = time_within(eval_batch, len(sample[0][1]), max(1.0, budget - (clock() - started)), device, steps=3, smallest=1)
        eval_seconds = evals["mean"] + eval_load_seconds
    epoch_seconds = trainer.steps_per_epoch * step_seconds + val_batches * eval_seconds
    total = {
        "parameters": param_bytes, "gradients": grad_bytes, "optimizer_state": state_bytes,
        "activations": activation_bytes, "dataset": data_bytes,
    }
    report = {
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
        "timed_steps": steps["timed"],
        "timed_images_per_step": steps["images"],
        "seconds_per_step": step_seconds,
        "seconds_per_step_range": [steps["min"] + load_seconds, steps["max"] + load_seconds],
        "load_average": _load_average(),
        "timing_seconds": clock() - started,
        "seconds_per_val_batch": eval_seconds,
        "estimated_epoch_seconds": epoch_seconds,
        "setup_seconds": setup_seconds,
        "estimated_seconds": setup_seconds + epoch_seconds * cfg.epochs,
    }
    report["cheaper_runs"] = cheaper_runs(trainer, report)
    return report


def _load_average() -> float | None:
    """The 1-minute load average (None where unknown): the figure holds for this load."""
    import os

    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def multiply_adds(model, shape: tuple[int, ...]) -> int:
    """Multiply-adds of one input of `shape` (C, H, W) in eval mode, on the model's device (on
    the meta device no arithmetic is done): `models.counting.count_macs`, as featmaps counts."""
    from cnntools.models.counting import count_macs

    return count_macs(model.eval(), torch.zeros(1, *shape, device=runtime.module_device(model)))[""]


def _work(cfg, arch: str, channels: int, size: int, classes: int) -> int | None:
    """multiply_adds of `arch` built for `size`, or None where it cannot be built or traced."""
    from cnntools.models import create_model

    try:
        with torch.device("meta"):
            model = create_model(arch, channels, size, classes, batchnorm=cfg.batchnorm if arch == cfg.arch else False,
                                 arch_args=cfg.arch_args if arch == cfg.arch else None)
        return multiply_adds(model, (channels, size, size))
    except Exception:  # a user's model that reads values, an arch that refuses the size: no suggestion
        return None


SMALLER_ARCHS = ("resnet18-imagenet", "compact-cnn", "simple-cnn")
PHOTO_SIZE = 64  # resnet18-imagenet's stem (stride 4) pays from this input size on


def cheaper_runs(trainer, report: dict, limit: float = HOUR) -> list[dict]:
    """When the estimated run takes more than `limit` seconds: cheaper runs with their own
    estimates — a smaller --image-size, a smaller architecture (resnet18-imagenet for
    photo-sized inputs), fewer --epochs. Estimates scale the measured epoch by the ratio of
    multiply-adds (the cost of a step on a CPU or a busy GPU), so they carry the same load."""
    from cnntools.models import get_architecture

    if report["estimated_seconds"] <= limit:
        return []
    cfg, size, channels, classes = trainer.cfg, trainer.image_size, trainer.in_channels, len(trainer.classes)
    setup, epoch = report["setup_seconds"], report["estimated_epoch_seconds"]
    base = _work(cfg, cfg.arch, channels, size, classes)
    runs = []

    def add(change: str, work: int | None, epochs: int = cfg.epochs) -> None:
        if base and work and work < base:
            runs.append({"change": change, "estimated_seconds": setup + epochs * epoch * work / base})

    floor = max(16, get_architecture(cfg.arch).min_size)
    smaller = size // 2
    while smaller >= floor:  # the largest smaller size that fits the limit, else the smallest tried
        work = _work(cfg, cfg.arch, channels, smaller, classes)
        if work is None or base is None or smaller // 2 < floor or setup + cfg.epochs * epoch * work / base <= limit:
            add(f"--image-size {smaller}", work)
            break
        smaller //= 2
    for name in SMALLER_ARCHS:
        if name == cfg.arch or size < get_architecture(name).min_size or (name == "resnet18-imagenet" and size < PHOTO_SIZE):
            continue
        add(f"--arch {name}", _work(cfg, name, channels, size, classes))
    fitting = int((limit - setup) // epoch) if epoch > 0 else 0
    if 1 <= fitting < cfg.epochs:
        runs.append({"change": f"--epochs {fitting}", "estimated_seconds": setup + fitting * epoch})
    return runs


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
        ("time per step", _step_text(report)),
        ("evaluation per epoch", f"{report['seconds_per_val_batch'] * report['val_batches_per_epoch'] * 1000:.1f} ms "
                                 f"({report['val_batches_per_epoch']} batch{'es' if report['val_batches_per_epoch'] != 1 else ''}: "
                                 "validation, --val-every, --test-each-epoch)"),
        ("setup", f"{report['setup_seconds']:.1f} s (start-up, data and model)"),
        ("estimated epoch", _duration(report["estimated_epoch_seconds"])),
        ("estimated run", _duration(report["estimated_seconds"]) + " at the machine's current load"),
    ]
    rows += [("cheaper run", f"{run['change']}: {_duration(run['estimated_seconds'])}") for run in report["cheaper_runs"]]
    return [{"item": k, "value": v} for k, v in rows]


def _step_text(report: dict) -> str:
    """The measured step time, its range, what was timed and the load it holds for."""
    low, high = (v * 1000 for v in report["seconds_per_step_range"])
    timed = f"{report['timed_steps']} timed step{'s' if report['timed_steps'] != 1 else ''}"
    if report["timed_images_per_step"] < report["batch_size"]:
        timed += f" of {report['timed_images_per_step']} images, scaled to {report['batch_size']}"
    load = report["load_average"]
    holds = f"holds for the current load ({load:.1f} on {runtime.usable_cores()} cores)" if load is not None else "holds for the current load"
    return f"{report['seconds_per_step'] * 1000:.1f} ms, {low:.1f}-{high:.1f} ms (mean and range of {timed}; {holds})"


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
