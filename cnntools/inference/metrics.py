"""Classification metrics from logits and labels: scikit-learn computes the ones it defines
(precision/recall/F1, the confusion matrix, top-k accuracy); the logits come from torch-side
batches (`cnntools.inference.batches`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, classes: list[str], top_k: tuple[int, ...] = (5,)) -> dict:
    """Accuracy, cross-entropy loss, top-k accuracy, per-class accuracy and
    precision/recall/F1 (scikit-learn's `precision_recall_fscore_support`, zero where
    undefined; `top_k_accuracy_score`), and statistics of the raw outputs.

    Per class c: precision = TP/(TP+FP), recall = TP/(TP+FN) (= the class's accuracy),
    F1 = 2PR/(P+R); macro = unweighted mean over the classes present in the labels or the
    predictions, weighted = mean weighted by support.
    """
    import numpy as np
    from sklearn.metrics import precision_recall_fscore_support

    logits = logits.float()
    labels = labels.long()
    n, k = logits.shape
    y_true, y_pred = labels.numpy(), logits.argmax(1).numpy()
    num_classes = max(k, len(classes))
    if n:
        scores = {avg: precision_recall_fscore_support(y_true, y_pred, average=avg, zero_division=0)[:3]
                  for avg in ("macro", "weighted")}
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=np.arange(num_classes), zero_division=0)
    else:
        scores = {avg: (0.0, 0.0, 0.0) for avg in ("macro", "weighted")}
        precision = recall = f1 = support = np.zeros(num_classes)
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


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of images whose label is among the `k` highest logits: scikit-learn's
    `top_k_accuracy_score` (two classes: on the second class's probability, as it expects)."""
    import numpy as np
    from sklearn.metrics import top_k_accuracy_score

    classes = logits.shape[1]
    if k >= classes:
        return 1.0
    scores = logits.double().numpy()
    if classes == 2:
        scores = torch.softmax(logits.double(), dim=1)[:, 1].numpy()
    return float(top_k_accuracy_score(labels.numpy(), scores, k=k, labels=np.arange(classes)))


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
