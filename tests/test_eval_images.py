"""`eval MODEL --image PATH...`: folders walked recursively in sorted order, streamed in batches,
unreadable files listed and skipped; --predictions written for every --image run."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from cnntools.output.files import walk_files


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from typer.testing import CliRunner

    from cnntools.cli.app import app

    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    result = CliRunner().invoke(app, ["train", "--image-size", "8", "--epochs", "1", "--batch-size", "128", "--device", "cpu",
                                      "--precision", "fp32", "--augment", "none", "-o", str(path), "-q"])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    names = ["z.png", "a.png", "sub/b.jpg", "sub/deeper/c.png", "sub/deeper/d.bmp", "sub/e.png", "other/f.png"]
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        # different sizes and modes: every image is fitted to the model on its own
        Image.fromarray(rng.integers(0, 256, (8 + 3 * i, 6 + i, 3), dtype=np.uint8)).convert("L" if i % 2 else "RGB").save(root / name)
    (root / "sub" / "broken.png").write_bytes(b"not an image")
    (root / "notes.txt").write_text("not an image suffix: not even tried")
    (root / ".hidden.png").write_bytes(b"hidden files are left out")
    return root


def test_walk_is_recursive_sorted_and_skips_hidden(folder):
    found, skipped = walk_files(folder, lambda name: name.endswith((".png", ".jpg", ".bmp")))
    assert [str(p.relative_to(folder)) for p in found] == [
        "a.png", "z.png", "other/f.png", "sub/b.jpg", "sub/broken.png", "sub/e.png", "sub/deeper/c.png", "sub/deeper/d.bmp"]
    assert skipped == []


def test_walk_survives_a_symlink_loop(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "a" / "x.png")
    (tmp_path / "a" / "loop").symlink_to(tmp_path / "a")
    assert [p.name for p in walk_files(tmp_path, lambda name: name.endswith(".png"))[0]] == ["x.png"]


def test_folder_prediction_equals_per_file_prediction(cli, model, folder, tmp_path):
    result = cli("eval", model, "--image", folder, "--top-k", "3", "--batch-size", "3", "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = result.json()
    rows = doc["predictions"]
    images = list(dict.fromkeys(r["image"] for r in rows))
    assert [str(p) for p in walk_files(folder, lambda n: n.endswith((".png", ".jpg", ".bmp")))[0] if p.name != "broken.png"] == images
    assert [s["image"] for s in doc["skipped"]] == [str(folder / "sub" / "broken.png")]
    assert "broken.png" in result.stderr and "1 unreadable image file skipped" in result.stderr
    for image in images:
        single = cli("eval", model, "--image", image, "--top-k", "3", "--format", "json").json()["predictions"]
        batched = [r for r in rows if r["image"] == image]
        assert [r["class"] for r in single] == [r["class"] for r in batched]
        assert np.allclose([r["prob"] for r in single], [r["prob"] for r in batched], atol=1e-5)


def test_predictions_file_is_written_for_every_image_run(cli, model, folder, tmp_path):
    out = tmp_path / "out.csv"
    a, b = folder / "a.png", folder / "z.png"
    result = cli("eval", model, "--image", a, b, "--top-k", "2", "--predictions", out, "-q")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert [r["image"] for r in rows] == [str(a), str(a), str(b), str(b)] and [r["rank"] for r in rows] == ["1", "2"] * 2
    assert "Top 2 classes" in result.stdout  # the table still goes to stdout
    as_json = tmp_path / "out.json"
    assert cli("eval", model, "--image", folder, "--predictions", as_json, "-q").exit_code == 0
    doc = json.loads(as_json.read_text())
    assert len({r["image"] for r in doc["predictions"]}) == 7 and len(doc["skipped"]) == 1
    # - streams the CSV to stdout (the table moves to stderr); several folders after one --image
    piped = cli("eval", model, "--image", folder / "sub", folder / "other", "--top-k", "1", "--predictions", "-")
    lines = piped.stdout.splitlines()
    assert lines[0] == "image,rank,class,index,prob,logit" and len(lines) == 1 + 5
    assert "Top class" in piped.stderr and "Top 1 classes" not in piped.stderr  # one: singular


def test_streams_in_batches(model, folder):
    from cnntools.checkpoint import load_model
    from cnntools.inference.images import batches

    skipped = []
    sizes = [len(names) for names, images in batches(load_model(str(model)), [str(folder)], 3, lambda p, r: skipped.append(p))]
    assert sizes == [3, 3, 1] and len(skipped) == 1


def test_an_empty_folder_and_a_named_broken_file_are_errors(cli, model, tmp_path):
    (tmp_path / "empty").mkdir()
    result = cli("eval", model, "--image", tmp_path / "empty")
    assert result.exit_code == 1 and "no image files" in result.stderr
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"x")
    assert "not a readable image" in cli("eval", model, "--image", bad).stderr
