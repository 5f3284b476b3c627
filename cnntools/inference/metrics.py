"""Classification metrics from logits and labels (scikit-learn's definitions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, classes: list[str], top_k: tuple[int, ...] = (5,)) -> dict:
    """Accuracy, cross-entropy loss, top-k accuracy, per-class accuracy and
    precision/recall/F1 (scikit-learn's definitions, zero where undefined), and statistics
    of the raw outputs.

    Per class c: precision = TP/(TP+FP), recall = TP/(TP+FN) (= the class's accuracy),
    F1 = 2PR/(P+R); macro = unweighted mean over classes, weighted = mean weighted by support.
    """
    logits = logits.float()
    labels = labels.long()
    n, k = logits.shape
    pred = logits.argmax(1)
    num_classes = max(k, len(classes))
    cm = torch.bincount(labels * num_classes + pred, minlength=num_classes * num_classes).view(num_classes, num_classes).double()
    tp = cm.diag()
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-300), torch.zeros_like(tp))
    weights = support / max(1.0, float(support.sum()))
    # sklearn averages over the labels present in y_true or y_pred.
    present = (support > 0) | (predicted > 0)
    m = max(1, int(present.sum()))
    result = {
        "count": n,
        "accuracy": float((pred == labels).double().mean()) if n else 0.0,
        "loss": float(F.cross_entropy(logits, labels)) if n else 0.0,
        "top_k": {},
        "precision_macro": float(precision[present].sum() / m),
        "recall_macro": float(recall[present].sum() / m),
        "f1_macro": float(f1[present].sum() / m),
        "precision_weighted": float((precision * weights).sum()),
        "recall_weighted": float((recall * weights).sum()),
        "f1_weighted": float((f1 * weights).sum()),
        "per_class": [
            {
                "class": classes[c] if c < len(classes) else str(c),
                "support": int(support[c]),
                "accuracy": float(recall[c]),
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
            }
            for c in range(len(classes))
        ],
        "logits": logit_stats(logits),
    }
    for kk in top_k:
        if 1 <= kk <= k:
            hits = (logits.topk(kk, dim=1).indices == labels[:, None]).any(1)
            result["top_k"][str(kk)] = float(hits.double().mean()) if n else 0.0
    return result


def logit_stats(logits: torch.Tensor) -> dict:
    """min, max, mean, std and share of negative values of the raw outputs."""
    flat = logits.float().flatten()
    if flat.numel() == 0:
        return {"min": None, "max": None, "mean": None, "std": None, "share_negative": None}
    return {
        "min": float(flat.min()),
        "max": float(flat.max()),
        "mean": float(flat.mean()),
        "std": float(flat.std()) if flat.numel() > 1 else 0.0,
        "share_negative": float((flat < 0).double().mean()),
    }
