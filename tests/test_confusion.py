"""confusion: matrix math against scikit-learn, the predictions CSV path (file and stdin), and a checkpoint."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import confusion_matrix as sk_confusion
from typer.testing import CliRunner

from cnntools.cli.app import app
from cnntools.interpret import confusion as cmath

sys.path.insert(0, str(Path(__file__).parent))

runner = CliRunner()


def invoke(args, input=None):
    return runner.invoke(app, args, input=input, prog_name="cnntools")


@pytest.mark.filterwarnings("ignore:A single label:UserWarning")
@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(1, 8),
    pairs=st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), min_size=1, max_size=80),
    mode=st.sampled_from(["none", "true", "pred", "all"]),
)
def test_counts_and_normalisation_match_sklearn(k, pairs, mode):
    labels = np.array([a % k for a, _ in pairs])
    preds = np.array([b % k for _, b in pairs])
    ours = cmath.normalize(cmath.confusion_counts(labels, preds, k), mode)
    theirs = sk_confusion(labels, preds, labels=list(range(k)), normalize=None if mode == "none" else mode)
    np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_most_confused_against_brute_force():
    rng = np.random.default_rng(3)
    cm = rng.integers(0, 20, size=(7, 7))
    got = cmath.most_confused(cm, 6)
    brute = sorted(((cm[i, j], i, j) for i in range(7) for j in range(7) if i != j and cm[i, j] > 0),
                   key=lambda t: (-t[0], t[1], t[2]))[:6]
    assert got == [(i, j, int(c)) for c, i, j in brute]
    assert cmath.most_confused(np.eye(3, dtype=int) * 5, 3) == []


def test_confusion_report_matches_sklearn_and_lists_the_pairs_examples():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, 200)
    preds = np.where(rng.random(200) < 0.5, labels, rng.integers(0, 4, 200))
    index = list(range(1000, 1200))
    paths = [f"img/{i}.png" for i in index]
    report = cmath.confusion_report(labels, preds, ["a", "b", "c", "d"], source="s", index=index, paths=paths,
                                    normalize_over="true", top=3, examples=2)
    np.testing.assert_array_equal(report["counts"], sk_confusion(labels, preds, labels=range(4)))
    np.testing.assert_allclose(report["matrix"], sk_confusion(labels, preds, labels=range(4), normalize="true"))
    assert report["accuracy"] == pytest.approx(float(np.mean(labels == preds)))
    assert report["total"] == 200 and len(report["most_confused"]) == 3
    for pair in report["most_confused"]:
        wrong = np.flatnonzero((labels == pair["true"]) & (preds == pair["pred"]))
        assert pair["count"] == len(wrong)
        assert pair["share_of_true"] == pytest.approx(len(wrong) / np.sum(labels == pair["true"]))
        assert pair["examples"] == [index[i] for i in wrong[:2]]
        assert pair["paths"] == [paths[i] for i in wrong[:2]]


def _predictions_csv(n=120, k=4, seed=0):
    rng = np.random.default_rng(seed)
    names = ["cat", "dog", "bird", "deer"][:k]
    labels = rng.integers(0, k, n)
    preds = np.where(rng.random(n) < 0.6, labels, rng.integers(0, k, n))
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["index", "path", "label", "label_name", "pred", "pred_name", "prob", "loss"])
    for i, (a, b) in enumerate(zip(labels, preds)):
        w.writerow([i, f"img/{i}.png", a, names[a], b, names[b], 0.9, 0.1])
    return out.getvalue(), labels, preds, names


def test_cli_from_stdin_json_matches_sklearn():
    text, labels, preds, names = _predictions_csv()
    result = invoke(["confusion", "-", "--format", "json", "--normalize", "true", "--most-confused", "3"], input=text)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["classes"] == names
    np.testing.assert_array_equal(doc["counts"], sk_confusion(labels, preds, labels=range(4)))
    np.testing.assert_allclose(doc["matrix"], sk_confusion(labels, preds, labels=range(4), normalize="true"))
    assert doc["total"] == len(labels)
    top = doc["most_confused"][0]
    cm = np.array(doc["counts"])
    off = cm - np.diag(np.diag(cm))
    assert top["count"] == off.max()
    # Example indices really are images with that (true, predicted) pair, paths alongside.
    for pair in doc["most_confused"]:
        assert pair["examples"]
        for idx, path in zip(pair["examples"], pair["paths"]):
            assert labels[idx] == pair["true"] and preds[idx] == pair["pred"]
            assert path == f"img/{idx}.png"


def test_cli_csv_table_and_plot(tmp_path):
    text, labels, preds, names = _predictions_csv(k=3, seed=1)
    src = tmp_path / "pred.csv"
    src.write_text(text)
    result = invoke(["confusion", str(src), "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    cm = sk_confusion(labels, preds, labels=range(3))
    assert [r["true"] for r in rows] == names
    assert [[int(r[c]) for c in names] for r in rows] == cm.tolist()

    plot = tmp_path / "cm.png"
    result = invoke(["confusion", str(src), "-o", str(plot), "--normalize", "pred"])
    assert result.exit_code == 0, result.output
    assert "Most confused pairs" in result.stdout and "cat" in result.stdout
    assert plot.stat().st_size > 10_000


def test_heatmap_for_100_classes_has_no_cell_numbers():
    from cnntools.output.plots import confusion_heatmap

    rng = np.random.default_rng(0)
    big = confusion_heatmap(rng.integers(0, 9, (100, 100)), [f"c{i}" for i in range(100)])
    small = confusion_heatmap(rng.integers(0, 9, (10, 10)), [f"c{i}" for i in range(10)])
    assert len(big.axes[0].texts) == 0
    assert len(small.axes[0].texts) == 100
    assert len(big.axes[0].get_xticklabels()) == 100


def test_bad_inputs_give_one_line_errors(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    result = invoke(["confusion", str(bad)])
    assert result.exit_code == 1 and "not a predictions CSV" in result.stderr
    result = invoke(["confusion", str(tmp_path / "missing.csv")])
    assert result.exit_code == 1 and "no such file" in result.stderr
    two = "model,index,path,label,label_name,pred,pred_name,prob,loss\na,0,,0,x,0,x,1,0\nb,0,,0,x,1,y,1,0\n"
    result = invoke(["confusion", "-"], input=two)
    assert result.exit_code == 1 and "2 models" in result.stderr
    text, *_ = _predictions_csv()
    result = invoke(["confusion", "-", "-o", str(tmp_path / "cm.jpg")], input=text)
    assert result.exit_code == 2 and ".png, .svg or .pdf" in result.stderr


@pytest.fixture(scope="module")
def patch_checkpoint():
    from interpret_fixtures import cached_checkpoint

    return cached_checkpoint("patch")


def test_from_checkpoint_matches_manual_predictions(patch_checkpoint):
    import torch

    from cnntools.checkpoint import load_model
    from cnntools.data import load_for_model

    result = invoke(["confusion", str(patch_checkpoint), "--format", "json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    lm = load_model(str(patch_checkpoint), "cpu")
    test = load_for_model(lm.meta.data, "test", lm.preprocessing, lm.classes)
    with torch.inference_mode():
        preds = lm.model(lm.preprocessing(test.images)).argmax(1).numpy()
    np.testing.assert_array_equal(doc["counts"], sk_confusion(test.labels.numpy(), preds, labels=range(4)))
    assert doc["classes"] == ["top-left", "top-right", "bottom-left", "bottom-right"]
    assert doc["accuracy"] > 0.5

    # The same checkpoint piped on stdin is recognised as a model, not a CSV.
    result = invoke(["confusion", "-", "--format", "json", "--device", "cpu"], input=Path(patch_checkpoint).read_bytes())
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"] == doc["counts"]


def test_eval_predictions_file_gives_the_same_matrix_as_the_checkpoint(patch_checkpoint, tmp_path):
    pred = tmp_path / "pred.csv"
    result = invoke(["eval", str(patch_checkpoint), "-o", str(pred), "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    from_csv = invoke(["confusion", str(pred), "--format", "json"])
    from_model = invoke(["confusion", str(patch_checkpoint), "--format", "json", "--device", "cpu"])
    assert from_csv.exit_code == 0 and from_model.exit_code == 0, from_csv.output + from_model.output
    a, b = json.loads(from_csv.stdout), json.loads(from_model.stdout)
    assert a["counts"] == b["counts"] and a["classes"] == b["classes"]


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.floats(0, 5), st.floats(0, 1)), min_size=1, max_size=40),
       per_class=st.booleans())
def test_top_losses_is_a_sort_by_loss_then_confidence_then_file_order(rows, per_class):
    label, pred, loss, prob = (np.array(c) for c in zip(*rows))
    got = cmath.top_losses(label, pred, loss, prob, per_class=per_class).tolist()
    brute = sorted((i for i in range(len(rows)) if label[i] != pred[i]), key=lambda i: (-loss[i], -prob[i], i))
    if per_class:  # the first (worst) of each true class, in the same order
        seen = set()
        brute = [i for i in brute if not (label[i] in seen or seen.add(label[i]))]
    assert got == brute


def test_most_confused_examples_agree_with_saliency_mistakes():
    """confusion --most-confused lists each pair's examples worst first, by the rule
    saliency --mistakes uses: the first example of the worst pair is saliency's first image."""
    rng = np.random.default_rng(5)
    n = 300
    labels = rng.integers(0, 4, n)
    preds = np.where(rng.random(n) < 0.6, labels, rng.integers(0, 4, n))
    losses = rng.random(n) * 4
    probs = rng.random(n)
    text = "index,path,label,label_name,pred,pred_name,prob,loss\n" + "".join(
        f"{i},,{a},c{a},{b},c{b},{float(p)!r},{float(l)!r}\n" for i, (a, b, p, l) in enumerate(zip(labels, preds, probs, losses)))
    result = invoke(["confusion", "-", "--format", "json", "--examples", "4", "--most-confused", "12"], input=text)
    assert result.exit_code == 0, result.output
    order = cmath.top_losses(labels, preds, losses, probs)
    for pair in json.loads(result.stdout)["most_confused"]:
        mine = [int(i) for i in order if labels[i] == pair["true"] and preds[i] == pair["pred"]][:4]
        assert pair["examples"] == mine
    worst = int(order[0])
    pair = next(p for p in json.loads(result.stdout)["most_confused"] if (p["true"], p["pred"]) == (labels[worst], preds[worst]))
    assert pair["examples"][0] == worst
