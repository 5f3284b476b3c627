"""`train --tensorboard DIR`: event files read back equal the run's history and step records."""

from __future__ import annotations

import re
import sys

import pytest

from train_helpers import jsonl_records

FAST = ["--arch", "simple-cnn", "--image-size", "8", "--precision", "fp32", "--device", "cpu", "--batch-size", "64",
        "--augment", "none"]


def _events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_tensorboard_scalars_equal_the_history(cli, tmp_path, one_torch_thread):
    logdir = tmp_path / "tb"
    result = cli("train", *FAST, "--epochs", "2", "--print-every", "5", "--tensorboard", logdir,
                 "-o", tmp_path / "m.safetensors", "--format", "jsonl")
    assert result.exit_code == 0, result.stderr
    records = jsonl_records(result.stdout)
    acc = _events(logdir)
    tags = acc.Tags()
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s"):
        events = acc.Scalars(f"epoch/{key}")
        assert [e.step for e in events] == [1, 2]
        assert [e.value for e in events] == pytest.approx([r[key] for r in records], rel=1e-6)  # stored as float32
    # --print-every 5 on 21 updates per epoch: windows end at batches 5, 10, 15, 20 of each epoch
    losses = acc.Scalars("step/train_loss")
    assert [e.step for e in losses] == [5, 10, 15, 20, 26, 31, 36, 41]
    printed = [float(v) for v in re.findall(r"\] loss (\d+\.\d+)", result.stderr)]
    assert [round(e.value, 3) for e in losses] == pytest.approx(printed, abs=1e-3)
    for key in ("train_acc", "lr", "images_per_s"):
        assert len(acc.Scalars(f"step/{key}")) == 8
    assert all(0 <= e.value <= 1 for e in acc.Scalars("step/train_acc"))
    assert "train/samples" in tags["images"] and tags["graph"]


def test_missing_tensorboard_is_one_clear_line(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    result = cli("train", *FAST, "--epochs", "1", "--tensorboard", tmp_path / "tb", "-o", tmp_path / "m.safetensors")
    assert result.exit_code == 1 and "pip install 'cnntools[tensorboard]'" in result.stderr
