"""`cnntools train`: accuracy on digits, determinism, exact resume, Ctrl-C, NaN guard, outputs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from cnntools.checkpoint import model_state, read_checkpoint, resume_state
from train_helpers import checkpoint_weights as _weights, jsonl_records as _records, same_weights as _same_weights

# Small and fast: simple-cnn on 8x8 digits, fp32 so runs are bit-for-bit repeatable.
FAST = ["--arch", "simple-cnn", "--image-size", "8", "--precision", "fp32", "--device", "cpu", "--batch-size", "64",
        "--augment", "none"]


def _untimed(records):
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in records]


def test_default_run_reaches_97_percent_on_digits(cli, tmp_path):
    """The README's main job: `cnntools train` with no options, then `cnntools eval`."""
    model = tmp_path / "model.safetensors"
    result = cli("train", "-o", model, "-q", "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = result.json()
    assert doc["arch"] == {"arch": "simple-cnn", "in_channels": 1, "image_size": 16, "num_classes": 10}
    assert doc["updates"] == 20 * len(range(0, 1294, 32)) and doc["metrics"]["val_acc"] > 0.95
    evaluated = cli("eval", model, "--format", "json", "-q")
    assert evaluated.exit_code == 0, evaluated.stderr
    assert evaluated.json()["models"][0]["accuracy"] >= 0.97


def test_same_seed_twice_gives_identical_runs(cli, tmp_path):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.safetensors"
        result = cli("train", *FAST, "--epochs", "2", "--augment", "flip,crop:1", "--seed", "7", "-o", out, "-q", "--format", "jsonl")
        assert result.exit_code == 0, result.stderr
        runs.append(_untimed(_records(result.stdout)))
    assert runs[0] == runs[1] and len(runs[0]) == 2
    assert _same_weights(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    other = cli("train", *FAST, "--epochs", "1", "--seed", "8", "-o", tmp_path / "c.safetensors", "-q", "--format", "jsonl")
    assert _untimed(_records(other.stdout))[0] != runs[0][0]


@pytest.mark.parametrize("keep", ["last", "best"])
def test_two_epochs_equal_one_epoch_plus_resume(cli, tmp_path, keep):
    common = [*FAST, "--augment", "crop:1,flip", "--opt", "sgd", "--lr", "0.05", "--schedule", "step", "--step-size", "1",
              "--keep", keep, "-q", "--format", "jsonl"]
    straight = tmp_path / "straight.safetensors"
    full = cli("train", *common, "--epochs", "2", "-o", straight)
    assert full.exit_code == 0, full.stderr
    split = tmp_path / "split.safetensors"
    first = cli("train", *common, "--epochs", "1", "-o", split)
    assert first.exit_code == 0, first.stderr
    second = cli("train", "--resume", split, "--epochs", "2", "-q", "--format", "jsonl")
    assert second.exit_code == 0, second.stderr
    assert _same_weights(straight, split)
    assert _untimed(_records(second.stdout)) == _untimed(_records(full.stdout))[1:]
    _, meta = read_checkpoint(str(split))
    assert [r["epoch"] for r in meta.history] == [1, 2] and meta.metrics["updates"] == 2 * 21


def test_interrupted_run_resumes_exactly(tmp_path):
    """Stop in the middle of epoch 1 (what Ctrl-C does), resume, and match an uninterrupted run."""
    from cnntools.output import emitter as output
    from cnntools.checkpoint import read_checkpoint as read
    from cnntools.training import TrainConfig, Trainer, TrainingInterrupted, load_training_data

    output.configure(quiet=True)
    cfg = TrainConfig(image_size=8, epochs=2, precision="fp32", device="cpu", augment="crop:1,flip", schedule="cosine")
    train, val, _ = load_training_data(cfg)
    Trainer(cfg, train, val, output=str(tmp_path / "straight.safetensors")).run()

    cut = tmp_path / "cut.safetensors"
    trainer = Trainer(cfg, train, val, output=str(cut))

    def stop_at(epoch, batch, loss):
        if (epoch, batch) == (1, 7):
            trainer.request_stop()

    trainer.on_batch = stop_at
    with pytest.raises(TrainingInterrupted, match="epoch 1, batch 7"):
        trainer.run()
    tensors, meta = read(str(cut))
    state = resume_state(tensors, meta)
    assert (state["epoch"], state["batch"], state["updates"]) == (0, 7, 7)

    resumed = Trainer(cfg, train, val, output=str(cut))
    resumed.restore(state, meta.history, model_state(tensors))
    resumed.run()
    assert _same_weights(tmp_path / "straight.safetensors", cut)


def test_ctrl_c_saves_a_resumable_checkpoint_and_exits_130(tmp_path):
    out = tmp_path / "int.safetensors"
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnntools", "train", *FAST, "--epochs", "500", "-o", str(out), "--format", "jsonl"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )
    try:
        first = proc.stdout.readline()  # the first epoch is done
        assert json.loads(first)["epoch"] == 1
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "resumable checkpoint written" in stderr and "--resume" in stderr
    state = resume_state(*read_checkpoint(str(out)))
    assert state["epoch"] >= 1 and state["updates"] >= 21


def test_nan_loss_stops_with_one_line(cli, tmp_path):
    out = tmp_path / "nan.safetensors"
    result = cli("train", *FAST, "--opt", "sgd", "--lr", "1e12", "--epochs", "3", "-o", out, "-q")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.stderr
    assert re.match(r"Error: loss became (nan|inf|-inf) at epoch 1, batch \d+ ", lines[0]), lines[0]
    assert "no checkpoint was written" in lines[0] and not out.exists()


def test_nan_after_a_good_epoch_keeps_the_good_checkpoint(tmp_path, small_trainer):
    from cnntools.training import NonFiniteLoss

    out = tmp_path / "good.safetensors"
    trainer = small_trainer(out, epochs=3, keep="last")
    snapshot = {}

    def poison(epoch, batch, loss):
        if epoch == 1 and batch == trainer.steps_per_epoch:
            snapshot.update({k: v.clone() for k, v in trainer.model.state_dict().items()})
        if epoch == 2 and batch == 3:
            with torch.no_grad():
                trainer.model.classifier[-1].weight.fill_(float("nan"))

    trainer.on_batch = poison
    with pytest.raises(NonFiniteLoss, match=r"epoch 2, batch 4 .*keeps the weights of epoch 1"):
        trainer.run()
    weights = _weights(out)
    assert all(torch.equal(weights[k], snapshot[k]) for k in weights)


def test_jsonl_history_plot_and_print_every(cli, tmp_path):
    history = tmp_path / "h.csv"
    plot = tmp_path / "curves.png"
    result = cli("train", *FAST, "--epochs", "2", "--print-every", "10", "--history", history, "--plot", plot,
                 "-o", tmp_path / "m.safetensors", "--format", "jsonl")
    assert result.exit_code == 0, result.stderr
    records = _records(result.stdout)
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s", "updates"):
        assert key in records[0]
    assert [r["updates"] for r in records] == [21, 42]
    assert re.search(r"\[epoch 1, batch\s+10\] loss \d", result.stderr)
    assert "42 weight updates" in result.stderr
    rows = history.read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss") and len(rows) == 3
    assert plot.read_bytes()[:4] == b"\x89PNG"
    table = cli("train", *FAST, "--epochs", "1", "-o", tmp_path / "t.safetensors", "-q")
    header = table.stdout.splitlines()[0].split()
    assert header[:5] == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"] and "updates" in header


def test_lenet_relu_output_has_no_negative_logits(cli, tmp_path):
    out = tmp_path / "relu.safetensors"
    trained = cli("train", "--arch", "lenet", "--output-activation", "relu", "--image-size", "16", "--epochs", "1",
                  "--precision", "fp32", "-o", out, "-q")
    assert trained.exit_code == 0, trained.stderr
    stats = cli("eval", out, "--format", "json", "-q").json()["models"][0]["logits"]
    assert stats["min"] >= 0 and stats["share_negative"] == 0
    plain = tmp_path / "plain.safetensors"
    cli("train", "--arch", "lenet", "--image-size", "16", "--epochs", "1", "--precision", "fp32", "-o", plain, "-q")
    assert cli("eval", plain, "--format", "json", "-q").json()["models"][0]["logits"]["share_negative"] > 0.2


def test_resume_refuses_changed_options_and_finished_runs(cli, tmp_path):
    out = tmp_path / "r.safetensors"
    assert cli("train", *FAST, "--epochs", "1", "-o", out, "-q").exit_code == 0
    changed = cli("train", "--resume", out, "--lr", "0.5", "--epochs", "2")
    assert changed.exit_code == 1 and "--lr cannot change" in changed.stderr
    done = cli("train", "--resume", out)
    assert done.exit_code == 1 and "pass --epochs" in done.stderr
    bad = cli("train", *FAST, "-o", tmp_path / "model.pt")
    assert bad.exit_code == 1 and ".safetensors" in bad.stderr
