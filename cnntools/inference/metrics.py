"""Classification metrics from logits and labels, defined as scikit-learn defines them
(`precision_recall_fscore_support` with zero_division=0, `top_k_accuracy_score`) and checked
against it in the tests, computed here with NumPy: importing sklearn.metrics (scipy) costs a
command ~0.7 s, more than the metrics. The logits come from torch-side batches
(`cnntools.inference.batches`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, classes: list[str], top_k: tuple[int, ...] = (5,)) -> dict:
    """Accuracy, cross-entropy loss, top-k accuracy, per-class accuracy and
    precision/recall/F1 (as scikit-learn's `precision_recall_fscore_support`, zero where
    undefined; `top_k_accuracy_score`), and statistics of the raw outputs.

    Per class c: precision = TP/(TP+FP), recall = TP/(TP+FN) (= the class's accuracy),
    F1 = 2TP/(2TP+FP+FN); macro = unweighted mean over the classes present in the labels or
    the predictions, weighted = mean weighted by support.
    """
    import numpy as np

    logits = logits.float()
    labels = labels.long()
    n, k = logits.shape
    y_true, y_pred = labels.numpy(), logits.argmax(1).numpy()
    num_classes = max(k, len(classes), int(y_true.max()) + 1 if n else 0)
    precision, recall, f1, support = per_class_scores(y_true, y_pred, num_classes)
    present = np.zeros(num_classes, dtype=bool)
    present[np.unique(np.concatenate([y_true, y_pred]))] = True
    scores = {"macro": (0.0, 0.0, 0.0), "weighted": (0.0, 0.0, 0.0)}
    if n:
        scores["macro"] = tuple(float(v[present].mean()) for v in (precision, recall, f1))
        weights = support[present]
        if weights.sum():
            scores["weighted"] = tuple(float(np.average(v[present], weights=weights)) for v in (precision, recall, f1))
    result = {
        "count": n,
        "accuracy": float((y_pred == y_true).mean()) if n else 0.0,
        "loss": float(F.cross_entropy(logits, labels)) if n else 0.0,
        "top_k": {},
        **{f"{name}_{avg}": float(value) for avg, values in scores.items()
           for name, value in zip(("precision", "recall", "f1"), values)},
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
            result["top_k"][str(kk)] = top_k_accuracy(logits, labels, kk) if n else 0.0
    return result


def per_class_scores(y_true, y_pred, num_classes: int):
    """(precision, recall, F1, support) per class 0..num_classes-1, zero where undefined."""
    import numpy as np

    cm = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)

    def ratio(a, b):
        return np.divide(a, b, out=np.zeros_like(a), where=b > 0)

    return ratio(tp, predicted), ratio(tp, support), ratio(2 * tp, predicted + support), support


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of images whose label is among the `k` highest logits, as scikit-learn's
    `top_k_accuracy_score` counts it (ties broken the same way; two classes: the second
    class's probability against 0.5)."""
    import numpy as np

    classes = logits.shape[1]
    if k >= classes:
        return 1.0
    y_true = labels.numpy()
    if classes == 2:
        return float(((torch.softmax(logits.double(), dim=1)[:, 1] > 0.5).numpy() == y_true).mean())
    ranked = np.argsort(logits.double().numpy(), axis=1, kind="mergesort")[:, ::-1][:, :k]
    return float((ranked == y_true[:, None]).any(axis=1).mean())


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
