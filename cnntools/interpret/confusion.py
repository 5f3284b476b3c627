"""Confusion matrices (scikit-learn's `confusion_matrix`: counts and normalisation), the most
confused class pairs, the mistakes worst first, and reading `eval`'s predictions CSV."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from cnntools.core.errors import CnnError
from cnntools.core.runtime import check_allocation

NORMALIZE = ("none", "true", "pred", "all")


def confusion_counts(labels, preds, num_classes: int) -> np.ndarray:
    """K×K matrix: row = true class, column = predicted class (scikit-learn's layout)."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    if labels.shape != preds.shape:
        raise ValueError("labels and predictions differ in length")
    bad = (labels < 0) | (labels >= num_classes) | (preds < 0) | (preds >= num_classes)
    if bad.any():
        raise CnnError(f"class indices must lie in 0..{num_classes - 1}")
    # scikit-learn's confusion_matrix, by bincount: importing sklearn.metrics costs a command
    # ~0.7 s (scipy), more than the counting; tests compare with sklearn.
    return np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes).astype(np.int64)


def normalize(cm: np.ndarray, mode: str = "none") -> np.ndarray:
    """`cm` normalised as `sklearn.metrics.confusion_matrix(normalize=...)` does (tests compare
    with it): `true`: each row sums to 1 (recall on the diagonal); `pred`: each column sums to
    1 (precision on the diagonal); `all`: the whole matrix sums to 1. Empty rows/columns give 0.
    """
    if mode in (None, "none"):
        return cm
    if mode not in NORMALIZE:
        raise CnnError(f"unknown normalisation '{mode}': use none, true, pred or all")
    cm = np.asarray(cm, dtype=np.float64)
    total = {"true": cm.sum(axis=1, keepdims=True), "pred": cm.sum(axis=0, keepdims=True), "all": cm.sum()}[mode]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nan_to_num(cm / total)


def most_confused(cm: np.ndarray, k: int) -> list[tuple[int, int, int]]:
    """The `k` largest off-diagonal cells as (true, predicted, count), largest first, zeros left out."""
    off = cm.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")
    pairs = []
    for flat in order[:k]:
        t, p = divmod(int(flat), cm.shape[1])
        if off[t, p] <= 0:
            break
        pairs.append((t, p, int(off[t, p])))
    return pairs


def top_losses(label, pred, loss=None, prob=None, per_class: bool = False) -> np.ndarray:
    """Row positions of the mistakes, worst first: highest loss first (the most confident
    mistakes, fastai's `top_losses`), ties (and files without a loss column) by the predicted
    class's probability, then in file order. `per_class`: only the worst mistake of each true
    class, the classes in that same order. `confusion --most-confused` lists its examples by
    this rule too."""
    label, pred = np.asarray(label), np.asarray(pred)
    rows = np.flatnonzero(label != pred)
    zeros = np.zeros(len(label))
    loss = zeros if loss is None else np.nan_to_num(np.asarray(loss, dtype=np.float64), nan=-np.inf)
    prob = zeros if prob is None else np.nan_to_num(np.asarray(prob, dtype=np.float64), nan=-np.inf)
    # lexsort: the last key is the primary one; stable, so equal keys keep file order.
    rows = rows[np.lexsort((rows, -prob[rows], -loss[rows]))]
    if per_class:
        _, first = np.unique(label[rows], return_index=True)
        rows = rows[np.sort(first)]
    return rows


def pair_examples(label, pred, t: int, p: int, n: int, loss=None, prob=None) -> np.ndarray:
    """Row positions of up to `n` images of class `t` predicted as `p`, worst first (`top_losses`)."""
    rows = top_losses(label, pred, loss, prob)
    rows = rows[(np.asarray(label)[rows] == t) & (np.asarray(pred)[rows] == p)]
    return rows[:n]


def confusion_report(labels, preds, classes: list[str], *, source: str = "", index=None, paths=None,
                     normalize_over: str = "none", top: int = 5, examples: int = 5, loss=None, prob=None) -> dict:
    """Everything `cnntools confusion` reports, as data: the counts and the normalised matrix
    (NumPy arrays), the total and accuracy, and the `top` most confused (true, predicted) pairs
    with up to `examples` image indices each (`index[i]`: the dataset index of prediction i;
    `paths`, when given, their files), worst first by `loss` and `prob` when given (`top_losses`)."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    index = list(range(len(labels))) if index is None else index
    counts = confusion_counts(labels, preds, len(classes))
    total = int(counts.sum())
    row_totals = counts.sum(axis=1)
    pairs = []
    for t, p, count in most_confused(counts, top):
        where = pair_examples(labels, preds, t, p, examples, loss, prob)
        pair = {
            "true": t,
            "true_name": classes[t],
            "pred": p,
            "pred_name": classes[p],
            "count": count,
            "share_of_true": count / row_totals[t] if row_totals[t] else 0.0,
            "examples": [int(index[i]) for i in where],
        }
        if paths:
            pair["paths"] = [paths[i] for i in where]
        pairs.append(pair)
    return {
        "source": source,
        "classes": list(classes),
        "normalize": normalize_over,
        "total": total,
        "accuracy": float(np.trace(counts) / total) if total else 0.0,
        "counts": counts,
        "matrix": normalize(counts, normalize_over),
        "most_confused": pairs,
    }


@dataclass
class Predictions:
    """Predictions as `eval --predictions` writes them."""

    index: list[int]
    label: np.ndarray
    pred: np.ndarray
    classes: list[str]
    paths: list[str] | None = None
    prob: np.ndarray | None = None
    loss: np.ndarray | None = None  # cross-entropy of each row, from the `loss` column
    model: str | None = None  # the model's label, from the `model` column
    data: str | None = None  # dataset:split, from the `data` column

    @property
    def mistakes(self) -> np.ndarray:
        """Row positions where prediction and label differ, worst first (`top_losses`)."""
        return top_losses(self.label, self.pred, self.loss, self.prob)


def read_predictions(text: str, source: str = "predictions") -> Predictions:
    """Parse a predictions CSV (columns index, path, label, label_name, pred, pred_name, prob, loss).

    `label` and `pred` are required; class names come from `label_name`/`pred_name` where
    present (classes never seen are named by their index).
    """
    try:
        # newline="": quoted cells may hold line breaks (class names), as csv.writer wrote them
        return _read_predictions(csv.DictReader(io.StringIO(text, newline="")), source)
    except csv.Error as error:
        raise CnnError(f"{source}: not a readable CSV ({error})") from None


def _read_predictions(reader: csv.DictReader, source: str) -> Predictions:
    if not reader.fieldnames or "label" not in reader.fieldnames or "pred" not in reader.fieldnames:
        raise CnnError(
            f"{source}: not a predictions CSV (needs columns label and pred, as `cnntools eval --predictions` writes)"
        )
    index, labels, preds, paths, probs, losses = [], [], [], [], [], []
    names: dict[int, str] = {}
    models, datas = set(), set()
    for line_no, row in enumerate(reader, start=2):
        try:
            label, pred = int(row["label"]), int(row["pred"])
            index.append(int(row["index"]) if row.get("index") not in (None, "") else line_no - 2)
            if row.get("prob") not in (None, ""):
                probs.append(float(row["prob"]))
            if row.get("loss") not in (None, ""):
                losses.append(float(row["loss"]))
        except (TypeError, ValueError):
            raise CnnError(f"{source}, line {line_no}: label, pred, index, prob and loss must be numbers") from None
        labels.append(label)
        preds.append(pred)
        paths.append(row.get("path") or "")
        models.add(row.get("model") or None)
        datas.add(row.get("data") or None)
        if row.get("label_name"):
            names.setdefault(label, row["label_name"])
        if row.get("pred_name"):
            names.setdefault(pred, row["pred_name"])
    if not labels:
        raise CnnError(f"{source}: no prediction rows")
    models.discard(None)
    datas.discard(None)
    if len(models) > 1:
        raise CnnError(
            f"{source}: predictions of {len(models)} models in one file; write them per model "
            "(one `cnntools eval MODEL --predictions FILE` each)"
        )
    if min(labels + preds) < 0:
        raise CnnError(f"{source}: negative class index")
    k = max(max(labels), max(preds), max(names, default=0)) + 1
    # The matrix is k×k: counts, a normalised copy and the heatmap's array (8 bytes a cell each).
    check_allocation(3 * 8 * k * k, f"{source}: a confusion matrix of {k:,} classes")
    classes = [names.get(i, str(i)) for i in range(k)]
    return Predictions(
        index=index,
        label=np.asarray(labels, dtype=np.int64),
        pred=np.asarray(preds, dtype=np.int64),
        classes=classes,
        paths=paths if any(paths) else None,
        prob=np.asarray(probs, dtype=np.float64) if len(probs) == len(labels) else None,
        loss=np.asarray(losses, dtype=np.float64) if len(losses) == len(labels) else None,
        model=models.pop() if models else None,
        data=datas.pop() if len(datas) == 1 else None,
    )
