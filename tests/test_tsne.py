"""`cnntools tsne` and cnntools.interpret.tsne: measures against NumPy brute force and scikit-learn.

The CLI runs on digits' test split (359 images) with small -n to stay fast; one run with
plot, embedding CSV and JSON is shared by several tests.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from cnntools.interpret import tsne as lib


# ---------------------------------------------------------------------------- library vs brute force


def _brute_neighbors(x, k):
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def test_centroid_distances_match_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 7))
    labels = rng.integers(0, 4, 120)
    labels[labels == 2] = 3  # class 2 absent
    got = lib.centroid_distances(x, labels, 5)
    for a in range(5):
        for b in range(5):
            if a in (2, 4) or b in (2, 4):
                assert np.isnan(got[a, b])
                continue
            want = np.linalg.norm(x[labels == a].mean(0) - x[labels == b].mean(0))
            assert got[a, b] == pytest.approx(want, abs=1e-9)


def test_nearest_neighbors_and_mixing_match_brute_force():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 5))
    labels = rng.integers(0, 3, 150)
    x[labels == 0] += 2.0  # class 0 apart, 1 and 2 mixed
    k = 6
    nbrs = lib.nearest_neighbors(x, k)
    brute = _brute_neighbors(x, k)
    assert np.array_equal(np.sort(nbrs, 1), np.sort(brute, 1))
    mixing = lib.knn_mixing(nbrs, labels, 3)
    for a in range(3):
        for b in range(3):
            in_a, in_b = labels == a, labels == b
            if a == b:
                want = (labels[brute[in_a]] == a).sum() / (k * in_a.sum())
            else:
                cross = (labels[brute[in_a]] == b).sum() + (labels[brute[in_b]] == a).sum()
                want = cross / (k * (in_a.sum() + in_b.sum()))
            assert mixing[a, b] == pytest.approx(want)
    assert np.allclose(mixing, mixing.T)
    assert mixing[1, 2] > mixing[0, 1] and mixing[1, 2] > mixing[0, 2]


def test_knn_accuracy_matches_majority_vote():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 4))
    labels = (x[:, 0] + 0.5 * rng.normal(size=200) > 0).astype(int)
    nbrs = lib.nearest_neighbors(x, 5)  # two classes, odd k: no ties
    want = np.mean([np.bincount(labels[row], minlength=2).argmax() == labels[i] for i, row in enumerate(_brute_neighbors(x, 5))])
    assert lib.knn_accuracy(nbrs, labels, 2) == pytest.approx(want)


def test_nearest_neighbors_with_duplicate_points_exclude_self():
    x = np.zeros((10, 3))
    x[5:] = 1.0
    nbrs = lib.nearest_neighbors(x, 3)
    assert not (nbrs == np.arange(10)[:, None]).any()
    assert ((nbrs < 5) == (np.arange(10) < 5)[:, None]).all()


def test_trustworthiness_is_scikit_learns():
    from sklearn.manifold import trustworthiness

    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 10)).astype(np.float32)
    y = x[:, :2] + 0.1 * rng.normal(size=(80, 2))
    score, used = lib.trustworthiness(x, y, 5)
    assert used == 80 and score == pytest.approx(trustworthiness(x, y, n_neighbors=5))
    _, used = lib.trustworthiness(x, y, 5, max_points=50)
    assert used == 50


def test_stratified_subset_is_seeded_and_keeps_class_shares():
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    a = lib.stratified_subset(labels, 40, seed=0)
    assert np.array_equal(a, lib.stratified_subset(labels, 40, seed=0))
    assert not np.array_equal(a, lib.stratified_subset(labels, 40, seed=1))
    assert len(np.unique(a)) == 40
    assert np.bincount(labels[a]).tolist() == [20, 10, 6, 4]
    assert np.array_equal(lib.stratified_subset(labels, 500), np.arange(200))


@pytest.mark.parametrize("method", ["sklearn", "opentsne"])
def test_both_engines_separate_obvious_clusters(method):
    rng = np.random.default_rng(4)
    centers = rng.normal(scale=10, size=(3, 20))
    labels = np.repeat(np.arange(3), 40)
    x = centers[labels] + rng.normal(size=(120, 20))
    result = lib.analyse(x, labels, ["a", "b", "c"], method=method, perplexity=10, k=5)
    assert result.method == method and result.embedding.shape == (120, 2)
    assert result.knn_accuracy_embedding == 1.0 and result.overall_mixing() == 0.0
    assert result.trustworthiness > 0.9


def test_layer_features_hooks_the_classifier_input_and_named_layers():
    import torch

    from cnntools.inference.preprocessing import Preprocessing

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3)).eval()
    images = torch.randint(0, 256, (10, 3, 2, 2), dtype=torch.uint8)
    prepare = Preprocessing.plain(3, 2)
    feats, name, kind = lib.layer_features(model, prepare, images, batch_size=4)
    with torch.no_grad():
        want = model[2](model[1](model[0](prepare(images))))
    assert (name, kind) == ("3", "input") and np.allclose(feats, want.numpy(), atol=1e-6)
    feats, name, kind = lib.layer_features(model, prepare, images, layer="1", batch_size=3)
    assert kind == "output" and feats.shape == (10, 6)
    assert not model[3]._forward_pre_hooks and not model[1]._forward_hooks
    with pytest.raises(lib.TsneInputError, match="no layer named 'nope'"):
        lib.layer_features(model, prepare, images, layer="nope")


def test_perplexity_too_large_is_refused():
    with pytest.raises(lib.TsneInputError, match="perplexity"):
        lib.embed(np.zeros((10, 3), np.float32), perplexity=30)


# ---------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def pixels_run(tmp_path_factory):
    from typer.testing import CliRunner

    from cnntools.cli.app import app

    folder = tmp_path_factory.mktemp("tsne")
    plot, emb = folder / "pixels.png", folder / "emb.csv"
    runner = CliRunner(env={"NO_COLOR": "1"})
    result = runner.invoke(
        app, ["tsne", "-n", "200", "-o", str(plot), "--embedding", str(emb), "--format", "json", "--top-pairs", "4"],
        prog_name="cnntools",
    )
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), plot, emb


def test_json_shapes(pixels_run):
    doc, _, _ = pixels_run
    k = len(doc["classes"])
    assert k == 10 and sum(doc["class_counts"]) == 200 == doc["summary"]["points"]
    assert min(doc["class_counts"]) >= 19  # stratified
    for key in ("centroid_distance_embedding", "centroid_distance_features", "knn_mixing"):
        m = np.array(doc[key], dtype=float)
        assert m.shape == (k, k) and np.allclose(m, m.T)
    assert len(doc["pairs"]) == k * (k - 1) // 2 and len(doc["top_pairs"]) == 4
    assert [p["rank"] for p in doc["pairs"]] == list(range(1, 46))
    mix = [p["knn_mixing"] for p in doc["pairs"]]
    assert mix == sorted(mix, reverse=True)
    s = doc["summary"]
    assert s["input_dim"] == 64 and s["pca_components"] == 50 and s["method"] == "opentsne"
    assert 0 < s["trustworthiness"] <= 1 and 0 <= s["knn_mixing_overall"] < 0.5
    assert s["knn_accuracy_features"] > 0.8  # raw digits are well separated
    assert doc["source"]["kind"] == "pixels" and len(doc["indices"]) == 200


def test_embedding_csv_round_trip_and_centroids_match_brute_force(pixels_run):
    doc, _, emb = pixels_run
    rows = list(csv.DictReader(io.StringIO(emb.read_text())))
    assert list(rows[0]) == ["index", "label", "label_name", "x", "y"]
    assert [int(r["index"]) for r in rows] == doc["indices"]
    labels = np.array([int(r["label"]) for r in rows])
    assert all(doc["classes"][int(r["label"])] == r["label_name"] for r in rows)
    pts = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    cents = np.stack([pts[labels == c].mean(0) for c in range(10)])
    brute = np.linalg.norm(cents[:, None] - cents[None], axis=-1)
    assert np.allclose(np.array(doc["centroid_distance_embedding"]), brute, atol=1e-4)

    from cnntools.data import load_split

    test = load_split("digits", "test")
    x = test.images[doc["indices"]].reshape(200, -1).numpy() / 255.0
    y = test.labels.numpy()[doc["indices"]]
    assert np.array_equal(y, labels)
    fc = np.stack([x[y == c].mean(0) for c in range(10)])
    assert np.allclose(np.array(doc["centroid_distance_features"]), np.linalg.norm(fc[:, None] - fc[None], axis=-1), atol=1e-4)
    # k-NN mixing in the original pixel space, brute force
    nb = _brute_neighbors(x, 10)
    a, b = doc["top_pairs"][0]["index_a"], doc["top_pairs"][0]["index_b"]
    cross = (y[nb[y == a]] == b).sum() + (y[nb[y == b]] == a).sum()
    assert doc["top_pairs"][0]["knn_mixing"] == pytest.approx(cross / (10 * ((y == a).sum() + (y == b).sum())))


def test_figure_is_written_and_not_blank(pixels_run):
    import matplotlib.image

    _, plot, _ = pixels_run
    assert plot.stat().st_size > 20_000
    img = matplotlib.image.imread(str(plot))[..., :3]
    colours = np.unique((img.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 50 and img.std() > 0.05


def test_embedding_dash_owns_stdout(cli):
    result = cli("tsne", "-n", "120", "--embedding", "-", "--top-pairs", "2")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "index,label,label_name,x,y" and len(lines) == 121
    assert "Most overlapping class pairs" in result.stderr


def test_csv_format_is_every_pair(cli):
    result = cli("tsne", "-n", "120", "--format", "csv", "-q", "--method", "sklearn")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 45 and rows[0]["rank"] == "1"
    assert result.stderr == ""


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    """simple-cnn trained for 100 Adam steps on digits at 8x8 (a few seconds)."""
    from interpret_fixtures import train_checkpoint

    path = tmp_path_factory.mktemp("tsne-ckpt") / "digits.safetensors"
    return str(train_checkpoint(path, "digits", "simple-cnn", 8, 1, 100, batch_size=32, lr=3e-3))


def test_checkpoint_features_separate_better_than_raw_pixels(cli, digits_checkpoint):
    ckpt = digits_checkpoint
    args = ["-n", "300", "--format", "json", "-q"]
    feats = cli("tsne", "--checkpoint", ckpt, *args)
    assert feats.exit_code == 0, feats.stderr
    pixels = cli("tsne", *args)
    f, p = feats.json(), pixels.json()
    assert f["source"]["kind"] == "features" and f["source"]["hook"] == "input"
    assert f["indices"] == p["indices"]  # the same images
    assert f["summary"]["knn_mixing_overall"] < p["summary"]["knn_mixing_overall"]
    assert f["summary"]["knn_accuracy_features"] > p["summary"]["knn_accuracy_features"]
    # One run shows both numbers: the pixel baseline equals the pixel run's own measures.
    assert f["summary"]["knn_mixing_pixels"] == pytest.approx(p["summary"]["knn_mixing_overall"])
    assert f["summary"]["knn_accuracy_pixels"] == pytest.approx(p["summary"]["knn_accuracy_features"])
    assert "knn_mixing_pixels" not in p["summary"]
    # Each pixel number names the size it was measured at: digits are stored 1×8×8, as this model reads them.
    assert p["summary"]["pixels_shape"] == f["summary"]["pixels_shape"] == "1×8×8"


def test_the_pixel_baseline_names_the_models_input_size(cli):
    """A 16-px model's pixel baseline is measured on 16×16 upscaled digits, not the stored 8×8:
    the two pixel numbers differ and say why."""
    from interpret_fixtures import cached_checkpoint

    args = ["-n", "200", "--format", "json", "-q"]
    feats = cli("tsne", "--checkpoint", cached_checkpoint("digits"), *args)
    pixels = cli("tsne", *args)
    assert feats.exit_code == 0, feats.stderr
    assert feats.json()["summary"]["pixels_shape"] == "1×16×16" and pixels.json()["summary"]["pixels_shape"] == "1×8×8"


def test_bad_inputs(cli, tmp_path, digits_checkpoint):
    result = cli("tsne", "--checkpoint", digits_checkpoint, "--layer", "nope", "-n", "50")
    assert result.exit_code == 1 and result.stderr.startswith("Error: no layer named 'nope'")
    result = cli("tsne", "--layer", "fc")
    assert result.exit_code == 2 and "--layer needs --checkpoint" in result.stderr  # bad usage
    result = cli("tsne", "-n", "20", "--perplexity", "30")
    assert result.exit_code == 2 and "perplexity" in result.stderr
    result = cli("tsne", "-o", str(tmp_path / "plot.jpg"))
    assert result.exit_code == 2 and ".png, .svg or .pdf" in result.stderr
    # more points asked for than the split has: all of them, said on stderr
    result = cli("tsne", "-n", "5000", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["summary"]["points"] == 359 and "fewer than -n 5000" in result.stderr


def test_embed_split_is_the_library_face_of_the_command(digits_checkpoint):
    """embed_split on a model's features: the features are the classifier's input for the
    sampled images (a plain forward with a hook), and the pixel baseline is the same images'
    pixels measured by knn_separation."""
    import torch

    from cnntools.checkpoint import load_model
    from cnntools.data import load_for_model

    lm = load_model(digits_checkpoint)
    images = load_for_model(lm.meta.data, "test", lm.preprocessing, lm.classes)
    seen = []
    out = lib.embed_split(images, lm=lm, checkpoint="c", n=120, seed=3, k=5, precision="fp32", batch_size=50,
                          progress=seen.append, perplexity=10)
    idx = lib.stratified_subset(images.labels.numpy(), 120, 3)
    assert np.array_equal(out.indices, idx) and seen == [50, 100, 120]
    assert out.source == {"split": "test", "seed": 3, "kind": "features", "data": images.spec, "checkpoint": "c",
                          "arch": lm.meta.arch_name, "layer": out.source["layer"], "hook": "input"}
    last_linear = [m for m in lm.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    kept = []
    handle = last_linear.register_forward_pre_hook(lambda _m, args: kept.append(args[0].detach()))
    try:
        lm.model(lm.preprocessing(images.images[torch.as_tensor(idx)], torch.device("cpu")))
    finally:
        handle.remove()
    assert out.result.input_dim == kept[0].shape[1]
    pixels = images.images[torch.as_tensor(idx)].reshape(len(idx), -1).numpy() / np.float32(255)
    baseline = lib.knn_separation(pixels.astype(np.float32), out.labels, len(out.classes), 5)
    assert out.summary["knn_accuracy_pixels"] == pytest.approx(baseline["knn_accuracy"])
    features = kept[0].numpy()
    assert out.result.knn_accuracy_features == pytest.approx(
        lib.knn_accuracy(lib.nearest_neighbors(features, 5), out.labels, len(out.classes)), abs=0.02)
