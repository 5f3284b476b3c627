"""The metrics scikit-learn defines, computed without importing it (a command's fixed cost),
against scikit-learn itself on random cases: precision/recall/F1 per class and averaged, top-k
accuracy (ties included), the confusion matrix and its three normalisations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as sk

from cnntools.inference.metrics import classification_metrics, top_k_accuracy
from cnntools.interpret.confusion import confusion_counts, normalize


@st.composite
def predictions(draw):
    classes = draw(st.integers(2, 6))
    n = draw(st.integers(1, 40))
    labels = draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n))
    # Small integer logits: ties between classes are common, as sklearn's tie rule must be matched.
    logits = draw(st.lists(st.lists(st.integers(-2, 2), min_size=classes, max_size=classes), min_size=n, max_size=n))
    return torch.tensor(logits, dtype=torch.float32), torch.tensor(labels), classes


@settings(max_examples=150, deadline=None)
@given(predictions())
def test_precision_recall_f1_and_top_k_are_sklearns(case):
    logits, labels, classes = case
    got = classification_metrics(logits, labels, [str(c) for c in range(classes)], top_k=tuple(range(1, classes + 1)))
    y_true, y_pred = labels.numpy(), logits.argmax(1).numpy()
    for avg in ("macro", "weighted"):
        p, r, f, _ = sk.precision_recall_fscore_support(y_true, y_pred, average=avg, zero_division=0)
        assert got[f"precision_{avg}"] == pytest.approx(p) and got[f"recall_{avg}"] == pytest.approx(r)
        assert got[f"f1_{avg}"] == pytest.approx(f)
    p, r, f, s = sk.precision_recall_fscore_support(y_true, y_pred, labels=np.arange(classes), zero_division=0)
    for c, row in enumerate(got["per_class"]):
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx((p[c], r[c], f[c], s[c]))
    for k in range(1, classes):
        scores = torch.softmax(logits.double(), 1)[:, 1].numpy() if classes == 2 else logits.double().numpy()
        want = sk.top_k_accuracy_score(y_true, scores, k=k, labels=np.arange(classes))
        assert top_k_accuracy(logits, labels, k) == pytest.approx(want)


@settings(max_examples=150, deadline=None)
@given(predictions())
def test_confusion_matrix_and_normalisations_are_sklearns(case):
    logits, labels, classes = case
    y_true, y_pred = labels.numpy(), logits.argmax(1).numpy()
    counts = confusion_counts(y_true, y_pred, classes)
    np.testing.assert_array_equal(counts, sk.confusion_matrix(y_true, y_pred, labels=np.arange(classes)))
    for mode in ("true", "pred", "all"):
        want = sk.confusion_matrix(y_true, y_pred, labels=np.arange(classes), normalize=mode)
        np.testing.assert_allclose(normalize(counts, mode), want, atol=1e-12)


def test_eval_imports_no_sklearn(tmp_path):
    """eval's metrics cost no sklearn/scipy import (~0.7 s of a command's fixed cost)."""
    import subprocess
    import sys

    code = ("import sys, torch; from cnntools.inference.metrics import classification_metrics; "
            "from cnntools.interpret.confusion import confusion_counts, normalize; "
            "classification_metrics(torch.randn(8, 3), torch.arange(8) % 3, ['a', 'b', 'c']); "
            "normalize(confusion_counts([0, 1], [1, 1], 2), 'true'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout
    assert out.strip() == "[]"
