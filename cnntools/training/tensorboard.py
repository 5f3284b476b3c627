"""`train --tensorboard DIR`: the run as TensorBoard event files (torch's SummaryWriter).

Scalars per epoch (`epoch/train_loss`, `epoch/train_acc`, `epoch/val_loss`, `epoch/val_acc`,
`epoch/lr`, `epoch/images_per_s`, at step = the epoch number) come from the same records as
the epoch table; scalars per --print-every window (`step/train_loss`, `step/train_acc`,
`step/lr`, `step/images_per_s`, at step = the weight updates so far) from the trainer's step
records. The model graph is added when it traces; a grid of training images once.
`tensorboard` is an optional dependency (`pip install 'cnntools[tensorboard]'`).
"""

from __future__ import annotations

from cnntools.core.errors import CnnError
from cnntools.output.emitter import first_line, warn

EPOCH_SCALARS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr", "images_per_s")
STEP_SCALARS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s")
SAMPLE_IMAGES = 64


def open_writer(logdir: str):
    """A SummaryWriter on `logdir`, or one clear line saying how to install TensorBoard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise CnnError("--tensorboard needs the tensorboard package: pip install 'cnntools[tensorboard]' "
                       "(or pip install tensorboard)") from None
    try:
        return SummaryWriter(log_dir=logdir)
    except OSError as error:
        raise CnnError(f"{logdir}: cannot write TensorBoard logs there ({error.strerror or error})") from None


class TensorBoardLog:
    """Writes a training run's records to TensorBoard as they happen."""

    def __init__(self, logdir: str):
        self.writer = open_writer(logdir)

    def add_model(self, model, example) -> None:
        """The model graph, traced with `example` (a skipped graph is a warning, not an error)."""
        import warnings

        import torch

        try:
            was_training = model.training
            model.eval()
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice: add_graph still traces with it
                self.writer.add_graph(model, example)
            model.train(was_training)
        except Exception as error:  # noqa: BLE001 - tracing fails on data-dependent control flow
            warn(f"--tensorboard: the model graph does not trace ({first_line(error)}); scalars and images are logged")

    def add_samples(self, train_set) -> None:
        """The first training images as one grid (as stored, before augmentation)."""
        from torchvision.utils import make_grid

        images = train_set.images[:SAMPLE_IMAGES]
        if len(images):
            self.writer.add_image("train/samples", make_grid(images, nrow=8, padding=1), 0)

    def add_epoch(self, record: dict) -> None:
        for key in EPOCH_SCALARS:
            if record.get(key) is not None:
                self.writer.add_scalar(f"epoch/{key}", record[key], record["epoch"])
        self.writer.flush()

    def add_step(self, record: dict) -> None:
        for key in STEP_SCALARS:
            if record.get(key) is not None:
                self.writer.add_scalar(f"step/{key}", record[key], record["updates"])

    def close(self) -> None:
        self.writer.close()
