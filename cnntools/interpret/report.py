"""One page per run: everything `info`, `curves`, `eval`, `confusion` and `saliency` say about
a model, gathered as data (`build_report`) for `cnntools report` to render as one HTML file
(`cnntools.interpret.report_html`) or print as JSON.

Every number comes from the library code the single commands use: the header summary of
`info`, eval's `classification_metrics`, confusion's counts and most-confused pairs, the
saliency maps of `saliency_maps`, the multiply-adds of `featmaps --list-layers`.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from cnntools.core.errors import CnnError
from cnntools.interpret import confusion as cmath
from cnntools.output import files


@dataclass
class ModelReport:
    """One model's section: `doc` is its part of the JSON document; the rest is what only the
    figures need (the training run, the top-loss images at the model's size, their maps)."""

    doc: dict[str, Any]
    run: Any = None  # cnntools.checkpoint.runs.Run, or None when the file records no history
    counts: Any = None  # the confusion matrix (numpy, true × predicted)
    images: Any = None  # uint8 N×C×H×W: the top-loss images as the model sees them
    maps: Any = None  # float N×H×W in 0..1: their saliency maps
    extra: dict = field(default_factory=dict)


def build_report(models: list[str], device, precision: str, *, split: str = "test", data: str | None = None,
                 data_dir: str | None = None, download: bool = False, batch_size: int = 256, top_k: int = 5,
                 top_losses: int = 12, most_confused: int = 5, method: str = "gradcam",
                 trust_code: bool = False) -> list[ModelReport]:
    """Evaluate each model on its own data's `split` and gather its report section.

    `device` is resolved, `precision` resolved (fp32, bf16 or fp16). `top_losses`: the most
    confident mistakes shown with their `method` saliency maps (for the predicted class).
    """
    if sum(1 for m in models if m == files.STDIO) > 1:
        raise CnnError("only one model can come from stdin (-)")
    return [_model_report(spec, device, precision, split, data, data_dir, download, batch_size, top_k, top_losses,
                          most_confused, method, trust_code) for spec in models]


def comparison_rows(reports: list[ModelReport]) -> list[dict]:
    """The side-by-side table: one row per model, the numbers a reader compares first."""
    rows = []
    for r in reports:
        doc = r.doc
        metrics, card = doc["metrics"], doc["card"]
        rows.append({
            "model": doc["model"],
            "label": doc["label"],
            "arch": card["arch"],
            "parameters": card["parameters"],
            "macs": card["macs"],
            "data": doc["data"],
            "images": metrics["images"],
            "accuracy": metrics["accuracy"],
            "loss": metrics["loss"],
            "top_k": dict(metrics["top_k"]),
            "f1_macro": metrics["f1_macro"],
            "kept_epoch": card["kept_epoch"],
            "mistakes": doc["confusion"]["mistakes"],
        })
    return rows


def _model_report(spec, device, precision, split, data, data_dir, download, batch_size, top_k, top_losses,
                  most_confused, method, trust_code) -> ModelReport:
    from cnntools.checkpoint import load_model
    from cnntools.data import load_for_model
    from cnntools.inference.batches import predict
    from cnntools.inference.memory import fit_model_batch
    from cnntools.inference.metrics import classification_metrics

    raw = files.read_bytes(spec) if spec == files.STDIO else None
    lm = load_model(spec, device, data=raw, trust_code=trust_code, download=download)
    batch = fit_model_batch(lm, batch_size)
    if not data and not lm.meta.data.spec:
        raise CnnError(f"{lm.source} records no dataset; name one with --data")
    imageset = load_for_model(lm.meta.data, split, lm.preprocessing, lm.classes, data=data, data_dir=data_dir,
                              download=download, name=lm.source)
    if len(imageset) == 0:
        raise CnnError(f"the {split} split of {imageset.spec} is empty")
    logits = predict(lm.model, imageset.images, lm.preprocessing, batch_size=batch, precision=precision,
                     arch=lm.meta.arch_name)
    labels = imageset.labels.long()
    metrics = classification_metrics(logits, labels, lm.classes, top_k=(top_k,))
    metrics["images"] = metrics.pop("count")
    losses = F.cross_entropy(logits.float(), labels, reduction="none")
    probs = F.softmax(logits.float(), dim=1)
    preds = logits.argmax(1)
    counts, confusion = _confusion(labels, preds, lm.classes, most_confused)
    # The same order as `saliency --mistakes` and `confusion --most-confused` (one rule).
    worst = cmath.top_losses(labels.numpy(), preds.numpy(), losses.numpy(), probs.max(1).values.numpy())[:top_losses]
    mistakes = [_mistake(int(i), imageset, lm.classes, labels, preds, probs, losses) for i in worst]
    card = _card(spec, lm, raw)
    report = ModelReport(
        doc={
            "model": spec,
            "label": lm.label,
            "data": f"{imageset.spec}:{split}",
            "card": card,
            "metrics": metrics,
            "confusion": confusion,
            "top_losses": mistakes,
        },
        run=_run(lm),
        counts=counts,
    )
    if mistakes:
        chosen = torch.tensor([m["index"] for m in mistakes])
        report.images = lm.preprocessing.fit(imageset.images[chosen])
        grad_batch = fit_model_batch(lm, min(batch, len(mistakes)), training=True)  # maps need the backward pass too
        report.maps, method, layer = _explain(lm, imageset.images[chosen], [m["pred"] for m in mistakes], method, precision,
                                              grad_batch)
        for m, peak in zip(mistakes, _peaks(report.maps)):
            m["saliency_peak"] = peak
    else:
        layer = None
    report.doc["saliency"] = {"method": method, "layer": layer, "target": "pred"}
    return report


def _mistake(i, imageset, classes, labels, preds, probs, losses) -> dict:
    paths = imageset.paths
    return {
        "index": i,
        "path": paths[i] if paths else None,
        "label": int(labels[i]),
        "label_name": classes[int(labels[i])],
        "pred": int(preds[i]),
        "pred_name": classes[int(preds[i])],
        "prob": float(probs[i, preds[i]]),
        "prob_true": float(probs[i, labels[i]]),
        "loss": float(losses[i]),
    }


def _confusion(labels, preds, classes, k) -> tuple[Any, dict]:
    """Counts and the most confused pairs, as `cnntools confusion` computes them."""
    import numpy as np

    y, p = labels.numpy().astype(np.int64), preds.numpy().astype(np.int64)
    counts = cmath.confusion_counts(y, p, len(classes))
    rows = counts.sum(axis=1)
    pairs = [{"true": t, "true_name": classes[t], "pred": q, "pred_name": classes[q], "count": c,
              "share_of_true": c / rows[t] if rows[t] else 0.0}
             for t, q, c in cmath.most_confused(counts, k)]
    total = int(counts.sum())
    return counts, {"counts": counts.tolist(), "total": total, "mistakes": total - int(np.trace(counts)),
                    "most_confused": pairs}


def _explain(lm, raw, targets, method, precision, batch) -> tuple[torch.Tensor, str, str | None]:
    """The one place the report asks for saliency maps: (maps scaled to 0..1 per map, method, layer).

    Calls `cnntools.interpret.saliency.saliency_maps` with the model's own preprocessing of the
    source pixels, the CAM layer `saliency --layer auto` picks, and the predicted class. A model
    without a conv layer (an MLP) has no CAM layer: its maps are the input gradient instead.
    """
    from cnntools.interpret.activations import conv_layer_names, example_input, resolve_layer_name
    from cnntools.interpret.saliency import saliency_maps, uses_layer

    if uses_layer(method) and not conv_layer_names(lm.model, example_input(lm)):
        method = "gradient"
    layer = resolve_layer_name(lm.model, "auto", example_input(lm)) if uses_layer(method) else None
    x = lm.preprocessing(raw, next(lm.model.parameters()).device)
    maps = torch.cat([saliency_maps(lm.model, x[s:s + batch], targets[s:s + batch], method=method, layer=layer,
                                    batch_size=batch, precision=precision) for s in range(0, len(targets), batch)])
    low = maps.flatten(1).min(1).values[:, None, None]
    high = maps.flatten(1).max(1).values[:, None, None]
    return ((maps - low) / (high - low).clamp_min(1e-12)).float(), method, layer


def _peaks(maps: torch.Tensor) -> list[list[int]]:
    width = maps.shape[2]
    return [[int(i) // width, int(i) % width] for i in maps.flatten(1).argmax(1)]


def _card(spec: str, lm, raw: bytes | None) -> dict:
    """The model card: `info`'s header summary plus what only the built model tells (MACs)."""
    from cnntools.interpret.activations import layer_rows
    from cnntools.models.counting import model_totals

    shape = lm.preprocessing.shape
    totals = model_totals(lm.model, shape[0], shape[-1])
    layers = [{k: row[k] for k in ("layer", "type", "output_shape", "params", "macs")}
              for row in layer_rows(lm.model, shape[0], shape[-1])]
    card: dict[str, Any] = {
        "arch": lm.meta.arch_name,
        "input_shape": list(shape),
        "parameters": totals["parameters"],
        "trainable": totals["trainable"],
        "macs": totals["macs"],
        "classes": list(lm.classes),
        "layers": layers,
        "kept_epoch": None,
        "summary": None,
        "written": None,
    }
    if spec.startswith(("torchvision:", "timm:")):
        return card
    from cnntools.checkpoint.file_format import decode_metadata, read_header
    from cnntools.checkpoint.summary import card as short_card
    from cnntools.checkpoint.summary import summarize

    name = files.display_name(spec)
    if raw is not None:  # stdin, read once already: the header is in those bytes
        import json
        import struct

        length = struct.unpack("<Q", raw[:8])[0]
        header, header_bytes, file_bytes = json.loads(raw[8:8 + length]), 8 + length, len(raw)
    else:
        header, header_bytes, file_bytes = read_header(spec)
    summary = summarize(header, decode_metadata(header, name), name, file_bytes, header_bytes)
    card["summary"] = summary
    card["short"] = short_card(summary)
    card["kept_epoch"] = summary["history"]["kept_epoch"]
    card["written"] = {**summary["written_by"], "modified": _modified(spec)}
    return card


def _modified(spec: str) -> str | None:
    """The file's modification time (UTC, ISO 8601): when the checkpoint was written."""
    if spec == files.STDIO:
        return None
    try:
        stamp = os.stat(spec).st_mtime
    except OSError:
        return None
    return datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _run(lm):
    from cnntools.checkpoint import runs as runlib

    meta = lm.meta.to_json()
    if not meta.get("history"):
        return None
    return runlib.run_from_checkpoint_meta(meta, lm.source)
