"""The training loop (`Trainer`): construction, epochs, steps and when a run stops.

One `Trainer` runs a training job end to end: data → model → optimiser/schedule → epochs of
batches of device tensors (from `cnntools.data.BatchLoader`) → per-epoch records →
checkpoint after every epoch. The same loop runs under DistributedDataParallel
(`cnntools.training.distributed` sets up the process group): with `rank`/`world_size` each rank
takes its shard of every epoch's permutation and `cfg.batch_size / world_size` images per
step, so one step of all ranks is one step of the global batch; the model is wrapped in DDP
(`wrap_model`), metric sums are reduced across ranks (`reduce_sum`), the ranks agree on a
non-finite loss and on Ctrl-C at the same batch, and only the main rank (`is_main`) writes.

Exact resume: the checkpoint written after every epoch (and on Ctrl-C, at a batch
boundary) stores the optimiser, schedule, gradient scaler and RNG states and the position
(epoch, batch). Every epoch's batch order and augmentation come from the loader's per-epoch
seed, so a resumed run replays the rest of the epoch exactly as the uninterrupted run would.
What the checkpoint holds and how a run resumes is in `checkpointing`; a run's splits come
from `data`, its validation pass from `evaluation`.
"""

from __future__ import annotations

import math
import signal
import threading
from typing import Callable

import torch
import torch.nn as nn

from cnntools.inference import memory
from cnntools.core import runtime
from cnntools.checkpoint import clean_state_dict, unwrap_model
from cnntools.training.collectives import broadcast_buffers, check_global_batch, reduce_sum, wrap_model
from cnntools.data.augment import augment_for, resolve_augment
from cnntools.data.imageset import CHUNK_BYTES, chunk_rows
from cnntools.inference.batches import wants_channels_last
from cnntools.core.errors import CnnError, UsageError
from cnntools.training.bf16_guard import guard_small_convs
from cnntools.training.checkpointing import Checkpointing, Position
from cnntools.training.config import TrainConfig, validate_config
from cnntools.training.control import NonFiniteLoss, TrainingInterrupted, gradient_sum, install_stop_signals, restore_signals
from cnntools.training.evaluation import evaluate
from cnntools.training.meters import EpochMeters
from cnntools.training.optimization import build_optimizer, build_scheduler, class_weight_tensor, optimizer_states
from cnntools.training.rng_state import decorrelate_ranks


class Trainer(Checkpointing):
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
        self.train_set, self.val_set = train_set, val_set
        self.image_size = int(train_set.image_size[0])
        self.channels_last = wants_channels_last(self.device, self.precision, cfg.arch, training=True)
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
        build = dict(batchnorm=cfg.batchnorm, output_activation=cfg.output_activation, arch_args=cfg.arch_args, code=self.code)
        if not cfg.pretrained:  # a layer sized by the image (LeNet's fc at --image-size 4096) is refused before it exists
            with torch.device("meta"):
                memory.check_weights(create_model(cfg.arch, self.in_channels, self.image_size, len(self.classes), **build), cfg.arch)
        model = create_model(cfg.arch, self.in_channels, self.image_size, len(self.classes), pretrained=cfg.pretrained,
                             **build).to(self.device)
        shape = (self.in_channels, self.image_size, self.image_size)
        memory.check_training(model, shape, per_rank, self.device, f"{cfg.arch} at {self.image_size}×{self.image_size}",
                              optimizer_states(cfg))
        if get_architecture(cfg.arch).builder is None:  # code cnntools did not write: check it fits the data
            check_outputs(model, cfg.arch, self.in_channels, self.image_size, len(self.classes))
        guard_small_convs(model, shape, self.device, self.precision)  # NaN gradients of oneDNN's bf16 kernels
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = wrap_model(model, self.device, world_size)

        self.mean, self.std = normalization(cfg.normalize, train_set)
        # The same resolver as dataset-stats --augment-preview, on this data set's images; the
        # checkpoint records what it resolved to (train_config.augment_resolved).
        self.augment_spec, warning = augment_for(cfg.augment, cfg.data, train_set)
        self.augment_default = resolve_augment("auto", cfg.data, self.in_channels, max(train_set.images.shape[-2:]))
        if warning and self.is_main:
            from cnntools.output import emitter

            emitter.warn(warning)
        self.augment = parse_augment(self.augment_spec)
        self.train_loader = BatchLoader(
            train_set, batch_size=per_rank, shuffle=True, seed=cfg.seed, device=self.device,
            augment=self.augment, mean=self.mean, std=self.std, drop_last=False, rank=rank, world_size=world_size,
            channels_last=self.channels_last,
        )
        # Evaluation batches: 256 small images, fewer large ones (inputs bounded in bytes, so the
        # activations of a validation pass do not grow with the split up to 256 photos).
        eval_batch = max(per_rank, min(256, chunk_rows(4 * math.prod(train_set.images.shape[1:]), CHUNK_BYTES // 2)))
        if val_set is not None or test_set is not None:
            eval_batch = memory.fit_batch(model, shape, eval_batch, self.device, "validation")

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
            raise UsageError("--val-every needs a validation split: pass --val-split F (e.g. 0.1)")
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
        decorrelate_ranks(cfg.seed, self.position.updates, rank)

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

