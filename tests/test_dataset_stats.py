"""`cnntools dataset-stats` end to end: JSON, CSV, tables, figures, folders and errors."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNTOOLS_CACHE", str(tmp_path / "cache"))


def test_digits_json_counts_and_exact_mean_std(cli):
    from sklearn.utils.class_weight import compute_class_weight

    from cnntools.data import load_split

    result = cli("dataset-stats", "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = result.json()
    assert doc["classes"] == [str(d) for d in range(10)]
    assert doc["image_shape"] == [1, 8, 8] and doc["dtype"] == "uint8" and doc["channels"] == 1
    counts = {s: v["count"] for s, v in doc["splits"].items()}
    assert counts == {"train": 1438, "test": 359}
    assert sum(sum(v["class_counts"].values()) for v in doc["splits"].values()) == 1797
    train = load_split("digits", "train")
    pixels = train.images.numpy().astype(np.float64) / 255
    assert doc["mean"][0] == pytest.approx(pixels.mean(), abs=1e-15)
    assert doc["std"][0] == pytest.approx(pixels.std(), abs=1e-15)  # population std over all pixels
    labels = train.labels.numpy()
    weights = compute_class_weight("balanced", classes=np.arange(10), y=labels)
    assert list(doc["class_weights"].values()) == pytest.approx(weights.tolist())
    bincount = np.bincount(labels)
    assert doc["imbalance_ratio"] == pytest.approx(bincount.max() / bincount.min())
    assert doc["duplicates"] == {"train_test": 0}


def test_val_split_csv_and_table(cli):
    result = cli("dataset-stats", "--val-split", "0.2", "--format", "csv")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["field", "value"]  # long: one row per number of the JSON document
    values = {r["field"]: r["value"] for r in rows}
    counts = {split: [int(values[f"splits.{split}.class_counts.{c}"]) for c in range(10)] for split in ("train", "val", "test")}
    assert sum(counts["train"]) + sum(counts["val"]) == 1438
    assert int(values["splits.val.count"]) == sum(counts["val"]) and "class_weights.0" in values
    table = cli("dataset-stats", "--data", "fake:100,size=8", "-q")
    assert table.exit_code == 0
    assert "train images" in table.stdout and "3×8×8" in table.stdout and "Class counts" in table.stdout
    assert table.stderr == ""


def test_duplicates_between_train_and_test_are_counted(tmp_path, cli):
    rng = np.random.default_rng(0)
    root = tmp_path / "dupes"
    shared = [rng.integers(0, 256, (6, 6, 3), dtype=np.uint8) for _ in range(3)]
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    for i, arr in enumerate(shared):
        Image.fromarray(arr).save(root / "train" / "a" / f"s{i}.png")
    for i, arr in enumerate(shared[:2]):
        Image.fromarray(arr).save(root / "test" / "b" / f"s{i}.png")
    (root / "test" / "b" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    result = cli("dataset-stats", "--data", str(root), "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = result.json()
    assert doc["duplicates"] == {"train_test": 2}
    assert doc["splits"]["train"]["class_counts"] == {"a": 6, "b": 3}
    folder = doc["folder"]
    assert folder["files"] == 18 and folder["readable"] == 17
    assert folder["width"] == {"mean": 6.0, "median": 6.0, "std": 0.0, "min": 6, "max": 6}
    assert [u["path"].endswith("cut.png") for u in folder["unreadable"]] == [True]
    assert folder["cache"]["hit"] is False
    assert "cut.png" in result.stderr
    again = cli("dataset-stats", "--data", str(root), "--format", "json", "-q")
    assert again.json()["folder"]["cache"]["hit"] is True and again.stderr == ""


def test_grid_and_augment_preview_are_written(tmp_path, cli):
    grid, preview = tmp_path / "grid.png", tmp_path / "aug.png"
    result = cli("dataset-stats", "--data", "fake-patch:40", "--grid", grid, "--augment-preview", preview,
                 "--augment", "flip,crop:4,jitter:0.4,rotate:10,rrc:0.5", "--versions", "3", "--format", "json")
    assert result.exit_code == 0, result.stderr
    for path in (grid, preview):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
    assert result.json()["augment"] == "flip:0.5,crop:4,jitter:0.4,rotate:10,rrc:0.5"


@pytest.mark.parametrize(
    "args, message, code",
    [
        (["--data", "cifar10", "--data-dir", "{tmp}"], "--download", 1),
        (["--data", "{tmp}/empty"], "no images found", 1),
        (["--data", "nonsense-set"], "unknown dataset", 1),
        (["--grid", "{tmp}/g.jpg"], ".png, .svg or .pdf", 2),  # bad option values: bad usage
        (["--augment-preview", "{tmp}/a.png", "--augment", "wobble"], "unknown augmentation", 2),
        (["--image-size", "big"], "--image-size", 2),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, cli, args, message, code):
    (tmp_path / "empty").mkdir()
    result = cli("dataset-stats", *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*.jpg"))
