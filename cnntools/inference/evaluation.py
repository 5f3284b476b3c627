"""A model's metrics on a dataset split, and its per-image prediction rows: what `eval` reports."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Evaluation:
    """One model on one split: the logits (float32, CPU, N×K), the metrics of
    `classification_metrics` (without its count, the same number as `images`) and the time the
    forward passes took."""

    logits: torch.Tensor
    metrics: dict
    images: int
    seconds: float


def evaluate(lm, imageset, *, batch_size: int = 256, top_k: int = 5, precision: str = "fp32",
             progress: Callable[[int], None] | None = None) -> Evaluation:
    """Run the loaded model `lm` over `imageset` (an ImageSet of its split) and measure it."""
    from cnntools.inference.batches import predict
    from cnntools.inference.metrics import classification_metrics

    start = time.perf_counter()
    logits = predict(lm.model, imageset.images, lm.preprocessing, batch_size=batch_size, precision=precision,
                     arch=lm.meta.arch_name, progress=progress)
    seconds = time.perf_counter() - start
    metrics = classification_metrics(logits, imageset.labels, lm.classes, top_k=(top_k,))
    metrics.pop("count")
    return Evaluation(logits, metrics, len(imageset), seconds)


PREDICTION_COLUMNS = ["model", "data", "index", "path", "label", "label_name", "pred", "pred_name", "prob", "loss"]


def logit_columns(classes) -> list[str]:
    """The predictions CSV's raw-output columns: logit_CLASS per class."""
    return [f"logit_{name}" for name in classes]


def prediction_rows(model: str, where: str, logits: torch.Tensor, labels: torch.Tensor, classes, paths=None,
                    with_logits: bool = False) -> list[dict]:
    """One row per image (PREDICTION_COLUMNS, plus logit_CLASS columns `with_logits`): the true
    and predicted class, the predicted class's softmax probability and the image's
    cross-entropy loss, at full precision like the logits and the --image top-k CSV."""
    import torch.nn.functional as F

    probs = F.softmax(logits, dim=1)
    pred = logits.argmax(1)
    losses = F.cross_entropy(logits, labels, reduction="none")
    conf = probs.gather(1, pred[:, None])[:, 0]
    names = logit_columns(classes) if with_logits else []
    values = logits.tolist() if with_logits else None
    rows = []
    for i in range(len(labels)):
        row = {
            "model": model,
            "data": where,
            "index": i,
            "path": paths[i] if paths else "",
            "label": int(labels[i]),
            "label_name": classes[int(labels[i])],
            "pred": int(pred[i]),
            "pred_name": classes[int(pred[i])],
            "prob": float(conf[i]),
            "loss": float(losses[i]),
        }
        if with_logits:
            row.update(zip(names, values[i]))
        rows.append(row)
    return rows
