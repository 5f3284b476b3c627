"""The training loop (`Trainer`), its validation pass, and loading a run's data.

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
import signal
import threading
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from cnntools import runtime
from cnntools.checkpoint import clean_state_dict, save_checkpoint, unwrap_model
from cnntools.collectives import broadcast_buffers, check_global_batch, reduce_sum, wrap_model
from cnntools.data.augment import resolve_augment
from cnntools.data.imageset import CHUNK_BYTES, chunk_rows
from cnntools.inference import wants_channels_last
from cnntools.output import CnnError
from cnntools.training.config import DEFAULT_LR, TrainConfig, validate_config
from cnntools.training.meters import EpochMeters
from cnntools.training.control import NonFiniteLoss, TrainingInterrupted, gradient_sum, install_stop_signals, restore_signals
from cnntools.training.optimization import build_optimizer, build_scheduler, class_weight_tensor
from cnntools.training.rng_state import rng_state, set_rng_state


@dataclass
class Position:
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches completed in the current epoch
    updates: int = 0  # weight updates so far
    best_metric: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    partial: dict = field(default_factory=dict)  # running sums of an epoch cut short


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


def load_training_data(cfg: TrainConfig):
    """(train, val or None, native size) as ImageSets at the model's input size."""
    from cnntools.data import available_splits, load_splits, open_source
    from cnntools.models import input_size_for

    source = open_source(cfg.data, cfg.data_dir, cfg.download, cfg.image_size)
    if getattr(source, "decodes_files", False) and cfg.image_size is None:
        # Decode the files straight to the model's size (once), as `eval --image` will decode one file.
        h, w = source.decode_size()
        size = input_size_for(cfg.arch, min(h, w))
        if (h, w) != (size, size):
            source = source.at_size(size)
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


def load_test_split(cfg: TrainConfig, like):
    """The test split for `--test-each-epoch`, at the size and channels of the train set `like`."""
    from cnntools.data import load_split

    try:
        test_set = load_split(cfg.data, "test", cfg.data_dir, cfg.download, 0.0, cfg.seed, cfg.image_size)
    except CnnError as error:
        raise CnnError(f"--test-each-epoch: {error}") from None
    if len(test_set) == 0:
        raise CnnError(f"--test-each-epoch: the test split of {cfg.data} is empty")
    if list(test_set.classes) != list(like.classes):
        raise CnnError(f"--test-each-epoch: the test split of {cfg.data} names other classes than its train split")
    return test_set.resized(int(like.image_size[0]), like.channels)


class Trainer:
    """One training run. Construct, optionally `restore(...)`, then `run()`.

    Callbacks: `on_epoch(record)` after each epoch (record = the history row),
    `on_step(record)` after each step record (`kind` step: the mean training loss of the last
    `print_every` updates; `kind` val: a `val_every` validation; both kept in `steps`),
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
        test_set=None,
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
        # Evaluation batches: 256 small images, fewer large ones (inputs bounded in bytes, so the
        # activations of a validation pass do not grow with the split up to 256 photos).
        eval_batch = max(per_rank, min(256, chunk_rows(4 * math.prod(train_set.images.shape[1:]), CHUNK_BYTES // 2)))

        def eval_loader(split_set):
            """In-order, unaugmented batches of a validation or test split (None when it is empty)."""
            if split_set is None or not len(split_set):
                return None
            return BatchLoader(
                split_set, batch_size=eval_batch, shuffle=False, seed=cfg.seed, device=self.device,
                augment=None, mean=self.mean, std=self.std, drop_last=False, rank=rank, world_size=world_size, pad=False,
                channels_last=self.channels_last,
            )

        self.val_loader = eval_loader(val_set)
        self.test_loader = eval_loader(test_set)
        if cfg.val_every and self.val_loader is None:
            raise CnnError("--val-every needs a validation split: pass --val-split F (e.g. 0.1)")
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
        self.steps: list[dict] = []  # step records (kind step / val), see on_step
        self.best_state: dict | None = None
        self._stop = threading.Event()
        self._stop_signal = signal.SIGINT  # which signal asked to stop (request_stop: as Ctrl-C)
        self.on_epoch: Callable[[dict], None] | None = None
        self.on_batch: Callable[[int, int, float | None], None] | None = None
        self.on_print: Callable[[str], None] | None = None
        self.on_step: Callable[[dict], None] | None = None
        self.progress = None  # a progress.TrainProgress: start(epoch, total, done), advance(images, running), stop()
        self._decorrelate_ranks()

    # -- state --------------------------------------------------------------------------

    def metadata(self):
        """The checkpoint metadata of the current state of the run."""
        from cnntools.checkpoint import CheckpointMeta, DataRecipe
        from cnntools.runs import derive_label

        pos = self.position
        kept = self._kept_record()
        return CheckpointMeta(
            arch=self.arch_config,
            classes=self.classes,
            mean=list(self.mean),
            std=list(self.std),
            data=DataRecipe(self.cfg.data, self.cfg.data_dir, self.cfg.val_split, self.cfg.seed),
            train_config={**asdict(self.cfg), "lr": self.cfg.resolved_lr(), "precision_used": self.precision,
                          "world_size": self.world_size},
            metrics={**(kept or {}), "updates": pos.updates, "epochs_completed": pos.epoch,
                     "kept": self.cfg.keep if self.val_loader is not None else "last"},
            history=self.history,
            steps=self.steps,
            label=self.cfg.label or derive_label(self._label_options()),
            arch_args=self.cfg.arch_args or None,
            code=self.code[0].record(self.cfg.arch_args) if self.code else None,
        )

    def _label_options(self) -> dict:
        """The options a derived label reads, with values that equal what the defaults resolve
        to put back as defaults: a run replayed from --print-config's TOML or from a
        checkpoint (where lr and augment are written out) keeps the original run's label."""
        options = asdict(self.cfg)
        if self.cfg.resolved_lr() == DEFAULT_LR.get(self.cfg.opt):
            options["lr"] = None
        if self.cfg.augment == resolve_augment("auto", self.cfg.data):
            options["augment"] = "auto"
        return options

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

    def restore(self, resume: dict, history: list[dict], weights: dict, steps: list[dict] | None = None) -> None:
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
        self.steps = [dict(r) for r in steps or [] if int(r.get("updates", 0)) <= self.position.updates]
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
        previous = install_stop_signals(self)
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
            restore_signals(previous)

    def _train_epoch(self) -> dict | None:
        """One epoch (or the rest of an interrupted one): its batches, then the record,
        validation and checkpoint. None when early stopping ends the run."""
        pos = self.position
        epoch = pos.epoch + 1
        self.model.train()
        self.train_loader.set_epoch(epoch)
        meters = EpochMeters(self.device, pos.partial)
        skip = pos.batch
        check_every = 1 if self.device.type == "cpu" else 20  # reading the loss waits for the device
        pending: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []  # batch, loss, gradient sum
        if self.progress is not None:
            self.progress.start(epoch, self.steps_per_epoch, skip)
        lr_used = self.optimizer.param_groups[0]["lr"]
        stop = False
        for batch_index, (x, y) in enumerate(self.train_loader, start=1):
            if batch_index <= skip:
                continue  # replaying an interrupted epoch: these updates are in the weights already
            lr_used = self.optimizer.param_groups[0]["lr"]  # the epoch record reports the lr it trained with
            loss, logits, grad_sum = self._step(x, y)
            pos.batch = batch_index
            meters.add(loss, logits, y)
            pending.append((batch_index, loss, grad_sum))
            loss_value = None
            if len(pending) >= check_every or batch_index == self.steps_per_epoch:
                loss_value, stop = self._sync(epoch, pending)
                pending = []
            if self.progress is not None:  # running numbers only where the loss was read: no extra sync
                self.progress.advance(y.numel(), meters.running(lr_used) if loss_value is not None else None)
            self._measure_during_epoch(epoch, batch_index, meters, lr_used)
            if self.on_batch is not None:
                self.on_batch(epoch, batch_index, loss_value)
            if self.world_size == 1:
                stop = self._stop.is_set()  # one process stops at the next batch boundary
            if stop and batch_index < self.steps_per_epoch:
                self._check_finite(epoch, pending)
                pos.partial = meters.partial()
                self._interrupt(epoch, batch_index)
        if self.progress is not None:
            self.progress.stop()
        totals = meters.epoch_totals(self.world_size)
        record = {"epoch": epoch, "train_loss": totals["train_loss"], "train_acc": totals["train_acc"], "val_loss": None,
                  "val_acc": None, "lr": lr_used, "seconds": totals["seconds"], "images_per_s": totals["images_per_s"],
                  "updates": pos.updates}
        self._evaluate_epoch(record)
        pos.epoch, pos.batch, pos.partial = epoch, 0, {}
        self.history.append(record)
        stop_early = self._track_best(record)
        self.save()
        if self.on_epoch is not None:
            self.on_epoch(record)
        if (stop if self.world_size > 1 else self._stop.is_set()) and pos.epoch < self.cfg.epochs:
            self._interrupt(epoch, 0)
        return None if stop_early else record

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One weight update: (detached loss, detached logits, gradient sum or None under fp16)."""
        with runtime.autocast(self.device, self.precision):
            logits = self.model(x)  # x comes from the loader in the model's memory format
            loss = self.criterion(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        # Checked with the loss at the next check point. Under fp16 the scaler skips steps with
        # inf gradients itself, so there is nothing to check.
        grad_sum = None if self.scaler.is_enabled() else gradient_sum(self.model)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.position.updates += 1
        return loss.detach(), logits.detach(), grad_sum

    def _measure_during_epoch(self, epoch: int, batch_index: int, meters: EpochMeters, lr: float) -> None:
        """--print-every's step record and --val-every's validation, where they fall."""
        cfg, pos = self.cfg, self.position
        if cfg.print_every and batch_index % cfg.print_every == 0:
            window = meters.take_window()  # every rank takes part in the sum; rank 0 prints it
            # One record for the stored steps, --print-every and TensorBoard's step scalars.
            self._add_step({"kind": "step", "epoch": epoch, "batch": batch_index, "updates": pos.updates,
                            "train_loss": window["train_loss"], "train_acc": window["train_acc"], "lr": lr,
                            "images_per_s": window["images_per_s"]})
            if self.on_print is not None and self.is_main:
                self.on_print(f"[epoch {epoch}, batch {batch_index:5d}] loss {window['train_loss']:.3f}")
        if cfg.val_every and pos.updates % cfg.val_every == 0:
            metrics = evaluate(unwrap_model(self.model), self.val_loader, self.eval_criterion, self.device, self.precision)
            self.model.train()
            self._add_step({"kind": "val", "epoch": epoch, "batch": batch_index, "updates": pos.updates,
                            "val_loss": metrics["loss"], "val_acc": metrics["acc"]})

    def _evaluate_epoch(self, record: dict) -> None:
        """Validation (and --test-each-epoch's test split) into the epoch's record."""
        model = unwrap_model(self.model)  # evaluation needs no gradient exchange, and the shards differ in length
        if self.world_size > 1:
            broadcast_buffers(model)  # validate and save the buffers rank 0 writes
        if self.val_loader is not None:
            metrics = evaluate(model, self.val_loader, self.eval_criterion, self.device, self.precision)
            record["val_loss"], record["val_acc"] = metrics["loss"], metrics["acc"]
        if self.test_loader is not None:
            # Measured, never used to choose: model selection stays on validation.
            metrics = evaluate(model, self.test_loader, self.eval_criterion, self.device, self.precision)
            record["test_loss"], record["test_acc"] = metrics["loss"], metrics["acc"]

    def _add_step(self, record: dict) -> None:
        self.steps.append(record)
        if self.on_step is not None and self.is_main:
            self.on_step(record)

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
