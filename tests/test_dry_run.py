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
