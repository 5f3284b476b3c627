"""`cnntools lr-find`: Smith's range test; its suggestions against a small learning-rate sweep on digits."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from cnntools.training import lr_find

FAST = ["--arch", "simple-cnn", "--image-size", "8", "--batch-size", "64", "--augment", "none", "--device", "cpu",
        "--precision", "fp32", "--opt", "adam"]


def test_schedule_and_suggestions_on_known_curves():
    assert lr_find.lr_at(0, 101, 1e-7, 10) == pytest.approx(1e-7)
    assert lr_find.lr_at(100, 101, 1e-7, 10) == pytest.approx(10)
    assert lr_find.lr_at(50, 101, 1e-7, 10) == pytest.approx(10 ** -3)  # geometric midpoint
    lrs = torch.logspace(-6, 0, 61, dtype=torch.float64)
    # loss = -tanh(log10(lr) + 3): falls fastest (per log lr) at lr = 1e-3 exactly
    losses = -torch.tanh(lrs.log10() + 3)
    assert lr_find.steepest(lrs, losses) == pytest.approx(1e-3, rel=0.21)  # within one grid step (x1.26)
    # a valley from index 10 to 40 with a noisy plateau before it: valley lands inside it
    bumpy = torch.cat([torch.full((10,), 2.0) + 0.01 * torch.tensor([(-1) ** i for i in range(10)]),
                       torch.linspace(2.0, 0.5, 31), torch.linspace(0.6, 3.0, 20)])
    lr = lr_find.valley(lrs, bumpy.double())
    index = int((lrs - lr).abs().argmin())
    assert 10 < index < 40


@pytest.mark.slow
def test_suggestions_land_within_10x_of_the_best_rate_of_a_sweep(cli, tmp_path, one_torch_thread):
    from cnntools.training import TrainConfig, Trainer, load_training_data

    before = set(tmp_path.iterdir())
    plot, sweep = tmp_path / "lr.png", tmp_path / "sweep.csv"
    result = cli("lr-find", *FAST, "--steps", "100", "-o", plot, "--sweep", sweep, "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = result.json()
    assert doc["schema"] == "cnntools.lr-find/1"
    suggestions = doc["suggestions"]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader(sweep.open()))
    assert len(rows) == doc["steps_run"] == len(doc["sweep"]) and float(rows[0]["lr"]) == pytest.approx(1e-7)
    assert set(tmp_path.iterdir()) - before == {plot, sweep}  # no checkpoint, nothing else

    # The rate that trains best in two epochs, from a small sweep of train itself.
    base = dict(arch="simple-cnn", image_size=8, batch_size=64, augment="none", device="cpu", precision="fp32", epochs=2)
    train, val, _ = load_training_data(TrainConfig(**base))
    accuracy = {}
    for lr in (3e-4, 1e-3, 3e-3, 1e-2, 3e-2):
        trainer = Trainer(TrainConfig(**base, lr=lr), train, val, output=None)
        accuracy[lr] = trainer.run()[-1]["val_acc"]
    best = max(accuracy, key=accuracy.get)
    assert 1e-3 <= best <= 1e-2, accuracy  # the sweep itself is sane: the ends train worse
    for name, lr in suggestions.items():
        assert abs(math.log10(lr / best)) <= 1, (name, lr, best, accuracy)


def test_divergence_stops_the_sweep_and_bad_options_are_refused(cli, tmp_path):
    result = cli("lr-find", *FAST, "--start-lr", "1e-3", "--end-lr", "1e4", "--steps", "60", "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = result.json()
    assert doc["stopped"] == "diverged" and doc["steps_run"] < 60
    smoothed = [r["smoothed_loss"] for r in doc["sweep"]]
    assert smoothed[-1] > 4 * min(smoothed[:-1])
    assert cli("lr-find", "--start-lr", "1", "--end-lr", "0.1").exit_code == 1
    for flag, bad in (("--steps", "5"), ("--diverge", "1"), ("--start-lr", "nan"), ("--end-lr", "0")):
        refused = cli("lr-find", flag, bad)
        assert refused.exit_code == 2 and flag in refused.stderr, (flag, refused.stderr)
    assert "figures" in cli("lr-find", "-o", tmp_path / "x.txt").stderr


def test_config_file_is_shared_with_train(cli, tmp_path):
    """train --print-config's TOML drives lr-find (train-only keys skipped), the sweep equals
    the one the same flags give, and lr-find --print-config round-trips."""
    import tomllib

    run_toml = tmp_path / "run.toml"
    printed = cli("train", *FAST, "--seed", "4", "--weight-decay", "0.01", "--epochs", "3", "--schedule", "cosine",
                  "--print-config")
    assert printed.exit_code == 0, printed.stderr
    run_toml.write_text(printed.stdout)
    sweep = ["--steps", "12", "--format", "json", "-q"]
    from_file = cli("lr-find", "--config", run_toml, *sweep)
    direct = cli("lr-find", *FAST, "--seed", "4", "--weight-decay", "0.01", *sweep)
    assert from_file.exit_code == 0 and direct.exit_code == 0, from_file.stderr
    assert from_file.json()["sweep"] == direct.json()["sweep"]
    mine = cli("lr-find", "--config", run_toml, "--steps", "12", "--print-config")
    doc = tomllib.loads(mine.stdout)
    assert doc["seed"] == 4 and doc["weight-decay"] == 0.01 and doc["steps"] == 12 and doc["image-size"] == 8
    assert "epochs" not in doc and "schedule" not in doc and "lr-find options" in mine.stdout
    (tmp_path / "sweep.toml").write_text(mine.stdout)
    again = cli("lr-find", "--config", tmp_path / "sweep.toml", "--print-config")
    assert again.stdout == mine.stdout
    (tmp_path / "typo.toml").write_text("wieght-decay = 0.1\n")
    bad = cli("lr-find", "--config", tmp_path / "typo.toml")
    assert bad.exit_code == 2 and "unknown config key 'wieght-decay'" in bad.stderr
