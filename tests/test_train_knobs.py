"""The training knobs of SPEC §1.5 checked against PyTorch/scikit-learn: schedules with
warm-up, class weights, label smoothing, the lr each epoch reports, keep best|last and
early stopping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from cnntools.training import TrainConfig, build_scheduler, class_weight_tensor
from train_helpers import jsonl_records as _jsonl

FAST = ["--arch", "simple-cnn", "--image-size", "8", "--precision", "fp32", "--device", "cpu", "--batch-size", "64",
        "--augment", "none"]


def _lrs(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The learning rate of every update of a run (what the optimizer used for it)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.resolved_lr())
    sched = build_scheduler(opt, cfg, steps_per_epoch)
    out = []
    for _ in range(cfg.epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_schedule_equals_torch_steplr():
    cfg = TrainConfig(opt="sgd", lr=0.1, schedule="step", step_size=2, gamma=0.5, epochs=6)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    reference = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    expected = []
    for _ in range(6):
        expected += [opt.param_groups[0]["lr"]] * 3
        opt.step()
        reference.step()
    assert _lrs(cfg, 3) == pytest.approx(expected)


def test_cosine_with_warmup_rises_linearly_then_follows_the_cosine():
    cfg = TrainConfig(opt="sgd", lr=0.2, schedule="cosine", warmup=1, epochs=5)
    steps, warm = 4, 4
    lrs = _lrs(cfg, steps)
    total = cfg.epochs * steps
    assert lrs[:warm] == pytest.approx([0.2 * (i + 1) / warm for i in range(warm)])
    expected = [0.2 * 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))) for s in range(warm, total)]
    assert lrs[warm:] == pytest.approx(expected)
    assert max(lrs) == pytest.approx(0.2)


def test_onecycle_peaks_at_the_learning_rate_after_the_warmup():
    cfg = TrainConfig(opt="sgd", lr=0.3, schedule="onecycle", warmup=2, epochs=10)
    lrs = _lrs(cfg, 10)
    assert int(np.argmax(lrs)) == pytest.approx(20, abs=1) and max(lrs) == pytest.approx(0.3, rel=1e-3)
    assert lrs[0] < 0.3 / 10 and lrs[-1] < 1e-3


def test_auto_class_weights_are_sklearns_balanced():
    from types import SimpleNamespace

    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 5)

    class Data(SimpleNamespace):
        def __len__(self):
            return len(self.labels)

    Data = Data(classes=["a", "b", "c"], labels=labels)
    weights = class_weight_tensor("auto", Data, "cpu")
    expected = compute_class_weight("balanced", classes=np.arange(3), y=Data.labels.numpy())
    assert weights.tolist() == pytest.approx(expected.tolist())
    assert class_weight_tensor("1,2,0.5", Data, "cpu").tolist() == [1.0, 2.0, 0.5]
    assert class_weight_tensor("none", Data, "cpu") is None


def test_epoch_records_report_the_lr_they_trained_with(cli, tmp_path):
    result = cli("train", *FAST, "--opt", "sgd", "--lr", "0.04", "--schedule", "step", "--step-size", "1", "--gamma", "0.5",
                 "--epochs", "3", "--val-split", "0", "-o", tmp_path / "m.safetensors", "--format", "jsonl", "-q")
    assert result.exit_code == 0, result.stderr
    assert [r["lr"] for r in _jsonl(result.stdout)] == pytest.approx([0.04, 0.02, 0.01])


def test_class_weights_and_label_smoothing_reach_the_training_loss(cli, tmp_path, small_trainer):
    """The loss the trainer minimises is PyTorch's cross-entropy with the chosen weights and smoothing."""
    import torch.nn.functional as F

    weights = [1.0] * 9 + [5.0]
    trainer = small_trainer(tmp_path / "m.safetensors", epochs=1, augment="none",
                            class_weights=",".join(map(str, weights)), label_smoothing=0.2)
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(64, 10, generator=g), torch.randint(0, 10, (64,), generator=g)
    expected = F.cross_entropy(logits, y, weight=torch.tensor(weights), label_smoothing=0.2)
    assert float(trainer.criterion(logits, y)) == pytest.approx(float(expected), rel=1e-6)
    assert float(trainer.criterion(logits, y)) != pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-3)
    # Validation loss stays the plain cross-entropy, comparable between runs.
    assert float(trainer.eval_criterion(logits, y)) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    bad = cli("train", *FAST, "--class-weights", "1,2", "--epochs", "1", "-o", tmp_path / "x.safetensors")
    assert bad.exit_code == 2 and "10 classes" in bad.stderr and not (tmp_path / "x.safetensors").exists()


def test_early_stop_and_keep_best_or_last(cli, tmp_path):
    """A learning rate so small that nothing improves after epoch 1: patience 2 stops at epoch 3."""
    from cnntools.checkpoint import read_checkpoint

    out = tmp_path / "m.safetensors"
    result = cli("train", *FAST, "--opt", "sgd", "--lr", "1e-9", "--momentum", "0", "--epochs", "10", "--early-stop", "2",
                 "-o", out, "--format", "jsonl")
    assert result.exit_code == 0, result.stderr
    records = _jsonl(result.stdout)
    accs = [r["val_acc"] for r in records]
    best = int(np.argmax(accs))  # the first best epoch
    assert len(records) == best + 1 + 2 < 10
    meta = read_checkpoint(str(out))[1]
    assert meta.metrics["val_acc"] == pytest.approx(accs[best])

    last = tmp_path / "last.safetensors"
    result = cli("train", *FAST, "--epochs", "3", "--keep", "last", "-o", last, "--format", "jsonl", "-q")
    assert result.exit_code == 0, result.stderr
    records = _jsonl(result.stdout)
    assert read_checkpoint(str(last))[1].metrics["val_acc"] == pytest.approx(records[-1]["val_acc"])
