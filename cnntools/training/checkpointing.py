"""What a training run writes to its checkpoint and reads back to resume.

`Checkpointing` is the part of `loop.Trainer` that turns the run's state into a checkpoint:
the metadata record, the kept weights (`--keep best`: the best epoch's), and the resume state
(position, optimiser, schedule, gradient scaler, RNG states, the last weights when they
differ from the kept ones); `restore` puts a resumed run back where the file left it.
It reads the attributes `Trainer.__init__` sets (cfg, model, optimizer, scheduler, scaler,
position, history, steps, best_state, ...).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from cnntools.checkpoint import clean_state_dict, save_checkpoint, unwrap_model
from cnntools.training.config import DEFAULT_LR
from cnntools.training.rng_state import decorrelate_ranks, rng_state, set_rng_state


@dataclass
class Position:
    """Where a run stands: what a resumed run continues from (stored in the resume state)."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches completed in the current epoch
    updates: int = 0  # weight updates so far
    best_metric: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    partial: dict = field(default_factory=dict)  # running sums of an epoch cut short


class Checkpointing:
    """Checkpoint writing and resuming, mixed into `Trainer`."""

    def metadata(self):
        """The checkpoint metadata of the current state of the run."""
        from cnntools.checkpoint import CheckpointMeta, DataRecipe
        from cnntools.checkpoint.runs import derive_label

        pos = self.position
        kept = self.kept_record()
        return CheckpointMeta(
            arch=self.arch_config,
            classes=self.classes,
            mean=list(self.mean),
            std=list(self.std),
            data=DataRecipe(self.cfg.data, self.cfg.data_dir, self.cfg.val_split, self.cfg.seed),
            train_config={**asdict(self.cfg), "lr": self.cfg.resolved_lr(), "augment_resolved": self.augment_spec,
                          "precision_used": self.precision, "world_size": self.world_size},
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
        checkpoint (where lr and augment are written out) keeps the original run's label.
        Another augmentation is named by what it resolved to."""
        options = asdict(self.cfg)
        if self.cfg.resolved_lr() == DEFAULT_LR.get(self.cfg.opt):
            options["lr"] = None
        options["augment"] = "auto" if self.augment_spec == self.augment_default else self.augment_spec
        return options

    def kept_record(self) -> dict | None:
        """The epoch record whose weights the checkpoint keeps (--keep best: the best epoch's)."""
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
        decorrelate_ranks(self.cfg.seed, self.position.updates, self.rank)

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


class _StateHolder:
    """Looks enough like a module for `save_checkpoint` (a stored state dict)."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self):
        return self._state
