"""Runs as things to compare: their labels, and their training histories read back.

A run's label is what a person calls it when comparing it with its siblings: `lenet
relu-out`, `lenet bn+aug=flip,crop:4`, `simple-cnn lr=0.01`. `train --label` sets it; otherwise it is
derived from the architecture and the options that differ from their defaults, so the
runs of a sweep get different names without anyone typing them. It is stored in the
checkpoint and shown in figure titles, legends, multi-model tables and the predictions CSV.

A history is a list of records: one per epoch (`epoch`, `train_loss`, `val_acc`, ...)
and, when the run recorded them, step records marked `kind: step` (the mean training loss
over the last `--print-every` updates) and `kind: val` (a `--val-every` validation). They
come from a checkpoint's metadata or from `train --history` CSV/JSONL files. Torch-free.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field

from cnntools.core.errors import CnnError

# Options that name a run, in the order they appear in a derived label, with how each reads.
# (option, default, text for a non-default value); a text of None means `name=value`.
_LABEL_PARTS = (
    ("pretrained", False, "pretrained"),
    ("batchnorm", False, "bn"),
    ("output_activation", "none", None),
    ("opt", "adam", None),
    ("lr", None, None),
    ("momentum", 0.9, None),
    ("weight_decay", 0.0, None),
    ("schedule", "none", None),
    ("batch_size", 32, None),
    ("label_smoothing", 0.0, None),
    ("class_weights", "none", None),
    ("normalize", "dataset", None),
)
_SHORT = {"weight_decay": "wd", "batch_size": "bs", "label_smoothing": "ls", "class_weights": "cw",
          "normalize": "norm", "momentum": "mom"}


def derive_label(config: dict) -> str:
    """A short name for a run from its training options: the architecture, then what differs
    from the defaults (`lenet relu-out`, `lenet bn+aug=flip,crop:4`, `lenet sgd+lr=0.1`)."""
    parts = []
    for name, default, text in _LABEL_PARTS:
        value = config.get(name, default)
        if value is None or value == default:
            continue
        if name == "output_activation":
            parts.append(f"{value}-out")
        elif name in ("opt", "schedule"):
            parts.append(str(value))
        elif text is not None:
            parts.append(text)
        else:
            parts.append(f"{_SHORT.get(name, name)}={_number(value)}")
    augment = str(config.get("augment", "auto")).strip().lower()
    if augment not in ("auto", ""):  # named: two differently augmented runs get two labels
        parts.insert(min(len(parts), 2), "no-aug" if augment == "none" else f"aug={augment}")
    arch = str(config.get("arch") or "model")
    return f"{arch} {'+'.join(parts)}" if parts else arch


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def model_label(meta: dict, source: str = "") -> str:
    """The label a model is shown under: the stored label, else one derived from its training
    options (checkpoints written before labels existed), else its architecture or source."""
    label = meta.get("label")
    if isinstance(label, str) and label.strip():
        return label.strip()
    config = meta.get("train_config")
    if isinstance(config, dict) and config.get("arch"):
        return derive_label(config)
    arch = (meta.get("arch") or {}).get("arch") if isinstance(meta.get("arch"), dict) else None
    return str(arch or source or "model")


def distinct_labels(labels: list[str], sources: list[str]) -> list[str]:
    """Labels made unique for one figure or table: a repeated label gets its source's name added."""
    from collections import Counter

    counts = Counter(labels)
    return [f"{label} ({source})" if counts[label] > 1 else label for label, source in zip(labels, sources)]


LABEL_WIDTH = 32  # longest label a legend or a table column shows whole


@dataclass(frozen=True)
class ShownLabels:
    """How runs shown together are named: `labels` without what they all share, `shared` says
    what that was once (for a title: "lenet, bs=64, no-aug"; "" when nothing was dropped)."""

    labels: list[str]
    shared: str = ""

    def note(self, prefix: str = "all runs: ") -> str:
        return f"{prefix}{self.shared}" if self.shared else ""


def shown_labels(labels: list[str], sources: list[str] | None = None, width: int = LABEL_WIDTH) -> ShownLabels:
    """Labels of several runs for one figure or table: the parts every label has (`lenet`,
    `bs=64` in `lenet relu-out+bs=64`, `lenet tanh-out+bs=64`) are dropped and named once in
    `shared`; what is left is capped at `width` characters (the middle elided) and made
    unique with the source's name. The architecture stays when a label would be left empty
    (`lenet` beside `lenet relu-out`)."""
    sources = list(sources) if sources is not None else [""] * len(labels)
    shown, shared = list(labels), []
    if len(labels) > 1:
        split = [_label_parts(label) for label in labels]
        common = [p for p in split[0][1] if all(p in parts for _, parts in split[1:])]
        rest = [[p for p in parts if p not in common] for _, parts in split]
        heads = {head for head, _ in split}
        drop_head = len(heads) == 1 and all(rest)
        shorter = [("+".join(parts) if drop_head else " ".join(filter(None, [head, "+".join(parts)])))
                   for (head, _), parts in zip(split, rest)]
        if len(set(shorter)) == len(set(labels)):  # dropping must not merge two runs
            shown = shorter
            shared = ([split[0][0]] if drop_head else []) + common
    capped = [_cap(label, width) for label in shown]
    if len(set(capped)) == len(set(shown)):
        shown = capped
    return ShownLabels(distinct_labels(shown, sources), ", ".join(shared))


def _label_parts(label: str) -> tuple[str, list[str]]:
    """`lenet relu-out+bs=64` → ("lenet", ["relu-out", "bs=64"]); free text splits the same way."""
    head, _, tail = label.strip().partition(" ")
    return head, [p for p in tail.split("+") if p]


def _cap(label: str, width: int) -> str:
    if len(label) <= width:
        return label
    tail = max(6, width // 3)
    return label[: width - tail - 1] + "…" + label[-tail:]


# ---------------------------------------------------------------------------- histories


@dataclass
class Run:
    """One run's records as `curves` compares them."""

    label: str
    source: str
    epochs: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)  # kind step (train loss) and kind val
    best_epoch: int | None = None
    steps_per_epoch: float | None = None
    data: str | None = None  # the dataset spec, where the source says


def split_records(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(epoch records, step records) of a mixed history."""
    epochs = [r for r in records if r.get("kind") in (None, "epoch")]
    steps = [r for r in records if r.get("kind") in ("step", "val")]
    return epochs, steps


def best_epoch(epochs: list[dict], meta: dict | None = None) -> int | None:
    """The epoch whose weights the run kept: from the checkpoint when it says, else the best
    validation accuracy (first of equals, as `train --keep best` keeps it)."""
    metrics = (meta or {}).get("metrics") or {}
    if metrics.get("kept") == "last":
        return epochs[-1]["epoch"] if epochs else None
    if metrics.get("kept") == "best" and metrics.get("epoch") is not None:
        return int(metrics["epoch"])
    scored = [(r.get("val_acc"), r["epoch"]) for r in epochs if isinstance(r.get("val_acc"), (int, float))]
    if not scored:
        return None
    top = max(v for v, _ in scored)
    return next(e for v, e in scored if v == top)


def run_from_checkpoint_meta(meta: dict, source: str) -> Run:
    """A Run from a checkpoint's metadata (its history and step records)."""
    epochs = [dict(r) for r in meta.get("history") or [] if isinstance(r, dict)]
    steps = [dict(r) for r in meta.get("steps") or [] if isinstance(r, dict)]
    if not epochs:
        raise CnnError(f"{source}: the checkpoint holds no training history (was it written by cnntools train?)")
    return Run(label=model_label(meta, source), source=source, epochs=epochs, steps=steps,
               best_epoch=best_epoch(epochs, meta), steps_per_epoch=_steps_per_epoch(epochs),
               data=(meta.get("data") or {}).get("spec") if isinstance(meta.get("data"), dict) else None)


def run_from_history_text(text: str, source: str, label: str | None = None) -> Run:
    """A Run from the text of a `train --history` file: JSON lines or CSV (sniffed)."""
    stripped = text.lstrip()
    if not stripped:
        raise CnnError(f"{source}: empty history file")
    records = _jsonl(stripped, source) if stripped.startswith("{") else _csv(text, source)
    epochs, steps = split_records(records)
    if not epochs:
        raise CnnError(f"{source}: no per-epoch records (a history from cnntools train --history has an 'epoch' column)")
    for r in epochs:
        if not isinstance(r.get("epoch"), int):
            raise CnnError(f"{source}: every record needs an integer 'epoch'")
    name = label or _meta_label(records) or _stem(source)
    return Run(label=name, source=source, epochs=epochs, steps=steps, best_epoch=best_epoch(epochs),
               steps_per_epoch=_steps_per_epoch(epochs))


def _meta_label(records: list[dict]) -> str | None:
    labels = {r.get("label") for r in records if isinstance(r.get("label"), str)}
    return labels.pop() if len(labels) == 1 else None


def _stem(source: str) -> str:
    from pathlib import PurePath

    return "stdin" if source in ("-", "stdin") else PurePath(source).stem


def _steps_per_epoch(epochs: list[dict]) -> float | None:
    with_updates = [r for r in epochs if isinstance(r.get("updates"), (int, float))]
    if not with_updates:
        return None
    last = with_updates[-1]
    return float(last["updates"]) / max(1, int(last["epoch"]))


def _jsonl(text: str, source: str) -> list[dict]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CnnError(f"{source}: line {number} is not JSON ({error.msg})") from None
        except RecursionError:
            raise CnnError(f"{source}: line {number} is nested too deeply to be a history record") from None
        if not isinstance(record, dict):
            raise CnnError(f"{source}: line {number} is not a JSON object")
        records.append(record)
    return records


def _csv(text: str, source: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text, newline=""))  # quoted cells may hold line breaks
    try:
        if not reader.fieldnames or "epoch" not in reader.fieldnames:
            raise CnnError(f"{source}: not a history CSV (it needs an 'epoch' column, as cnntools train --history writes)")
        return [{k: _cell(v) for k, v in row.items() if k is not None} for row in reader]
    except csv.Error as error:
        raise CnnError(f"{source}: not a readable CSV ({error})") from None


def _cell(text):
    if text is None or text == "":
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    if number.is_integer() and "." not in text and "e" not in text.lower():
        return int(number)
    return number if math.isfinite(number) else None


def merged_rows(runs: list[Run], include_steps: bool = False) -> list[dict]:
    """Every run's records as one table: a `run` column first, `kind` telling epoch rows from
    step rows, and `best` marking the kept epoch."""
    rows = []
    for run in runs:
        for r in run.epochs:
            rows.append({"run": run.label, "kind": "epoch", **{k: v for k, v in r.items() if k != "kind"},
                         "best": r.get("epoch") == run.best_epoch})
        if include_steps:
            for r in run.steps:
                rows.append({"run": run.label, **r})
    return rows
