"""The checkpoint's metadata as one typed record (`CheckpointMeta`), its JSON schema, and the
checks every value passes before anything is built from it.

In the file, safetensors' string-to-string metadata holds one JSON value per key:

    format            "cnntools-checkpoint"
    format_version    1
    arch              {"arch": "lenet", "in_channels": 3, "image_size": 32, "num_classes": 10, ...}
                      (the model registry's config: `create_model(**arch)` rebuilds the model)
    classes           ["airplane", ...]                   one name per output
    mean, std         per-channel normalisation, [0, 1] pixel scale
    image_size        input side in pixels; in_channels   (both equal arch's)
    data              {"spec": "digits", "data_dir": null, "val_split": 0.1, "seed": 0}
    train_config      the resolved training options, seed included
    metrics           final metrics (of the kept epoch)
    history           one record per epoch
    steps             step records: the training loss every --print-every updates, --val-every validations
    label             the run's name in figures and tables (train --label, or derived from its options)
    resume            (resumable files only) JSON part of the training state
    arch_args         (your own model, timm) constructor arguments given with --arch-args
    code              (your own model) {"reference", "kind", "name", "path", "path_given",
                      "module", "sha256", "args"}: where the code is, never the code itself

A checkpoint comes from anywhere, so every value is checked here for its type, its range
and its agreement with the others; the weights are then checked against the architecture
(`model_loading.check_weights`) before a model is built. A bad value ends in one line that
names the file, the key and what it must be.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields

from cnntools.core.errors import CnnError
from cnntools.output.emitter import to_jsonable

FORMAT = "cnntools-checkpoint"
FORMAT_VERSION = 1

# Bounds on what a checkpoint may ask for. Sizes this large are refused before any memory is
# sized from them (one image at MAX_IMAGE_SIZE is already 3 GiB as float32 RGB); whether a
# smaller size fits this machine is estimated from the architecture when the model is loaded.
MAX_IMAGE_SIZE = 16384
MAX_CHANNELS = 64
MAX_CLASSES = 100_000
MAX_CLASS_NAME = 1000
# mean/std are for pixels scaled to [0, 1]: a dataset's std is at least ~1e-7 (one pixel in
# 10^8 differing by one level) and never above 1; the bounds leave room for hand-made values
# while refusing numbers whose normalised inputs are no longer finite (std 1e-320, mean 1e308).
MEAN_RANGE = (-1000.0, 1000.0)
STD_RANGE = (1e-7, 1000.0)
MAX_SEED = 2**64 - 1  # torch.manual_seed's range


@dataclass(frozen=True)
class DataRecipe:
    """Where the model's data came from: the dataset spec, its folder, and how the validation
    split was drawn (so `eval` can rebuild exactly the split the run held out)."""

    spec: str | None = None
    data_dir: str | None = None
    val_split: float = 0.0
    seed: int = 0

    @classmethod
    def from_json(cls, value, name: str = "checkpoint") -> "DataRecipe":
        if not isinstance(value, dict):
            raise _malformed(name, "data", "an object with spec, data_dir, val_split and seed")
        for key in ("spec", "data_dir"):
            if value.get(key) is not None and not (isinstance(value[key], str) and len(value[key]) <= 4096):
                raise _malformed(name, f"data.{key}", "a string or null")
        val_split = value.get("val_split", 0.0)
        if val_split is None:
            val_split = 0.0
        if not (_is_number(val_split) and 0.0 <= val_split < 1.0):
            raise _malformed(name, "data.val_split", f"a number in [0, 1) (not {_shown(val_split)})")
        seed = value.get("seed", 0)
        if seed is None:
            seed = 0
        if not _is_int(seed, 0, MAX_SEED):
            raise _malformed(name, "data.seed", f"a whole number in [0, {MAX_SEED}] (not {_shown(seed)})")
        return cls(value.get("spec"), value.get("data_dir"), float(val_split), seed)

    def to_json(self) -> dict:
        return {"spec": self.spec, "data_dir": self.data_dir, "val_split": self.val_split, "seed": self.seed}


@dataclass
class CheckpointMeta:
    """Everything a checkpoint says about its weights (the module docstring lists the keys).

    `from_json` is the validator: a record that exists has passed every check. `extra` keeps
    keys this version does not know (a newer writer's), so reading and rewriting loses none.
    """

    arch: dict
    classes: list[str]
    mean: list[float]
    std: list[float]
    data: DataRecipe = field(default_factory=DataRecipe)
    train_config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    label: str | None = None
    resume: dict | None = None  # packed JSON part of the resume state (see file_format)
    arch_args: dict | None = None  # --arch-args of your own model or timm:NAME
    code: dict | None = None  # where your own model's code is (reference, sha256, ...), never the code
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def arch_name(self) -> str:
        return self.arch["arch"]

    @property
    def image_size(self) -> int:
        return self.arch["image_size"]

    @property
    def in_channels(self) -> int:
        return self.arch["in_channels"]

    @property
    def num_classes(self) -> int:
        return self.arch["num_classes"]

    # -- JSON ---------------------------------------------------------------------------

    def to_json(self) -> dict:
        """The metadata as one JSON document (key → value), as the file stores it."""
        doc = {
            "format": self.format,
            "format_version": self.format_version,
            "arch": dict(self.arch),
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
            "image_size": self.image_size,
            "in_channels": self.in_channels,
            "data": self.data.to_json(),
            "train_config": self.train_config,
            "metrics": self.metrics,
            "history": self.history,
            "steps": self.steps,
            **self.extra,
        }
        if self.label is not None:
            doc["label"] = self.label
        if self.resume is not None:
            doc["resume"] = self.resume
        if self.arch_args:
            doc["arch_args"] = self.arch_args
        if self.code is not None:
            doc["code"] = self.code
        return doc

    def to_header(self) -> dict[str, str]:
        """safetensors' string-to-string metadata: one JSON value per key."""
        return {key: json.dumps(to_jsonable(value), allow_nan=False) for key, value in self.to_json().items()}

    @classmethod
    def from_header(cls, raw: dict[str, str], name: str = "checkpoint") -> "CheckpointMeta":
        """The record from a file's raw metadata (JSON strings), every value validated."""
        if raw.get("format") != json.dumps(FORMAT):
            raise CnnError(
                f"{name}: a safetensors file but not a cnntools checkpoint (no cnntools metadata); "
                "cnntools needs the architecture and classes that cnntools train stores — for torchvision models use torchvision:NAME"
            )
        doc = {}
        for key, value in raw.items():
            try:
                doc[key] = json.loads(value)
            except (json.JSONDecodeError, RecursionError):
                raise CnnError(f"{name}: corrupt cnntools metadata entry '{key[:80]}'") from None
        return cls.from_json(doc, name)

    @classmethod
    def from_json(cls, doc: dict, name: str = "checkpoint") -> "CheckpointMeta":
        """Validate a decoded metadata document and return it as a record.

        Types and ranges first, then agreement: the top-level sizes with arch's, the class
        names with arch's class count, mean/std with the channel count.
        """
        version = doc.get("format_version", FORMAT_VERSION)
        if not _is_int(version, 1, 2**31):
            raise _malformed(name, "format_version", "a positive integer")
        if "arch" not in doc:
            raise CnnError(f"{name}: cnntools metadata names no architecture")
        arch = _arch(doc["arch"], name)
        for key in ("image_size", "in_channels"):
            if key in doc and doc[key] != arch[key]:
                if not _is_int(doc[key], 1, 2**31):
                    raise _malformed(name, key, "a positive integer")
                raise CnnError(
                    f"{name}: malformed cnntools metadata: '{key}' is {doc[key]} but the architecture "
                    f"{arch['arch']} is built for {arch[key]}; the file was altered or damaged"
                )
        classes = doc.get("classes")
        if classes is None:
            classes = [str(i) for i in range(arch["num_classes"])]
        if not (isinstance(classes, list) and all(isinstance(c, str) and len(c) <= MAX_CLASS_NAME for c in classes)):
            raise _malformed(name, "classes", f"a list of class names (strings of at most {MAX_CLASS_NAME} characters)")
        if len(classes) != arch["num_classes"]:
            raise CnnError(f"{name}: malformed cnntools metadata: {len(classes)} class names for {arch['num_classes']} classes")
        channels = arch["in_channels"]
        mean = _per_channel(doc, "mean", 0.0, MEAN_RANGE, channels, name)
        std = _per_channel(doc, "std", 1.0, STD_RANGE, channels, name)
        data = DataRecipe.from_json({} if doc.get("data") is None else doc["data"], name)
        for key in ("train_config", "metrics"):
            if not isinstance(doc.get(key, {}), dict):
                raise _malformed(name, key, "an object")
        history = doc.get("history", [])
        if not (isinstance(history, list) and all(isinstance(r, dict) for r in history)):
            raise _malformed(name, "history", "a list of objects")
        steps = doc.get("steps", [])
        if not (isinstance(steps, list) and all(isinstance(r, dict) and _is_int(r.get("updates"), 0, 2**62) for r in steps)):
            raise _malformed(name, "steps", "a list of objects with an integer 'updates'")
        label = doc.get("label")
        if label is not None and not isinstance(label, str):
            raise _malformed(name, "label", "a string")
        resume = doc.get("resume")
        if resume is not None and not isinstance(resume, dict):
            raise _malformed(name, "resume", "an object")
        arch_args = doc.get("arch_args")
        if arch_args is not None and not isinstance(arch_args, dict):
            raise _malformed(name, "arch_args", "an object (constructor arguments)")
        if arch["arch"].startswith(("timm:", "torchvision:")):
            from cnntools.models.arch_args import check_arch_args

            check_arch_args(arch_args, name)  # data only: no key of it may name a file to read
        code = doc.get("code")
        if code is not None and not (isinstance(code, dict) and isinstance(code.get("reference"), str)):
            raise _malformed(name, "code", "an object with the code reference")
        known = {f.name for f in fields(cls)} | {"image_size", "in_channels"}
        return cls(
            arch=arch, classes=list(classes), mean=mean, std=std, data=data,
            train_config=dict(doc.get("train_config") or {}), metrics=dict(doc.get("metrics") or {}),
            history=[dict(r) for r in history], steps=[dict(r) for r in steps], label=label, resume=resume,
            arch_args=dict(arch_args) if arch_args else None, code=dict(code) if code is not None else None, format=str(doc.get("format", FORMAT)),
            format_version=version, extra={k: v for k, v in doc.items() if k not in known},
        )


def validate_metadata(meta: dict, name: str = "checkpoint") -> None:
    """Check a decoded metadata document; one clear `CnnError` for the first bad value."""
    CheckpointMeta.from_json(meta, name)


# ---------------------------------------------------------------------------- checks


def _arch(value, name: str) -> dict:
    what = "an object with arch (name), in_channels, image_size and num_classes"
    if not (isinstance(value, dict) and isinstance(value.get("arch"), str) and value["arch"]):
        raise _malformed(name, "arch", what)
    bounds = {"in_channels": MAX_CHANNELS, "image_size": MAX_IMAGE_SIZE, "num_classes": MAX_CLASSES}
    for key, high in bounds.items():
        if key not in value:
            raise _malformed(name, "arch", what)
        if not _is_int(value[key], 1, high):
            raise _malformed(name, f"arch.{key}", f"a whole number in [1, {high}] (not {_shown(value[key])})")
    for key, option in value.items():
        if not (isinstance(option, (str, bool, int)) or option is None or _is_number(option)):
            raise _malformed(name, f"arch.{key}", "a string, number, boolean or null")
    return dict(value)


def _per_channel(doc: dict, key: str, default: float, bounds: tuple[float, float], channels: int, name: str) -> list[float]:
    if key not in doc:
        return [default] * channels
    value = doc[key]
    low, high = bounds
    if not (isinstance(value, list) and all(_is_number(x) for x in value)):
        what = "a list of positive numbers" if key == "std" else "a list of numbers"
        raise _malformed(name, key, what)
    bad = [x for x in value if not low <= x <= high]
    if bad:
        raise _malformed(name, key, f"a list of numbers in [{low:g}, {high:g}] (not {_shown(bad[0])})")
    if len(value) != channels:
        raise CnnError(f"{name}: malformed cnntools metadata: '{key}' has {len(value)} values for {channels} channels")
    return [float(x) for x in value]


def _is_int(value, low: int = 0, high: int = 2**31) -> bool:
    return type(value) is int and low <= value <= high


def _is_number(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _shown(value) -> str:
    return json.dumps(value)[:40] if not isinstance(value, float) else f"{value:g}"


def _malformed(name: str, key: str, what: str) -> CnnError:
    return CnnError(f"{name}: malformed cnntools metadata: '{key}' must be {what}")
