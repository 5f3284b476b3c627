"""The training and evaluation loops, metrics, and batched prediction.

One `Trainer` runs a training job end to end: data → model → optimiser/schedule → epochs of
batches of device tensors (from `cnntools.data.BatchLoader`) → per-epoch records →
checkpoint after every epoch. The same loop runs under DistributedDataParallel
(`cnntools.distributed` sets up the process group): with `rank`/`world_size` each rank
takes its shard of every epoch's permutation and `cfg.batch_size / world_size` images per
step, so one step of all ranks is one step of the global batch; the model is wrapped in DDP
(`wrap_model`), metric sums are reduced across ranks (`reduce_sum`), the ranks agree on a
non-finite loss and on Ctrl-C at the same batch, and only the main rank (`is_main`) writes.

Exact resume: the checkpoint written after every epoch (and on Ctrl-C, at a batch
boundary) stores the optimiser, schedule, gradient scaler and RNG states and the position
(epoch, batch). Every epoch's batch order and augmentation come from the loader's per-epoch
seed, so a resumed run replays the rest of the epoch exactly as the uninterrupted run would.
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnntools import runtime
from cnntools.checkpoint import clean_state_dict, save_checkpoint, unwrap_model
from cnntools.output import CnnError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "step", "cosine", "onecycle")
DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3, "adamw": 1e-3}


@dataclass
class TrainConfig:
    """Every training option, resolved; stored in the checkpoint as `train_config`."""

    arch: str = "simple-cnn"
    arch_args: dict = field(default_factory=dict)  # constructor arguments of your own model or timm:NAME
    batchnorm: bool = False
    output_activation: str = "none"
    pretrained: bool = False
    data: str = "digits"
    data_dir: str | None = None
    val_split: float = 0.1
    download: bool = False
    image_size: int | None = None  # None: the data's own size where the architecture accepts it
    channels: int | None = None  # None: the data's own channel count
    epochs: int = 20
    batch_size: int = 32  # the global batch (split across ranks under DDP)
    opt: str = "adam"
    lr: float | None = None  # None: 0.01 for sgd, 1e-3 for adam/adamw
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    schedule: str = "none"
    warmup: float = 0.0  # epochs of linear warm-up (fractions allowed)
    step_size: int = 0  # epochs between StepLR decays (0: a third of the epochs)
    gamma: float = 0.1
    augment: str = "auto"  # auto: see resolve_augment
    normalize: str = "dataset"
    class_weights: str = "none"
    label_smoothing: float = 0.0
    keep: str = "best"
    early_stop: int = 0
    print_every: int = 0
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    deterministic: bool = False  # torch.use_deterministic_algorithms and cuDNN's deterministic mode

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.opt]

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


# Datasets of handwritten digits: small shifts and rotations are what their writers vary;
# flips are not (a mirrored 2 is no 2).
DIGIT_DATASETS = ("digits", "mnist")


def resolve_augment(spec: str, data: str) -> str:
    """`auto` → `rotate:10,crop:1` for digit datasets, none elsewhere; other values as given."""
    if (spec or "").strip().lower() != "auto":
        return spec
    base = data.split(":", 1)[0].strip().lower()
    return "rotate:10,crop:1" if base in DIGIT_DATASETS else "none"


def validate_config(cfg: TrainConfig) -> None:
    """One clear error for an impossible combination of options."""
    if cfg.opt not in OPTIMIZERS:
        raise CnnError(f"unknown optimizer '{cfg.opt}': use sgd, adam or adamw")
    if cfg.schedule not in SCHEDULES:
        raise CnnError(f"unknown schedule '{cfg.schedule}': use none, step, cosine or onecycle")
    if cfg.epochs < 1:
        raise CnnError("--epochs must be at least 1")
    if cfg.batch_size < 1:
        raise CnnError("--batch-size must be at least 1")
    if cfg.resolved_lr() <= 0:
        raise CnnError("--lr must be positive")
    if cfg.keep not in ("best", "last"):
        raise CnnError("--keep takes best or last")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise CnnError("--label-smoothing must be in [0, 1)")
    if cfg.warmup < 0 or cfg.early_stop < 0 or cfg.print_every < 0:
        raise CnnError("--warmup, --early-stop and --print-every cannot be negative")
    if cfg.nesterov and (cfg.opt != "sgd" or cfg.momentum <= 0):
        raise CnnError("--nesterov needs --opt sgd and a positive --momentum")


# ---------------------------------------------------------------------------- distributed


def check_global_batch(batch_size: int, world_size: int) -> None:
    """--batch-size is the global batch: each of `world_size` processes takes an equal share."""
    if batch_size % world_size:
        raise CnnError(f"--batch-size {batch_size} is the global batch; it must divide evenly among {world_size} processes")


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over all ranks when torch.distributed is running; the tensor itself otherwise."""
    import torch.distributed as dist

    if _distributed():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(model) -> None:
    """Give every rank the main rank's buffers (BatchNorm running statistics).

    Under DDP each rank updates its buffers from its own shard of the batch; the checkpoint
    holds rank 0's, so validation on every rank must use those too."""
    import torch.distributed as dist

    if _distributed():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def wrap_model(model, device, world_size: int):
    """The model as trained: wrapped in DistributedDataParallel when there are several ranks."""
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


# ---------------------------------------------------------------------------- pieces


def wants_channels_last(device, precision: str, arch: str) -> bool:
    """channels_last pays on CUDA and with bf16 on CPUs that run it natively; not for the MLP."""
    if arch == "mlp":
        return False
    return device.type == "cuda" or (device.type == "cpu" and precision == "bf16")


def class_weight_tensor(spec: str, train_set, device) -> torch.Tensor | None:
    """Cross-entropy class weights: none, auto (n_samples / (n_classes × count), sklearn's
    "balanced") or an explicit comma-separated list."""
    spec = (spec or "none").strip().lower()
    k = len(train_set.classes)
    if spec == "none":
        return None
    if spec == "auto":
        counts = torch.bincount(train_set.labels, minlength=k).double()
        weights = len(train_set) / (k * counts.clamp(min=1))
        return weights.float().to(device)
    try:
        values = [float(v) for v in spec.split(",")]
    except ValueError:
        raise CnnError(f"--class-weights '{spec}': use auto, none or {k} comma-separated numbers") from None
    if len(values) != k:
        raise CnnError(f"--class-weights has {len(values)} numbers but the data has {k} classes")
    if any(v < 0 for v in values) or sum(values) <= 0:
        raise CnnError("--class-weights must be non-negative and not all zero")
    return torch.tensor(values, dtype=torch.float32, device=device)


def build_optimizer(model, cfg: TrainConfig):
    lr = cfg.resolved_lr()
    params = model.parameters()
    if cfg.opt == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    if cfg.opt == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


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


def rng_state() -> dict:
    state = {
        "python": list(random.getstate()),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _numpy_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"], np_state["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- evaluation


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


def predict(
    lm_or_model,
    imageset,
    batch_size: int = 256,
    device=None,
    precision: str = "fp32",
    mean=None,
    std=None,
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits float32 CPU N×K, labels CPU N) of a model over an ImageSet, batched, under
    `torch.inference_mode()`.

    `lm_or_model` is a `LoadedModel` (its own preprocessing is applied) or an `nn.Module`
    (images scaled to [0, 1] and normalised with `mean`/`std` when given).
    `progress(n)` is called after each batch with the number of images done.
    """
    from cnntools.checkpoint import LoadedModel
    from cnntools.data.loader import fold_normalization, normalize_uint8

    if isinstance(lm_or_model, LoadedModel):
        model = lm_or_model.model
        prepare = lm_or_model.prepare
        device = device or lm_or_model.device
    else:
        model = lm_or_model
        device = device or next(model.parameters()).device
        scale, shift = fold_normalization(mean if mean is not None else [0.0] * imageset.channels,
                                          std if std is not None else [1.0] * imageset.channels, device)

        def prepare(images, channels_last=False):
            return normalize_uint8(images.to(device), scale, shift, channels_last)

    model.eval()
    # The layout the precision runs fastest in (bf16 on CPU without it: about half the speed).
    channels_last = wants_channels_last(device, precision, getattr(lm_or_model, "arch", ""))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(imageset), batch_size):
            x = prepare(imageset.images[start : start + batch_size], channels_last)
            with runtime.autocast(device, precision):
                logits = model(x)
            outputs.append(logits.float().cpu())
            if progress is not None:
                progress(min(len(imageset), start + batch_size))
    k = outputs[0].shape[1] if outputs else 0
    logits = torch.cat(outputs) if outputs else torch.empty(0, k)
    return logits, imageset.labels.clone()


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, classes: list[str], top_k: tuple[int, ...] = (5,)) -> dict:
    """Accuracy, cross-entropy loss, top-k accuracy, per-class accuracy and
    precision/recall/F1 (scikit-learn's definitions, zero where undefined), and statistics
    of the raw outputs.

    Per class c: precision = TP/(TP+FP), recall = TP/(TP+FN) (= the class's accuracy),
    F1 = 2PR/(P+R); macro = unweighted mean over classes, weighted = mean weighted by support.
    """
    logits = logits.float()
    labels = labels.long()
    n, k = logits.shape
    pred = logits.argmax(1)
    num_classes = max(k, len(classes))
    cm = torch.bincount(labels * num_classes + pred, minlength=num_classes * num_classes).view(num_classes, num_classes).double()
    tp = cm.diag()
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-300), torch.zeros_like(tp))
    weights = support / max(1.0, float(support.sum()))
    # sklearn averages over the labels present in y_true or y_pred.
    present = (support > 0) | (predicted > 0)
    m = max(1, int(present.sum()))
    result = {
        "count": n,
        "accuracy": float((pred == labels).double().mean()) if n else 0.0,
        "loss": float(F.cross_entropy(logits, labels)) if n else 0.0,
        "top_k": {},
        "precision_macro": float(precision[present].sum() / m),
        "recall_macro": float(recall[present].sum() / m),
        "f1_macro": float(f1[present].sum() / m),
        "precision_weighted": float((precision * weights).sum()),
        "recall_weighted": float((recall * weights).sum()),
        "f1_weighted": float((f1 * weights).sum()),
        "per_class": [
            {
                "class": classes[c] if c < len(classes) else str(c),
                "support": int(support[c]),
                "accuracy": float(recall[c]),
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
            }
            for c in range(len(classes))
        ],
        "logits": logit_stats(logits),
    }
    for kk in top_k:
        if 1 <= kk <= k:
            hits = (logits.topk(kk, dim=1).indices == labels[:, None]).any(1)
            result["top_k"][str(kk)] = float(hits.double().mean()) if n else 0.0
    return result


def logit_stats(logits: torch.Tensor) -> dict:
    """min, max, mean, std and share of negative values of the raw outputs."""
    flat = logits.float().flatten()
    if flat.numel() == 0:
        return {"min": None, "max": None, "mean": None, "std": None, "share_negative": None}
    return {
        "min": float(flat.min()),
        "max": float(flat.max()),
        "mean": float(flat.mean()),
        "std": float(flat.std()) if flat.numel() > 1 else 0.0,
        "share_negative": float((flat < 0).double().mean()),
    }


# ---------------------------------------------------------------------------- training


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during training, after a resumable checkpoint was written.

    `exit_code` is 128 + the signal number: 130 for SIGINT, 143 for SIGTERM.
    """

    exit_code = 128 + signal.SIGINT


class NonFiniteLoss(CnnError):
    """The loss became NaN or infinite."""


@dataclass
class Position:
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches completed in the current epoch
    updates: int = 0  # weight updates so far
    best_metric: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    partial: dict = field(default_factory=dict)  # running sums of an epoch cut short


def load_training_data(cfg: TrainConfig):
    """(train, val or None, native size) as ImageSets at the model's input size."""
    from cnntools.data import available_splits, load_splits, open_source
    from cnntools.models import input_size_for

    source = open_source(cfg.data, cfg.data_dir, cfg.download, cfg.image_size)
    have = available_splits(source, cfg.val_split)
    if "train" not in have:
        raise CnnError(f"{cfg.data} has no train split (it has: {', '.join(have)})")
    wanted = ["train"] + (["val"] if "val" in have else [])
    splits = load_splits(cfg.data, wanted, cfg.data_dir, cfg.download, cfg.val_split, cfg.seed, cfg.image_size,
                         source=source)
    train_set = splits["train"]
    if len(train_set) == 0:
        raise CnnError(f"{cfg.data}: the train split is empty")
    h, w = train_set.image_size
    size = cfg.image_size or input_size_for(cfg.arch, min(h, w))
    channels = cfg.channels or train_set.channels
    train_set = train_set.resized(size, channels)
    val_set = splits.get("val")
    if val_set is not None:
        val_set = val_set.resized(size, channels) if len(val_set) else None
    return train_set, val_set, size


class Trainer:
    """One training run. Construct, optionally `restore(...)`, then `run()`.

    Callbacks: `on_epoch(record)` after each epoch (record = the history row),
    `on_batch(epoch, batch, loss)` after each weight update (loss: a float, or None where
    the loss is only checked every few batches), `on_print(text)` for `--print-every`
    lines. `request_stop()` (Ctrl-C does it) ends the run at the next batch boundary with a
    resumable checkpoint and `TrainingInterrupted`.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        train_set,
        val_set=None,
        output: str | None = "model.safetensors",
        rank: int = 0,
        world_size: int = 1,
        device=None,
        code=None,
    ):
        from cnntools.data import BatchLoader, normalization, parse_augment
        from cnntools.models import arch_config, check_outputs, create_model, get_architecture, user_code

        validate_config(cfg)
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        self.output = output
        self.device = device if device is not None else runtime.resolve_device(cfg.device)
        self.precision = runtime.resolve_precision(cfg.precision, self.device)
        self.channels_last = wants_channels_last(self.device, self.precision, cfg.arch)
        self.train_set, self.val_set = train_set, val_set
        self.image_size = int(train_set.image_size[0])
        self.in_channels = train_set.channels
        self.classes = list(train_set.classes)
        check_global_batch(cfg.batch_size, world_size)
        per_rank = cfg.batch_size // world_size

        runtime.seed_everything(cfg.seed)
        self.arch_config = arch_config(
            cfg.arch, self.in_channels, self.image_size, len(self.classes),
            batchnorm=cfg.batchnorm, output_activation=cfg.output_activation,
        )
        # The user's code: resolved and hashed once (or, resuming, the checkpoint's checked record).
        self.code = code if code is not None or not user_code.is_code_reference(cfg.arch) else user_code.resolve(cfg.arch)
        model = create_model(
            cfg.arch, self.in_channels, self.image_size, len(self.classes),
            batchnorm=cfg.batchnorm, output_activation=cfg.output_activation, pretrained=cfg.pretrained,
            arch_args=cfg.arch_args, code=self.code,
        ).to(self.device)
        if get_architecture(cfg.arch).builder is None:  # code cnntools did not write: check it fits the data
            check_outputs(model, cfg.arch, self.in_channels, self.image_size, len(self.classes))
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = wrap_model(model, self.device, world_size)

        self.mean, self.std = normalization(cfg.normalize, train_set)
        self.augment = parse_augment(resolve_augment(cfg.augment, cfg.data))
        self.train_loader = BatchLoader(
            train_set, batch_size=per_rank, shuffle=True, seed=cfg.seed, device=self.device,
            augment=self.augment, mean=self.mean, std=self.std, drop_last=False, rank=rank, world_size=world_size,
            channels_last=self.channels_last,
        )
        self.val_loader = None
        if val_set is not None and len(val_set):
            self.val_loader = BatchLoader(
                val_set, batch_size=max(per_rank, 256), shuffle=False, seed=cfg.seed, device=self.device,
                augment=None, mean=self.mean, std=self.std, drop_last=False, rank=rank, world_size=world_size, pad=False,
                channels_last=self.channels_last,
            )
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise CnnError("the train split has no batches")
        weights = class_weight_tensor(cfg.class_weights, train_set, self.device)
        self.criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
        self.eval_criterion = nn.CrossEntropyLoss()
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.position = Position()
        self.history: list[dict] = []
        self.best_state: dict | None = None
        self._stop = threading.Event()
        self._stop_signal = signal.SIGINT  # which signal asked to stop (request_stop: as Ctrl-C)
        self.on_epoch: Callable[[dict], None] | None = None
        self.on_batch: Callable[[int, int, float | None], None] | None = None
        self.on_print: Callable[[str], None] | None = None
        self.progress = None  # object with start(epoch, total), advance(n, loss), stop()
        self._decorrelate_ranks()

    # -- state --------------------------------------------------------------------------

    @property
    def data_spec(self) -> dict:
        return {"spec": self.cfg.data, "data_dir": self.cfg.data_dir, "val_split": self.cfg.val_split, "seed": self.cfg.seed}

    def metadata(self) -> dict:
        """The checkpoint metadata of the current state of the run."""
        pos = self.position
        kept = self._kept_record()
        return {
            "arch": self.arch_config,
            "classes": self.classes,
            "mean": list(self.mean),
            "std": list(self.std),
            "image_size": self.image_size,
            "in_channels": self.in_channels,
            "data": self.data_spec,
            "train_config": {**asdict(self.cfg), "lr": self.cfg.resolved_lr(), "precision_used": self.precision,
                             "world_size": self.world_size},
            "metrics": {**(kept or {}), "updates": pos.updates, "epochs_completed": pos.epoch,
                        "kept": self.cfg.keep if self.val_loader is not None else "last"},
            "history": self.history,
            **({"arch_args": self.cfg.arch_args} if self.cfg.arch_args else {}),
            **({"code": self.code[0].record(self.cfg.arch_args)} if self.code else {}),
        }

    def _kept_record(self) -> dict | None:
        if not self.history:
            return None
        if self.cfg.keep == "best" and self.val_loader is not None and self.position.best_epoch:
            return dict(self.history[self.position.best_epoch - 1])
        return dict(self.history[-1])

    def resume_state(self) -> dict:
        pos = self.position
        state = {
            "epoch": pos.epoch,
            "batch": pos.batch,
            "updates": pos.updates,
            "best_metric": pos.best_metric,
            "best_epoch": pos.best_epoch,
            "bad_epochs": pos.bad_epochs,
            "partial": pos.partial,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": rng_state(),
        }
        if self._weights_differ_from_kept():
            state["model"] = clean_state_dict(unwrap_model(self.model).state_dict())
        return state

    def _weights_differ_from_kept(self) -> bool:
        pos = self.position
        return self.cfg.keep == "best" and self.best_state is not None and (pos.best_epoch != pos.epoch or pos.batch > 0)

    def restore(self, resume: dict, history: list[dict], weights: dict) -> None:
        """Continue from a checkpoint's resume state (see `checkpoint.resume_state`)."""
        model = unwrap_model(self.model)
        best_epoch = int(resume.get("best_epoch") or 0)
        # --keep best: the file's main weights are the best epoch's; training continues from
        # the last weights, stored under _resume/model/ when they differ.
        model.load_state_dict(resume["model"] if "model" in resume else weights)
        if self.cfg.keep == "best" and best_epoch:
            self.best_state = clean_state_dict(weights)
        self.optimizer.load_state_dict(resume["optimizer"])
        try:
            self.scheduler.load_state_dict(resume["scheduler"])
        except (KeyError, ValueError, TypeError):
            pass
        if resume.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(resume["scaler"])
        self.position = Position(
            epoch=int(resume["epoch"]),
            batch=int(resume["batch"]),
            updates=int(resume["updates"]),
            best_metric=resume.get("best_metric"),
            best_epoch=best_epoch,
            bad_epochs=int(resume.get("bad_epochs") or 0),
            partial=dict(resume.get("partial") or {}),
        )
        self.history = [dict(r) for r in history][: self.position.epoch]
        set_rng_state(resume["rng"])
        self._decorrelate_ranks()

    def _decorrelate_ranks(self) -> None:
        # Every rank starts from the same seed (and a resumed run from rank 0's RNG state);
        # dropout masks must still differ between ranks (timm seeds each rank apart too).
        # Rank 0 keeps the stream a single process would have.
        if self.rank:
            torch.manual_seed((self.cfg.seed * 1_000_003 + self.position.updates) * 4099 + self.rank)

    def save(self, resumable: bool = True, final: bool = False) -> None:
        """Write the checkpoint (main rank only): kept weights + metadata + resume state.

        A file is rewritten after every epoch; stdout (`-`) gets one checkpoint, at the end.
        """
        if not self.is_main or not self.output or (self.output == "-" and not final):
            return
        model = unwrap_model(self.model)
        if self.best_state is not None and self.cfg.keep == "best":
            holder = _StateHolder(self.best_state)
        else:
            holder = model
        save_checkpoint(self.output, holder, self.metadata(), self.resume_state() if resumable else None)

    def request_stop(self) -> None:
        self._stop.set()

    # -- loop ---------------------------------------------------------------------------

    def run(self) -> list[dict]:
        """Train until the configured epoch count (or early stop); returns the history."""
        previous = _install_stop_signals(self)
        try:
            with runtime.deterministic_algorithms(self.cfg.deterministic):
                while self.position.epoch < self.cfg.epochs:
                    record = self._train_epoch()
                    if record is None:  # early stop
                        break
            if self.output == "-":
                self.save(final=True)
            return self.history
        finally:
            _restore_signals(previous)

    def _train_epoch(self) -> dict | None:
        cfg, pos = self.cfg, self.position
        epoch = pos.epoch + 1
        model = self.model
        model.train()
        self.train_loader.set_epoch(epoch)
        device = self.device
        part = pos.partial or {}
        totals = torch.tensor(
            [part.get("loss_sum", 0.0), part.get("correct", 0.0), part.get("count", 0.0)], dtype=torch.float64, device=device
        )
        seconds_before = float(part.get("seconds", 0.0))
        skip = pos.batch
        check_every = 1 if device.type == "cpu" else 20
        pending: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []  # batch, loss, gradient sum
        window = torch.zeros(2, dtype=torch.float64, device=device)  # --print-every loss sum, batches
        start = time.perf_counter()
        if self.progress is not None:
            self.progress.start(epoch, self.steps_per_epoch, skip)
        images_seen = 0
        lr_used = self.optimizer.param_groups[0]["lr"]
        stop = False
        for batch_index, (x, y) in enumerate(self.train_loader, start=1):
            if batch_index <= skip:
                continue  # replaying an interrupted epoch: these updates are in the weights already
            # x comes from the loader in the model's memory format
            with runtime.autocast(device, self.precision):
                logits = model(x)
                loss = self.criterion(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            # Checked with the loss below. Under fp16 the scaler skips steps with inf gradients
            # itself, so there is nothing to check.
            grad_sum = None if self.scaler.is_enabled() else _gradient_sum(model)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            lr_used = self.optimizer.param_groups[0]["lr"]  # the epoch record reports the lr it trained with
            self.scheduler.step()
            pos.updates += 1
            pos.batch = batch_index
            detached = loss.detach()
            n = y.numel()
            images_seen += n
            totals[0] += detached.double() * n
            totals[1] += (logits.detach().argmax(1) == y).sum()
            totals[2] += n
            window[0] += detached.double()
            window[1] += 1
            pending.append((batch_index, detached, grad_sum))
            loss_value, stop = None, False
            if len(pending) >= check_every or batch_index == self.steps_per_epoch:
                loss_value, stop = self._sync(epoch, pending)
                pending = []
            if self.progress is not None:
                self.progress.advance(1, loss_value)
            if cfg.print_every and batch_index % cfg.print_every == 0:
                w = reduce_sum(window).cpu()  # every rank takes part in the sum; rank 0 prints it
                if self.on_print is not None and self.is_main:
                    self.on_print(f"[epoch {epoch}, batch {batch_index:5d}] loss {float(w[0]) / max(1.0, float(w[1])):.3f}")
                window.zero_()
            if self.on_batch is not None:
                self.on_batch(epoch, batch_index, loss_value)
            if self.world_size == 1:
                stop = self._stop.is_set()  # one process stops at the next batch boundary
            if stop and batch_index < self.steps_per_epoch:
                self._check_finite(epoch, pending)
                pos.partial = {
                    "loss_sum": float(totals[0]), "correct": float(totals[1]), "count": float(totals[2]),
                    "seconds": seconds_before + time.perf_counter() - start,
                }
                self._interrupt(epoch, batch_index)
        if self.progress is not None:
            self.progress.stop()
        seconds = seconds_before + time.perf_counter() - start
        totals = reduce_sum(totals).cpu()
        count = max(1.0, float(totals[2]))
        record = {
            "epoch": epoch,
            "train_loss": float(totals[0]) / count,
            "train_acc": float(totals[1]) / count,
            "val_loss": None,
            "val_acc": None,
            "lr": lr_used,
            "seconds": round(seconds, 3),
            "images_per_s": round(images_seen * self.world_size / max(1e-9, time.perf_counter() - start), 1),
            "updates": pos.updates,
        }
        if self.world_size > 1:
            broadcast_buffers(unwrap_model(model))  # validate and save the buffers rank 0 writes
        if self.val_loader is not None:
            # The plain module: evaluation needs no gradient exchange, and the shards differ in length.
            metrics = evaluate(unwrap_model(model), self.val_loader, self.eval_criterion, device, self.precision)
            record["val_loss"], record["val_acc"] = metrics["loss"], metrics["acc"]
        pos.epoch, pos.batch, pos.partial = epoch, 0, {}
        self.history.append(record)
        stop_early = self._track_best(record)
        self.save()
        if self.on_epoch is not None:
            self.on_epoch(record)
        if (stop if self.world_size > 1 else self._stop.is_set()) and pos.epoch < cfg.epochs:
            self._interrupt(epoch, 0)
        return None if stop_early else record

    def _track_best(self, record: dict) -> bool:
        """Keep the best weights by validation accuracy; True when early stopping triggers."""
        pos = self.position
        if self.val_loader is None:
            return False
        metric = record["val_acc"]
        if pos.best_metric is None or metric > pos.best_metric:
            pos.best_metric, pos.best_epoch, pos.bad_epochs = metric, record["epoch"], 0
            if self.cfg.keep == "best":
                self.best_state = clean_state_dict(unwrap_model(self.model).state_dict())
            return False
        pos.bad_epochs += 1
        return bool(self.cfg.early_stop) and pos.bad_epochs >= self.cfg.early_stop

    def _sync(self, epoch: int, pending: list) -> tuple[float | None, bool]:
        """(last loss, stop?) at a check point. Under DDP the ranks sum their losses and stop
        flags here, so they all see the same non-finite loss, and a Ctrl-C that reached one
        of them, at the same batch."""
        if self.world_size == 1:
            return self._check_finite(epoch, pending), self._stop.is_set()
        # Gradients are already all-reduced by DDP, so every rank holds the same gradient sums.
        flag = torch.tensor([1.0 if self._stop.is_set() else 0.0], device=self.device)
        summed = reduce_sum(torch.cat([torch.stack([v for _, v, _ in pending]).float(), flag]))
        losses = [(index, value, g) for (index, _, g), value in zip(pending, summed[:-1] / self.world_size)]
        return self._check_finite(epoch, losses), bool(summed[-1] > 0)

    def _check_finite(self, epoch: int, pending: list) -> float | None:
        """Stop at the first batch whose loss or gradients are NaN/inf (checks the pending batches)."""
        if not pending:
            return None
        if len(pending) == 1:  # every batch on CPU: one read, no stacking
            _, loss, grad_sum = pending[0]
            value = float(loss)
            if math.isfinite(value) and (grad_sum is None or math.isfinite(float(grad_sum))):
                return value
        zero = torch.zeros((), device=self.device)
        values = torch.stack([torch.stack([v.float(), zero if g is None else g.float()]) for _, v, g in pending]).cpu()
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            first, column = (int(i) for i in (~finite).nonzero()[0])
            batch = pending[first][0]
            what = "loss" if column == 0 else "a gradient"
            kept = self.output if self.history and self.output else None
            where = (f"{kept} keeps the weights of epoch {self.position.best_epoch or self.position.epoch}"
                     if kept else "no checkpoint was written")
            raise NonFiniteLoss(
                f"{what} became {float(values[first, column])} at epoch {epoch}, batch {batch} "
                f"(lr {self.optimizer.param_groups[0]['lr']:.3g}); training stopped and {where}. "
                "Lower --lr, add --warmup, or check the data's normalisation"
            )
        return float(values[-1, 0])

    def _interrupt(self, epoch: int, batch: int) -> None:
        if self.progress is not None:
            self.progress.stop()
        self.save(final=True)
        where = f"epoch {epoch}, batch {batch}" if batch else f"the end of epoch {epoch}"
        target = self.output if self.output and self.is_main else None
        note = f"; resumable checkpoint written to {target} (continue with --resume {target})" if target else ""
        stop = TrainingInterrupted(f"{'terminated' if self._stop_signal == signal.SIGTERM else 'interrupted'} at {where}{note}")
        stop.exit_code = 128 + int(self._stop_signal)
        raise stop


class _StateHolder:
    """Looks enough like a module for `save_checkpoint` (a stored state dict)."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self):
        return self._state


def _gradient_sum(model) -> torch.Tensor | None:
    """The sum of every gradient entry: NaN or inf exactly when some entry is (a finite sum
    overflows only past 3e38). 40x cheaper on CPU than the max-abs norm."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return None
    return torch.stack([g.sum(dtype=torch.float32) for g in grads]).sum()


def _install_stop_signals(trainer: "Trainer") -> dict:
    """First Ctrl-C or SIGTERM: finish the batch, save, stop. A second: stop at once."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        if trainer._stop.is_set():
            raise TrainingInterrupted(f"stopped at once by a second signal {signal.Signals(signum).name}")
        trainer._stop_signal = signum
        trainer._stop.set()

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, handler)
        except (ValueError, OSError):
            pass
    return previous


def _restore_signals(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
