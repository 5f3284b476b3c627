"""What a checkpoint holds, from its safetensors header alone (no torch).

`summarize` turns a validated header into the record `cnntools info` prints: the
architecture, classes, normalisation, data recipe, training options, a summary of the
history, the parameter count and what the file's bytes hold.
"""

from __future__ import annotations

from typing import Any

from cnntools.checkpoint.file_format import RESUME_PREFIX

# State-dict entries that are buffers, not parameters (BatchNorm's running statistics).
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def _count(shape: list[int]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def tensor_bytes(header: dict) -> dict[str, int]:
    """Bytes and element counts of the header's tensors, split into weights and resume state."""
    out = {"weights": 0, "resume": 0, "parameters": 0, "buffers": 0, "tensors": 0}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        size = entry["data_offsets"][1] - entry["data_offsets"][0]
        if key.startswith(RESUME_PREFIX):
            out["resume"] += size
            continue
        out["weights"] += size
        out["tensors"] += 1
        kind = "buffers" if key.rsplit(".", 1)[-1] in _BUFFER_SUFFIXES else "parameters"
        out[kind] += _count(entry["shape"])
    return out


def best_epoch(history: list[dict]) -> int | None:
    """The epoch with the highest validation accuracy (train's rule for --keep best), or None."""
    scored = [r for r in history if isinstance(r.get("val_acc"), (int, float))]
    if not scored:
        return None
    best = scored[0]
    for record in scored[1:]:
        if record["val_acc"] > best["val_acc"]:  # the first of equals, as train keeps it
            best = record
    return best.get("epoch")


def summarize(header: dict, meta: dict, file: str, file_bytes: int | None, header_bytes: int) -> dict[str, Any]:
    """The `info` record of one checkpoint (see docs/schemas/info.md for its fields)."""
    arch = dict(meta.get("arch") or {})
    name = arch.pop("arch", None)
    history = list(meta.get("history") or [])
    train_config = meta.get("train_config") or {}
    metrics = dict(meta.get("metrics") or {})
    counts = tensor_bytes(header)
    dtypes = sorted({e["dtype"] for k, e in header.items() if k != "__metadata__" and not k.startswith(RESUME_PREFIX)})
    written = meta.get("written_by") if isinstance(meta.get("written_by"), dict) else {}
    return {
        "file": file,
        "format_version": meta.get("format_version"),
        "arch": name,
        "arch_config": arch,
        "label": meta.get("label", train_config.get("label")),
        "num_classes": len(meta.get("classes") or []) or arch.get("num_classes"),
        "classes": list(meta.get("classes") or []),
        "image_size": meta.get("image_size", arch.get("image_size")),
        "in_channels": meta.get("in_channels", arch.get("in_channels")),
        "normalization": {"mean": meta.get("mean"), "std": meta.get("std")},
        "data": meta.get("data") or {},
        "train_config": train_config,
        "history": {
            "epochs": len(history),
            "best_epoch": best_epoch(history),
            "kept_epoch": metrics.get("epoch"),
            "kept": metrics.get("kept"),
            "updates": metrics.get("updates"),
            "final": history[-1] if history else {},
        },
        "metrics": metrics,
        "parameters": counts["parameters"],
        "buffers": counts["buffers"],
        "dtypes": dtypes,
        "bytes": {
            "file": file_bytes,
            "header": header_bytes,
            "metadata": sum(len(k) + len(v) for k, v in (header.get("__metadata__") or {}).items()),
            "weights": counts["weights"],
            "resume": counts["resume"],
        },
        "resumable": "resume" in meta,
        "written_by": {"cnntools": written.get("cnntools"), "torch": written.get("torch")},
    }



# The kept epoch's numbers the card shows, in this order, when the history has them.
_CARD_METRICS = ("val_acc", "val_loss", "test_acc", "test_loss", "train_acc", "train_loss")


def card(record: dict[str, Any]) -> dict[str, Any]:
    """The short `info` card of one `summarize` record: field → text, for people.

    The kept epoch's losses and accuracies (the checkpoint's `metrics`) are labelled as the kept
    epoch's; the run's totals (epochs completed, updates, the best epoch), which `metrics` also
    carries, are labelled as the run's.
    """
    arch_config = record.get("arch_config") or {}
    metrics = record.get("metrics") or {}
    history = record.get("history") or {}
    kept = history.get("kept_epoch")
    out: dict[str, Any] = {
        "arch": record.get("arch"),
        "label": record.get("label"),
        "input": _input_shape(record),
        "parameters": _thousands(record.get("parameters")),
        "classes": _classes(record.get("classes") or [], record.get("num_classes")),
        "data": _data(record.get("data") or {}),
        "training": _training(record.get("train_config") or {}),
    }
    options = {k: v for k, v in arch_config.items() if k not in ("in_channels", "image_size", "num_classes") and v not in (None, False, "none")}
    if options:
        out["arch options"] = ", ".join(f"{k} {v}" for k, v in options.items())
    out["kept epoch"] = None  # a weights-only file has no run to sum up: its rows stay empty
    if kept is not None:
        rule = {"best": "highest val_acc", "last": "the last"}.get(str(history.get("kept")), str(history.get("kept")))
        out["kept epoch"] = f"{kept} of {metrics.get('epochs_completed', history.get('epochs'))} (--keep {history.get('kept')}: {rule})"
        for name in _CARD_METRICS:
            if isinstance(metrics.get(name), (int, float)):
                out[f"kept epoch: {name}"] = metrics[name]
    out["run: epochs completed"] = metrics.get("epochs_completed", history.get("epochs"))
    out["run: updates"] = history.get("updates")
    out["run: best epoch"] = history.get("best_epoch")
    size = record.get("bytes") or {}
    parts = [f"weights {_size(size.get('weights'))}"] + ([f"resume state {_size(size['resume'])}"] if size.get("resume") else [])
    out["bytes"] = f"{_size(size.get('file'))} ({', '.join(parts)})"
    written = record.get("written_by") or {}
    out["written by"] = ", ".join(f"{k} {v}" for k, v in written.items() if v) or None
    return out


def _thousands(value) -> str | None:
    return f"{value:,}" if isinstance(value, int) else None


def _size(value) -> str:
    if not isinstance(value, int):
        return "?"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value} B"


def _input_shape(record: dict) -> str | None:
    channels, size = record.get("in_channels"), record.get("image_size")
    return f"{channels}×{size}×{size}" if channels and size else None


def _classes(classes: list, count) -> str:
    shown = " ".join(str(c) for c in classes[:12]) + (" ..." if len(classes) > 12 else "")
    return f"{count or len(classes)}: {shown}" if classes else str(count)


def _data(data: dict) -> str | None:
    if not data:
        return None
    parts = [str(data.get("spec"))]
    if data.get("data_dir"):
        parts.append(f"in {data['data_dir']}")
    if data.get("val_split"):
        parts.append(f"val split {data['val_split']}")
    if data.get("seed") is not None:
        parts.append(f"seed {data['seed']}")
    return ", ".join(parts)


def _training(cfg: dict) -> str | None:
    if not cfg:
        return None
    optimizer = " ".join(text for text, value in ((str(cfg.get("opt")), cfg.get("opt")), (f"lr {cfg.get('lr')}", cfg.get("lr")))
                         if value is not None)
    parts = [text for text, value in ((optimizer, optimizer), (f"batch {cfg.get('batch_size')}", cfg.get("batch_size")),
                                      (f"{cfg.get('epochs')} epochs", cfg.get("epochs"))) if value]
    for key in ("schedule", "augment", "label_smoothing", "weight_decay"):
        if cfg.get(key) not in (None, 0, "none", ""):
            parts.append(f"{key.replace('_', ' ')} {cfg[key]}")
    resolved = cfg.get("augment_resolved")
    if resolved and resolved != cfg.get("augment"):  # what `auto` became on this data
        parts = [f"augment {resolved} ({cfg.get('augment')})" if part.startswith("augment ") else part for part in parts]
        if not any(part.startswith("augment ") for part in parts):
            parts.append(f"augment {resolved}")
    if cfg.get("precision_used"):
        parts.append(f"precision {cfg['precision_used']}")
    return ", ".join(parts)
