"""CPU training runs in the memory format measured fastest (tests/benchmarks/bench_layout.py):
channels_last in fp32, in bf16 NCHW for small images and channels_last from 64 px; the MLP
always NCHW."""

from __future__ import annotations

import pytest
import torch

from cnntools.data import ImageSet
from cnntools.training import TrainConfig, Trainer


def _trainer(precision: str, arch: str = "simple-cnn", size: int = 16) -> Trainer:
    images = torch.randint(0, 256, (16, 3, size, size), dtype=torch.uint8)
    data = ImageSet(images=images, labels=torch.arange(16) % 4, classes=list("abcd"), spec="generated", split="train")
    cfg = TrainConfig(arch=arch, data="generated", batch_size=8, augment="none", val_split=0.0, epochs=1,
                      device="cpu", precision=precision)
    return Trainer(cfg, data, None, output=None)


@pytest.mark.parametrize("precision, size", [("fp32", 16), ("bf16", 16), ("bf16", 64)])
def test_cpu_training_runs_channels_last(precision, size):
    """Faster than NCHW at idle for every model, precision and size measured (bench_layout.py)."""
    trainer = _trainer(precision, size=size)
    assert trainer.channels_last is True
    layout = torch.channels_last
    conv = next(p for p in trainer.model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=layout)
    x, _ = next(iter(trainer.train_loader))
    assert x.is_contiguous(memory_format=layout)
    trainer.run()  # and it trains in it
    assert trainer.position.updates == 2


def test_the_mlp_stays_nchw():
    assert _trainer("fp32", "mlp").channels_last is False
