"""Every training option as one record (`TrainConfig`), with the checks that refuse an
impossible combination before any work starts. Stored in the checkpoint as `train_config`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from cnntools.core.errors import CnnError, UsageError

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
    label: str | None = None  # None: derived from the options (cnntools.checkpoint.runs.derive_label)
    val_every: int = 0  # also validate every N weight updates (0: once per epoch only)
    test_each_epoch: bool = False  # also measure the test split after every epoch (never used to select)

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.opt]

    @classmethod
    def from_dict(cls, values: dict, name: str = "checkpoint") -> "TrainConfig":
        """The options stored in a checkpoint's `train_config`, each of its declared type
        (a stored value of another type is one error naming the file and the option)."""
        kinds = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,), "dict": (dict,)}
        config = {}
        for f in fields(cls):
            if f.name not in values:
                continue
            value = values[f.name]
            allowed = tuple(t for part in str(f.type).split(" | ") for t in kinds.get(part, ()))
            optional = "None" in str(f.type)
            ok = (value is None and optional) or (isinstance(value, allowed) and (bool not in allowed) == (type(value) is not bool))
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                raise CnnError(f"{name}: malformed cnntools metadata: train_config.{f.name} must be {str(f.type).replace(' | None', ' or null')}")
            config[f.name] = value
        return cls(**config)


def train_options(params: dict) -> dict:
    """The TrainConfig fields among a command's option values (Click's `ctx.params`, by
    parameter name): `train` and `lr-find` declare the training options once in their
    signatures (`cli.options`), and this picks them up by name instead of a keyword per field.
    --arch-args arrives as text and is parsed."""
    values = {f.name: params[f.name] for f in fields(TrainConfig) if f.name in params}
    if "arch_args" in values and not isinstance(values["arch_args"], dict):
        from cnntools.models.user_code import parse_arch_args

        values["arch_args"] = parse_arch_args(values["arch_args"])
    return values


def validate_config(cfg: TrainConfig) -> None:
    """One clear error for an impossible combination of options."""
    if cfg.opt not in OPTIMIZERS:
        raise CnnError(f"unknown optimizer '{cfg.opt}': use sgd, adam or adamw")
    if cfg.schedule not in SCHEDULES:
        raise CnnError(f"unknown schedule '{cfg.schedule}': use none, step, cosine or onecycle")
    if cfg.epochs < 1:
        raise UsageError("--epochs must be at least 1")
    if cfg.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if cfg.resolved_lr() <= 0:
        raise UsageError("--lr must be positive")
    if cfg.keep not in ("best", "last"):
        raise UsageError("--keep takes best or last")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise UsageError("--label-smoothing must be in [0, 1)")
    if cfg.warmup < 0 or cfg.early_stop < 0 or cfg.print_every < 0 or cfg.val_every < 0:
        raise UsageError("--warmup, --early-stop, --print-every and --val-every cannot be negative")
    if cfg.nesterov and (cfg.opt != "sgd" or cfg.momentum <= 0):
        raise UsageError("--nesterov needs --opt sgd and a positive --momentum")
