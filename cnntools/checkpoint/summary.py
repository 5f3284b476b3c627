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

