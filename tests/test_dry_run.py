"""`train --dry-run`: the resolved run, its memory and an estimate of its time; nothing written."""

from __future__ import annotations

import math
import os

import pytest


def test_dry_run_reports_the_run_and_writes_nothing(cli, tmp_path, monkeypatch, one_torch_thread):
    from cnntools.models import count_parameters, create_model

    monkeypatch.chdir(tmp_path)
    result = cli("train", "--dry-run", "--image-size", "8", "--batch-size", "64", "--epochs", "3", "--device", "cpu",
                 "--opt", "adam", "--history", "h.csv", "--plot", "c.png", "-o", "m.safetensors", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert os.listdir(tmp_path) == []  # no checkpoint, history, plot or probe left behind
    doc = result.json()
    assert doc["schema"] == "cnntools.train.dry-run/1"
    assert doc["parameters"] == count_parameters(create_model("simple-cnn", 1, 8, 10)) == 128_266
    assert doc["train_images"] == 1295 and doc["val_images"] == 143  # digits' train split less its 10% carve-out
    assert doc["steps_per_epoch"] == math.ceil(1295 / 64) and doc["total_steps"] == 3 * doc["steps_per_epoch"]
    mem = doc["memory_bytes"]
    assert mem["parameters"] == mem["gradients"] == 128_266 * 4 and mem["optimizer_state"] == 2 * mem["parameters"]  # Adam
    assert mem["dataset"] == (1295 + 143) * 8 * 8 and mem["activations"] > 0
    assert mem["total"] == sum(v for k, v in mem.items() if k != "total")
    assert doc["seconds_per_step"] > 0 and doc["timed_steps"] >= 1
    epoch = doc["steps_per_epoch"] * doc["seconds_per_step"] + doc["val_batches_per_epoch"] * doc["seconds_per_val_batch"]
    assert doc["estimated_epoch_seconds"] == pytest.approx(epoch) and doc["estimated_seconds"] == pytest.approx(doc["setup_seconds"] + 3 * epoch)


def test_dry_run_table_and_sgd_without_momentum(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("train", "--dry-run", "--image-size", "8", "--opt", "sgd", "--momentum", "0", "--device", "cpu",
                 "--val-split", "0", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["memory_bytes"]["optimizer_state"] == 0 and result.json()["val_batches_per_epoch"] == 0
    # --val-every 10 on 41 updates: 4 more validation passes of 1 batch; --test-each-epoch: the 359 test images, 2 batches
    evals = cli("train", "--dry-run", "--image-size", "8", "--device", "cpu", "--val-every", "10", "--test-each-epoch",
                "--format", "json")
    assert evals.exit_code == 0, evals.stderr
    assert evals.json()["val_batches_per_epoch"] == 1 + 4 + 2
    table = cli("train", "--dry-run", "--image-size", "8", "--device", "cpu", "--epochs", "2")
    assert table.exit_code == 0 and "estimated run" in table.stdout and "2 epochs" in table.stdout
    assert os.listdir(tmp_path) == []


class FakeClock:
    """A clock that only the fake work moves: a step on k images costs `fixed + per_image * k` s."""

    def __init__(self, fixed: float, per_image: float, first: float = 0.0):
        self.now, self.fixed, self.per_image, self.first, self.calls = 0.0, fixed, per_image, first, []

    def __call__(self) -> float:
        return self.now

    def run(self, k: int) -> None:
        self.now += self.fixed + self.per_image * k + (self.first if not self.calls else 0.0)
        self.calls.append(k)


@pytest.mark.parametrize("fixed, per_image", [(0.01, 0.001), (0.5, 0.25), (3.0, 2.0), (40.0, 1.0)])
def test_timing_keeps_to_its_budget_and_extrapolates_slow_steps(monkeypatch, fixed, per_image):
    from cnntools.training import dry_run

    fake = FakeClock(fixed, per_image, first=5 * fixed)  # the first call pays for set-up
    monkeypatch.setattr(dry_run, "clock", fake)
    timed = dry_run.time_within(fake.run, 64, budget=15.0, device=torch_cpu(), steps=5)
    step = fixed + per_image * 64
    # Within the budget, except where the unavoidable first two calls alone exceed it.
    first_two = 2 * (fixed + per_image * 2) + 5 * fixed
    assert fake.now <= max(15.0, first_two) + 1e-9
    assert timed["min"] <= timed["mean"] <= timed["max"]
    k = timed["images"]
    if len(set(fake.calls[1:])) >= 2 or k == 64:  # two sizes timed: the line through them is exact
        assert timed["mean"] == pytest.approx(step)
    else:  # one size: in proportion to the images, an upper bound
        assert timed["mean"] == pytest.approx((fixed + per_image * k) * 64 / k) and timed["mean"] >= step
    if 6 * step + first_two <= 15.0:  # fast: full batches, the warm-up left out
        assert timed["images"] == 64 and timed["timed"] >= 2
    else:
        assert timed["images"] < 64
        assert fake.calls[0] == 2  # it started small


def torch_cpu():
    import torch

    return torch.device("cpu")


def test_slow_run_names_cheaper_runs_with_their_estimates(cli, tmp_path, monkeypatch, one_torch_thread):
    from cnntools.training import dry_run

    fake = FakeClock(fixed=0.1, per_image=0.3)  # 9.7 s a step of 32: 41 steps x 20 epochs is 2.2 hours
    monkeypatch.setattr(dry_run, "clock", fake)
    monkeypatch.setattr(dry_run, "_step", lambda trainer, x, y: fake.run(len(y)))
    monkeypatch.chdir(tmp_path)
    result = cli("train", "--dry-run", "--arch", "resnet18", "--image-size", "32", "--val-split", "0", "--device", "cpu",
                 "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = result.json()
    assert doc["timing_seconds"] <= dry_run.TIME_BUDGET
    assert doc["timed_images_per_step"] < 32 and 9.7 - 1e-6 <= doc["seconds_per_step"] < 9.7 + 1.0  # plus the real seconds of making a batch
    low, high = doc["seconds_per_step_range"]
    assert low <= doc["seconds_per_step"] <= high
    assert doc["estimated_seconds"] > 3600
    runs = {run["change"]: run["estimated_seconds"] for run in doc["cheaper_runs"]}
    assert {"--image-size 16", "--arch simple-cnn", "--arch compact-cnn"} <= set(runs)
    assert all(seconds < doc["estimated_seconds"] for seconds in runs.values())
    fitting = [c for c in runs if c.startswith("--epochs")]
    assert fitting and runs[fitting[0]] <= 3600 < runs[fitting[0]] + doc["estimated_epoch_seconds"]
    # The architectures' estimates scale with their multiply-adds, measured against the real models.
    from cnntools.models import create_model

    work = {a: dry_run.multiply_adds(create_model(a, 1, 32, 10), (1, 32, 32)) for a in ("resnet18", "simple-cnn")}
    epoch = doc["estimated_epoch_seconds"]
    assert runs["--arch simple-cnn"] == pytest.approx(doc["setup_seconds"] + 20 * epoch * work["simple-cnn"] / work["resnet18"])
    table = cli("train", "--dry-run", "--arch", "resnet18", "--image-size", "32", "--val-split", "0", "--device", "cpu")
    assert table.exit_code == 0 and "cheaper run" in table.stdout and "--arch simple-cnn" in table.stdout
    assert "current load" in table.stdout


def test_multiply_adds_of_a_known_network():
    from torch import nn

    from cnntools.training.dry_run import multiply_adds

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2),
                        nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    assert multiply_adds(net, (3, 8, 8)) == 8 * 8 * 8 * 3 * 9 + 8 * 4 * 4 * 4 * 9 + 10 * 128
