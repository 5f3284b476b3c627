"""Comparing runs: labels, step records (--print-every, --val-every), --test-each-epoch,
`cnntools curves` (merged records and the figure), smooth class weights."""

from __future__ import annotations

import math

import pytest
import torch

from cnntools.checkpoint import read_checkpoint
from cnntools.checkpoint.runs import derive_label, distinct_labels, model_label, run_from_history_text

FAST = ["--image-size", "16", "--precision", "fp32", "--device", "cpu", "--batch-size", "64", "--augment", "none"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two short runs that differ in their output activation, with step records and test metrics."""
    from typer.testing import CliRunner

    from cnntools.cli.app import app

    folder = tmp_path_factory.mktemp("runs")
    paths = {}
    for act in ("none", "relu"):
        path = folder / f"{act}.safetensors"
        args = ["train", "--arch", "lenet", "--output-activation", act, *FAST, "--epochs", "2", "--print-every", "5",
                "--val-every", "7", "--test-each-epoch", "-o", str(path), "--history", str(folder / f"{act}.jsonl"), "-q"]
        result = CliRunner().invoke(app, args, prog_name="cnntools")
        assert result.exit_code == 0, result.output
        paths[act] = path
    return folder, paths


def test_derived_labels_name_what_differs():
    assert derive_label({"arch": "lenet"}) == "lenet"
    assert derive_label({"arch": "lenet", "output_activation": "relu"}) == "lenet relu-out"
    assert derive_label({"arch": "lenet", "batchnorm": True, "augment": "flip,crop:4"}) == "lenet bn+aug=flip,crop:4"
    assert derive_label({"arch": "lenet", "opt": "sgd", "lr": 0.1}) == "lenet sgd+lr=0.1"
    assert derive_label({"arch": "simple-cnn", "augment": "none"}) == "simple-cnn no-aug"
    # Old checkpoints without a label get one from their options; an explicit label wins.
    assert model_label({"train_config": {"arch": "lenet", "batchnorm": True}}) == "lenet bn"
    assert model_label({"label": "mine", "train_config": {"arch": "lenet"}}) == "mine"
    assert distinct_labels(["a", "a", "b"], ["x.safetensors", "y.safetensors", "z"]) == [
        "a (x.safetensors)", "a (y.safetensors)", "b"]


def test_step_records_and_val_every_counts(two_runs):
    _, paths = two_runs
    meta = read_checkpoint(str(paths["relu"]))[1].to_json()
    assert meta["label"] == "lenet relu-out+bs=64+no-aug"
    per_epoch = meta["history"][0]["updates"]
    total = meta["history"][-1]["updates"]
    assert total == 2 * per_epoch
    val = [r for r in meta["steps"] if r["kind"] == "val"]
    steps = [r for r in meta["steps"] if r["kind"] == "step"]
    # --val-every 7: validation after updates 7, 14, ... counted across epoch boundaries.
    assert [r["updates"] for r in val] == list(range(7, total + 1, 7))
    assert all(0 <= r["val_acc"] <= 1 and r["val_loss"] > 0 for r in val)
    # --print-every 5: every 5th batch of each epoch.
    expected = [(e, b) for e in (1, 2) for b in range(5, per_epoch + 1, 5)]
    assert [(r["epoch"], r["batch"]) for r in steps] == expected
    assert all(math.isfinite(r["train_loss"]) for r in steps)
    # --test-each-epoch: measured on the test split, while the kept epoch follows validation.
    assert all(0 <= r["test_acc"] <= 1 for r in meta["history"])
    best = max(meta["history"], key=lambda r: r["val_acc"])
    assert meta["metrics"]["epoch"] == best["epoch"]


def test_test_metric_matches_eval_of_the_kept_weights(cli, tmp_path):
    out = tmp_path / "m.safetensors"
    result = cli("train", "--arch", "lenet", *FAST, "--epochs", "1", "--test-each-epoch", "-o", out, "-q",
                 "--format", "json")
    assert result.exit_code == 0, result.stderr
    record = result.json()["history"][0]
    evaluated = cli("eval", out, "--split", "test", "--device", "cpu", "--precision", "fp32", "--format", "json").json()
    assert evaluated["models"][0]["accuracy"] == pytest.approx(record["test_acc"], abs=1e-9)
    assert evaluated["models"][0]["loss"] == pytest.approx(record["test_loss"], rel=1e-4)


def test_curves_merges_the_records_of_every_run(cli, two_runs):
    folder, paths = two_runs
    result = cli("curves", paths["none"], paths["relu"], "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = result.json()
    assert doc["schema"] == "cnntools.curves/1"
    assert [r["label"] for r in doc["runs"]] == ["lenet bs=64+no-aug", "lenet relu-out+bs=64+no-aug"]
    for act, label in (("none", "lenet bs=64+no-aug"), ("relu", "lenet relu-out+bs=64+no-aug")):
        meta = read_checkpoint(str(paths[act]))[1].to_json()
        mine = [r for r in doc["records"] if r["run"] == label]
        epochs = [{k: v for k, v in r.items() if k not in ("run", "kind", "best")} for r in mine if r["kind"] == "epoch"]
        assert epochs == meta["history"]
        assert [r for r in mine if r["kind"] != "epoch"] == [{"run": label, **s} for s in meta["steps"]]
        assert [r["epoch"] for r in mine if r.get("best")] == [meta["metrics"]["epoch"]]
    # The history file holds the same records as the checkpoint, steps included.
    from_file = cli("curves", folder / "relu.jsonl", "--format", "json").json()
    meta = read_checkpoint(str(paths["relu"]))[1].to_json()
    assert [r for r in from_file["records"] if r["kind"] == "epoch"][0]["train_loss"] == meta["history"][0]["train_loss"]
    assert len([r for r in from_file["records"] if r["kind"] != "epoch"]) == len(meta["steps"])
    # CSV: epoch rows only unless --steps.
    csv_rows = cli("curves", paths["none"], paths["relu"], "--format", "csv").stdout.splitlines()
    assert csv_rows[0].startswith("run,kind,epoch") and len(csv_rows) == 1 + 4
    with_steps = cli("curves", paths["none"], "--format", "csv", "--steps").stdout.splitlines()
    assert len(with_steps) == 1 + 2 + len(read_checkpoint(str(paths["none"]))[1].steps)


def test_curves_reads_stdin_and_csv_history(cli, two_runs, tmp_path):
    folder, paths = two_runs
    piped = cli("curves", "-", "--format", "json", input=None)
    assert piped.exit_code == 1 and "stdin" in piped.stderr
    text = (folder / "none.jsonl").read_text()
    result = cli("curves", "-", "--label", "baseline", "--format", "json", input=text)
    assert result.exit_code == 0, result.stderr
    assert result.json()["runs"][0]["label"] == "baseline"
    history = tmp_path / "h.csv"
    history.write_text("epoch,train_loss,train_acc,val_loss,val_acc\n1,2.0,0.3,1.5,0.5\n2,1.0,0.6,1.2,0.7\n3,0.5,0.8,1.3,0.65\n")
    doc = cli("curves", history, "--format", "json").json()
    assert doc["runs"][0]["best_epoch"] == 2 and doc["runs"][0]["label"] == "h"
    bad = cli("curves", paths["none"], "--label", "a", "--label", "b")
    assert bad.exit_code == 2 and "--label" in bad.stderr  # bad usage


def test_curves_figure_names_every_run(two_runs, tmp_path, cli):
    from cnntools.output.plots import training_curves
    from cnntools.checkpoint.runs import run_from_checkpoint_meta

    _, paths = two_runs
    runs = [run_from_checkpoint_meta(read_checkpoint(str(p))[1].to_json(), str(p)) for p in paths.values()]
    fig = training_curves(runs, title="t")
    legend_texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert {"lenet bs=64+no-aug", "lenet relu-out+bs=64+no-aug", "train", "validation", "test", "kept epoch"} <= set(legend_texts)
    loss_ax = fig.axes[0]
    # One thick line per (run, train/val/test) and one thin line per (run, step kind).
    assert len(loss_ax.get_lines()) == 2 * (3 + 2 + 1)
    out = tmp_path / "c.png"
    assert cli("curves", *paths.values(), "-o", out, "--log-loss").exit_code == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_train_plot_title_carries_the_label(cli, tmp_path, monkeypatch):
    import cnntools.output.plots as plots

    titles = []
    original = plots.training_curves

    def spy(runs, title=None):
        titles.append(title)
        return original(runs, title)

    monkeypatch.setattr(plots, "training_curves", spy)
    result = cli("train", "--arch", "lenet", "--batchnorm", *FAST, "--epochs", "1", "--label", "my bn run",
                 "-o", tmp_path / "m.safetensors", "--plot", tmp_path / "p.png", "-q")
    assert result.exit_code == 0, result.stderr
    assert titles == ["my bn run on digits"]
    assert read_checkpoint(str(tmp_path / "m.safetensors"))[1].label == "my bn run"


def test_history_csv_sniffed_and_jsonl_errors():
    run = run_from_history_text("epoch,train_loss\n1,0.5\n", "h.csv")
    assert run.epochs == [{"epoch": 1, "train_loss": 0.5}]
    from cnntools.core.errors import CnnError

    with pytest.raises(CnnError, match="line 2"):
        run_from_history_text('{"epoch": 1}\n{oops\n', "h.jsonl")
    with pytest.raises(CnnError, match="epoch"):
        run_from_history_text("a,b\n1,2\n", "x.csv")


def test_smooth_class_weights_follow_the_power_law():
    from cnntools.training import class_weight_tensor
    from cnntools.core.errors import CnnError

    labels = torch.tensor([0] * 80 + [1] * 15 + [2] * 5)
    data = type("D", (), {"labels": labels, "classes": ["a", "b", "c"], "__len__": lambda self: 100})()
    counts = torch.tensor([80.0, 15.0, 5.0])
    for alpha in (0.0, 0.5, 1.0):
        weights = class_weight_tensor(f"smooth:{alpha}", data, "cpu")
        expected = counts.pow(-alpha)
        expected = expected * 3 / expected.sum()
        assert torch.allclose(weights, expected)
    # alpha 1 is sklearn's "balanced" up to a common factor.
    ratio = class_weight_tensor("smooth:1", data, "cpu") / class_weight_tensor("auto", data, "cpu")
    assert torch.allclose(ratio, ratio[0].expand(3))
    with pytest.raises(CnnError, match="smooth"):
        class_weight_tensor("smooth:x", data, "cpu")


def test_shown_labels_drop_what_all_runs_share():
    from cnntools.checkpoint.runs import shown_labels

    sweep = shown_labels(["lenet sgd+lr=0.3", "lenet sgd+lr=0.03", "lenet sgd+lr=0.003"])
    assert sweep.labels == ["lr=0.3", "lr=0.03", "lr=0.003"] and sweep.shared == "lenet, sgd"
    assert sweep.note() == "all runs: lenet, sgd"
    # The architecture stays where a label would be left empty; shared options go.
    outputs = shown_labels(["lenet bs=64+no-aug", "lenet relu-out+bs=64+no-aug", "lenet tanh-out+bs=64+no-aug"])
    assert outputs.labels == ["lenet", "lenet relu-out", "lenet tanh-out"] and outputs.shared == "bs=64, no-aug"
    # Nothing shared: unchanged. Identical labels: told apart by their sources.
    assert shown_labels(["baseline run", "mlp bs=64"]).labels == ["baseline run", "mlp bs=64"]
    same = shown_labels(["lenet", "lenet"], ["a.safetensors", "b.safetensors"])
    assert same.labels == ["lenet (a.safetensors)", "lenet (b.safetensors)"] and same.shared == ""
    # Very long labels are capped in the middle, keeping what tells them apart.
    long = shown_labels(["nets/a_rather_long_module_name.py:WideNetwork adamw", "nets/a_rather_long_module_name.py:DeepNetwork adamw"])
    assert long.shared == "adamw" and len(set(long.labels)) == 2
    for name, whole in zip(long.labels, ["nets/a_rather_long_module_name.py:WideNetwork", "nets/a_rather_long_module_name.py:DeepNetwork"]):
        head, tail = name.split("…")
        assert len(name) == 32 and whole.startswith(head) and whole.endswith(tail) and len(tail) >= 6


def test_figures_and_tables_name_runs_by_what_differs(two_runs, tmp_path, cli, monkeypatch):
    """curves and eval show `lenet` / `lenet relu-out` and say once that both are bs=64, no-aug;
    JSON and the predictions CSV keep the whole labels."""
    import cnntools.output.plots as plots

    _, paths = two_runs
    seen = {}
    originals = {name: getattr(plots, name) for name in ("training_curves", "logits_histogram", "logit_bars")}

    def spy(name):
        def call(*args, **kwargs):
            seen[name] = (args, kwargs)
            return originals[name](*args, **kwargs)
        return call

    for name in originals:
        monkeypatch.setattr(plots, name, spy(name))
    curves = cli("curves", *paths.values(), "-o", tmp_path / "c.png")
    assert curves.exit_code == 0, curves.stderr
    fig_args, fig_kwargs = seen["training_curves"]
    assert fig_kwargs["labels"] == ["lenet", "lenet relu-out"]
    assert fig_kwargs["title"] == "Training curves of 2 runs on digits\nall runs: bs=64, no-aug"
    title = curves.stdout.splitlines()[0]
    assert title == "Training records: lenet (kept epoch 2), lenet relu-out (kept epoch 2); all runs: bs=64, no-aug"
    rows = curves.stdout.splitlines()[2:]
    assert rows and not any("bs=64" in row for row in rows) and any(row.startswith("lenet relu-out ") for row in rows)
    doc = cli("curves", *paths.values(), "--format", "json").json()
    assert [r["label"] for r in doc["runs"]] == ["lenet bs=64+no-aug", "lenet relu-out+bs=64+no-aug"]

    result = cli("eval", *paths.values(), "-i", "0", "--logits-plot", tmp_path / "b.png", "--logits-hist", tmp_path / "h.png",
                 "-o", tmp_path / "p.csv", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("; all models: bs=64, no-aug") and lines[1].split() == ["metric", "lenet", "lenet", "relu-out"]
    hist_args, hist_kwargs = seen["logits_histogram"]
    assert list(hist_args[0]) == ["lenet", "lenet relu-out"] and hist_kwargs["title"].endswith("\nall models: bs=64, no-aug")
    bar_args, bar_kwargs = seen["logit_bars"]
    assert bar_args[1] == ["lenet", "lenet relu-out"] and bar_kwargs["shared"] == "all models: bs=64, no-aug"
    models = {row.split(",")[0] for row in (tmp_path / "p.csv").read_text().splitlines()[1:]}
    assert models == {"lenet bs=64+no-aug", "lenet relu-out+bs=64+no-aug"}
