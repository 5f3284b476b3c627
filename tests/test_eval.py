"""`cnntools eval`: metrics equal scikit-learn's, predictions CSV, several models, images, histogram."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    accuracy_score,
    log_loss,
    precision_recall_fscore_support,
    recall_score,
    top_k_accuracy_score,
)

from cnntools.inference.batches import predict
from cnntools.inference.metrics import classification_metrics, logit_stats


def _sklearn(logits: torch.Tensor, labels: torch.Tensor, k: int) -> dict:
    y, p = labels.numpy(), logits.argmax(1).numpy()
    n_classes = logits.shape[1]
    probs = torch.softmax(logits.double(), 1).numpy()
    out = {"accuracy": accuracy_score(y, p), "loss": log_loss(y, probs, labels=list(range(n_classes)))}
    for avg in ("macro", "weighted"):
        pr, rc, f1, _ = precision_recall_fscore_support(y, p, average=avg, zero_division=0)
        out.update({f"precision_{avg}": pr, f"recall_{avg}": rc, f"f1_{avg}": f1})
    out["per_class_recall"] = recall_score(y, p, average=None, labels=list(range(n_classes)), zero_division=0)
    out["per_class"] = precision_recall_fscore_support(y, p, average=None, labels=list(range(n_classes)), zero_division=0)
    out["top_k"] = top_k_accuracy_score(y, logits.numpy(), k=k, labels=list(range(n_classes)))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_metrics_equal_scikit_learn(seed):
    g = torch.Generator().manual_seed(seed)
    n, k = 200, 7
    labels = torch.randint(0, k, (n,), generator=g)
    logits = torch.randn(n, k, generator=g) * 2
    logits[torch.arange(n), labels] += torch.rand(n, generator=g) * 3  # mostly right, not always
    if seed % 2:
        logits[:, 3] -= 12  # class 3 is (almost surely) never predicted: precision undefined -> 0, as sklearn
    if seed == 4:
        labels[labels == 5] = 0  # class 5 absent from the labels
    ours = classification_metrics(logits, labels, [f"c{i}" for i in range(k)], top_k=(3,))
    ref = _sklearn(logits, labels, 3)
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "precision_weighted", "recall_weighted", "f1_weighted"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key
    assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert ours["top_k"]["3"] == pytest.approx(ref["top_k"], abs=1e-12)
    pr, rc, f1, support = ref["per_class"]
    for c, row in enumerate(ours["per_class"]):
        assert row["accuracy"] == pytest.approx(ref["per_class_recall"][c])
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx((pr[c], rc[c], f1[c], support[c]))


def test_logit_statistics_against_numpy():
    x = torch.randn(50, 4)
    stats = logit_stats(x)
    a = x.numpy()
    assert stats["min"] == pytest.approx(a.min()) and stats["max"] == pytest.approx(a.max())
    assert stats["mean"] == pytest.approx(a.mean(), abs=1e-6) and stats["share_negative"] == pytest.approx((a < 0).mean())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two small digits checkpoints written by `cnntools train`."""
    from typer.testing import CliRunner

    from cnntools.cli.app import app

    folder = tmp_path_factory.mktemp("eval")
    paths = []
    for name, arch, size in (("a", "simple-cnn", "8"), ("b", "mlp", "8")):
        path = folder / f"{name}.safetensors"
        result = CliRunner().invoke(app, ["train", "--arch", arch, "--image-size", size, "--epochs", "2", "--precision", "fp32",
                                          "-o", str(path), "-q"])
        assert result.exit_code == 0, result.stderr
        paths.append(path)
    return paths


def test_eval_json_equals_scikit_learn_on_its_own_predictions(cli, trained, tmp_path):
    model = trained[0]
    preds = tmp_path / "p.csv"
    result = cli("eval", model, "--format", "json", "-q", "-o", preds, "--top-k", "2", "--precision", "fp32")
    assert result.exit_code == 0, result.stderr
    doc = result.json()["models"][0]
    rows = list(csv.DictReader(preds.open()))
    assert list(rows[0]) == ["model", "data", "index", "path", "label", "label_name", "pred", "pred_name", "prob", "loss"]
    assert {r["model"] for r in rows} == {"simple-cnn"} and {r["data"] for r in rows} == {"digits:test"}
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([int(r["pred"]) for r in rows])
    assert doc["images"] == len(rows) == 359  # digits test split
    assert doc["accuracy"] == pytest.approx(accuracy_score(y, p))
    pr, rc, f1, _ = precision_recall_fscore_support(y, p, average="macro", zero_division=0)
    assert (doc["precision_macro"], doc["recall_macro"], doc["f1_macro"]) == pytest.approx((pr, rc, f1))
    assert doc["loss"] == pytest.approx(np.mean([float(r["loss"]) for r in rows]), abs=1e-5)
    # And the same numbers come from the library on the same model and data.
    from cnntools.checkpoint import load_model
    from cnntools.data import load_for_model

    lm = load_model(str(model))
    test = load_for_model(lm.meta.data, "test", lm.preprocessing, lm.classes)
    logits = predict(lm.model, test.images, lm.preprocessing, batch_size=50, precision="fp32")
    assert torch.equal(logits.argmax(1), torch.as_tensor(p))


def test_evaluate_and_prediction_rows_are_the_library_face_of_eval(trained):
    from cnntools.checkpoint import load_model
    from cnntools.data import load_for_model
    from cnntools.inference.evaluation import PREDICTION_COLUMNS, evaluate, prediction_rows

    lm = load_model(str(trained[0]))
    test = load_for_model(lm.meta.data, "test", lm.preprocessing, lm.classes)
    seen = []
    result = evaluate(lm, test, batch_size=100, top_k=2, precision="fp32", progress=seen.append)
    assert seen == [100, 200, 300, 359] and result.images == 359
    plain = lm.model(lm.preprocessing(test.images, torch.device("cpu"))).detach()
    torch.testing.assert_close(result.logits, plain, atol=1e-4, rtol=1e-4)
    ref = _sklearn(result.logits, test.labels, 2)
    assert result.metrics["accuracy"] == pytest.approx(ref["accuracy"]) and "count" not in result.metrics
    assert result.metrics["top_k"]["2"] == pytest.approx(ref["top_k"])
    rows = prediction_rows("m", "digits:test", result.logits, test.labels, lm.classes, with_logits=True)
    assert list(rows[0])[: len(PREDICTION_COLUMNS)] == PREDICTION_COLUMNS and len(rows) == 359
    losses = torch.nn.functional.cross_entropy(result.logits, test.labels, reduction="none")
    probs = torch.softmax(result.logits, 1)
    for i in (0, 17, 358):
        assert rows[i]["pred"] == int(result.logits[i].argmax()) and rows[i]["label"] == int(test.labels[i])
        assert rows[i]["loss"] == pytest.approx(float(losses[i]), abs=1e-6)
        assert rows[i]["prob"] == pytest.approx(float(probs[i].max()), abs=1e-6)
        assert [rows[i][f"logit_{c}"] for c in lm.classes] == result.logits[i].tolist()


def test_predictions_to_stdout_move_tables_to_stderr(cli, trained):
    result = cli("eval", trained[0], "-o", "-")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 359 and rows[0]["label_name"] in [str(i) for i in range(10)]
    assert "accuracy" in result.stderr and "Per class" in result.stderr
    quiet = cli("eval", trained[0], "-o", "-", "-q")
    assert quiet.exit_code == 0 and quiet.stdout == result.stdout and quiet.stderr == ""


def test_several_models_side_by_side(cli, trained, tmp_path):
    hist = tmp_path / "logits.png"
    result = cli("eval", *trained, "--logits-hist", hist, "-q")
    assert result.exit_code == 0, result.stderr
    assert "Models side by side" in result.stdout and "Per-class accuracy" in result.stdout
    # Columns are headed by the runs' labels (derived: the architecture and its non-default options).
    header = [line for line in result.stdout.splitlines() if line.startswith("metric")][0]
    assert header.split()[1:] == ["simple-cnn", "mlp"]
    assert hist.read_bytes()[:4] == b"\x89PNG"
    doc = cli("eval", *trained, "--format", "json", "-q").json()
    assert [m["arch"] for m in doc["models"]] == ["simple-cnn", "mlp"]
    # One column per model: the accuracy row carries both models' accuracies in order.
    (line,) = [l for l in result.stdout.splitlines() if l.split()[:1] == ["accuracy"]]
    assert [float(v) for v in line.split()[1:]] == pytest.approx([m["accuracy"] for m in doc["models"]], abs=1e-4)
    rows = list(csv.DictReader(io.StringIO(cli("eval", *trained, "--format", "csv", "-q").stdout)))
    assert len(rows) == 2 and float(rows[0]["accuracy"]) == pytest.approx(doc["models"][0]["accuracy"])


def test_image_files_print_top_classes(cli, trained, tmp_path):
    from PIL import Image

    from cnntools.data import load_split

    test = load_split("digits", "test")
    path = tmp_path / "digit.png"
    Image.fromarray(test.images[0, 0].numpy()).save(path)
    result = cli("eval", trained[0], "--image", path, "--top-k", "3", "--format", "json", "-q")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["predictions"]
    assert len(rows) == 3 and rows[0]["prob"] >= rows[1]["prob"] >= rows[2]["prob"]
    # Several files after one --image, as in `eval torchvision:vgg16 --image bird.jpg dog.jpg`.
    second = tmp_path / "digit1.png"
    Image.fromarray(test.images[1, 0].numpy()).save(second)
    both = cli("eval", trained[0], "--image", path, second, "--top-k", "2", "--format", "json", "-q")
    assert both.exit_code == 0, both.stderr
    assert [r["image"] for r in both.json()["predictions"]] == [str(path)] * 2 + [str(second)] * 2
    # images now run in batches: the same classes, the probabilities equal up to float rounding
    batched = both.json()["predictions"][:2]
    assert [(r["class"], r["index"]) for r in batched] == [(r["class"], r["index"]) for r in rows[:2]]
    assert [r["prob"] for r in batched] == pytest.approx([r["prob"] for r in rows[:2]], rel=1e-5)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    bad = cli("eval", trained[0], "--image", broken)
    assert bad.exit_code == 1 and "not a readable image" in bad.stderr


def test_other_split_and_dataset_override(cli, trained):
    result = cli("eval", trained[0], "--split", "val", "--format", "json", "-q")
    assert result.exit_code == 0, result.stderr
    assert result.json()["models"][0]["images"] == 143  # the stored 10% validation carve-out of train
    wrong = cli("eval", trained[0], "--data", "fake:20,classes=3")
    assert wrong.exit_code == 1 and "3 classes that the model (10 classes) does not know" in wrong.stderr
    same_count = cli("eval", trained[0], "--data", "fake:30", "--split", "train", "--format", "json")
    assert same_count.exit_code == 0 and "labels are compared by index" in same_count.stderr
    assert same_count.json()["models"][0]["data"] == "fake:30"


def test_predict_matches_a_plain_forward_in_every_precision_layout():
    """predict's fast path (uint8 → float in the model's memory format, channels_last under
    bf16) computes what a plain normalise-then-forward loop computes."""
    from cnntools.inference.preprocessing import Preprocessing
    from cnntools.models import create_model

    torch.manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    mean, std = [0.3, 0.4, 0.5], [0.2, 0.25, 0.3]
    x = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    for precision, atol in (("fp32", 1e-5), ("bf16", 0.1)):
        model = create_model("simple-cnn", 3, 16, 3).eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            expected = model(x).float()
        logits = predict(model, images, Preprocessing.plain(3, 16, mean, std), batch_size=4, precision=precision)
        torch.testing.assert_close(logits, expected, atol=atol, rtol=0.05)
        if precision == "bf16":  # the model now runs in channels_last, and still computes the same
            assert next(p for p in model.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)


def test_normalize_uint8_equals_divide_subtract_divide():
    from cnntools.data.loader import fold_normalization, normalize_uint8

    images = torch.randint(0, 256, (4, 3, 5, 7), dtype=torch.uint8)
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    scale, shift = fold_normalization(mean, std)
    for channels_last in (False, True):
        out = normalize_uint8(images, scale, shift, channels_last)
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        assert out.dtype == torch.float32 and out.is_contiguous(memory_format=layout)


def test_two_class_top_k_and_metrics_equal_scikit_learn():
    """Two classes: sklearn's top_k_accuracy_score wants the second class's score; top-1 is the accuracy."""
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(60, 2, generator=g)
    labels = torch.randint(0, 2, (60,), generator=g)
    ours = classification_metrics(logits, labels, ["a", "b"], top_k=(1, 2))
    assert ours["top_k"]["1"] == pytest.approx(accuracy_score(labels.numpy(), logits.argmax(1).numpy()))
    assert ours["top_k"]["2"] == 1.0
    pr, rc, f1, _ = precision_recall_fscore_support(labels.numpy(), logits.argmax(1).numpy(), average="macro", zero_division=0)
    assert (ours["precision_macro"], ours["recall_macro"], ours["f1_macro"]) == pytest.approx((pr, rc, f1))


def test_split_csv_writes_prob_and_loss_at_full_precision(cli, trained, tmp_path):
    """One precision policy for both predictions CSVs: full precision. The split CSV's prob
    and loss equal softmax/cross-entropy of its own (full-precision) logits, not a 6-decimal rounding."""
    preds = tmp_path / "p.csv"
    result = cli("eval", trained[0], "-q", "-o", preds, "--logits", "--precision", "fp32")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(preds.open()))
    logit_cols = [c for c in rows[0] if c.startswith("logit_")]
    logits = torch.tensor([[float(r[c]) for c in logit_cols] for r in rows])
    labels = torch.tensor([int(r["label"]) for r in rows])
    prob = torch.softmax(logits, 1).amax(1)
    loss = F.cross_entropy(logits, labels, reduction="none")
    got_prob = torch.tensor([float(r["prob"]) for r in rows])
    got_loss = torch.tensor([float(r["loss"]) for r in rows])
    torch.testing.assert_close(got_prob, prob, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(got_loss, loss, atol=1e-8, rtol=1e-5)
    assert any(len(r["prob"].split(".")[-1]) > 6 for r in rows)  # not rounded to 6 decimals
