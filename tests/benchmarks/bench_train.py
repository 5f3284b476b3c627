"""Training data path: cnntools' Trainer against the ready-tensor limit and torchvision's PIL pipeline.

Issue 7, target 2. LeNet on 32x32x3 images with random crop (padding 4) + horizontal flip,
SGD (momentum 0.9), measured in images per second through forward, backward and optimizer
step. Three cases, interleaved, median of --repeats rounds:

- `cnntools`: `cnntools.training.Trainer` (the code `cnntools train` runs) on an in-memory
  uint8 ImageSet with `--augment flip,crop:4`, one epoch per round (`Trainer.run`).
- `limit`: the same model, optimizer, precision and memory format stepping over ready-made
  normalised float batches with no augmentation (the most the data path could give).
- `torchvision`: the CIFAR-10 tutorial pipeline: a Dataset of HxWxC uint8 arrays turned into
  PIL images (as torchvision.datasets.CIFAR10 does) → RandomCrop(32, padding=4) →
  RandomHorizontalFlip → ToTensor → Normalize, in a DataLoader with 2 workers and shuffling,
  feeding the same model/optimizer/precision step as `limit`.

Targets: cnntools/limit ≥ 0.85 at batch 128; cnntools/torchvision ≥ 3 at batch 128 and
≥ 10 at batch 4 (the tutorial's batch size). Prints one JSON line per batch size.

    python tests/benchmarks/bench_train.py [--batch-sizes 128,4] [--repeats 5] [--precision auto] [--quick]
"""

from __future__ import annotations

import argparse

from common import add_threads_option, emit, interleaved, machine, median, ratio_record, set_threads

TARGETS = {"limit": 0.85, "torchvision": {128: 3.0, 4: 10.0}}


def make_data(n: int, seed: int = 0):
    import torch

    from cnntools.data import ImageSet

    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    return ImageSet(images=images, labels=labels, classes=[str(i) for i in range(10)], spec="generated", split="train")


def config(batch_size: int, precision: str, device: str):
    from cnntools.training import TrainConfig

    return TrainConfig(arch="lenet", data="generated", batch_size=batch_size, opt="sgd", lr=0.01, momentum=0.9,
                       augment="flip,crop:4", normalize="dataset", keep="last", val_split=0.0, epochs=1,
                       device=device, precision=precision)


def cnntools_case(train_set, cfg):
    from cnntools.training import Trainer

    trainer = Trainer(cfg, train_set, None, output=None)

    def one_epoch() -> int:
        trainer.cfg.epochs = trainer.position.epoch + 1
        trainer.run()
        return len(train_set)

    return trainer, one_epoch


def step_fn(trainer):
    """The bare training step with the Trainer's own model type, optimizer, precision and layout."""
    import torch

    from cnntools.core import runtime
    from cnntools.training import build_optimizer
    from cnntools.models import create_model

    cfg, device = trainer.cfg, trainer.device
    model = create_model(cfg.arch, 3, 32, 10).to(device)
    if trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = build_optimizer(model, cfg)
    criterion = torch.nn.CrossEntropyLoss()

    def step(x, y):
        if trainer.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with runtime.autocast(device, trainer.precision):
            loss = criterion(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def limit_case(trainer, train_set):
    import torch

    device, bs = trainer.device, trainer.cfg.batch_size
    mean = torch.tensor(trainer.mean).view(1, 3, 1, 1)
    std = torch.tensor(trainer.std).view(1, 3, 1, 1)
    x_all = ((train_set.images.float() / 255 - mean) / std).to(device)
    y_all = train_set.labels.to(device)
    batches = [(x_all[i : i + bs], y_all[i : i + bs]) for i in range(0, len(train_set), bs)]
    step = step_fn(trainer)

    def one_epoch() -> int:
        for x, y in batches:
            step(x, y)
        return len(train_set)

    return one_epoch


class PILImages:
    """What torchvision.datasets.CIFAR10.__getitem__ does: HxWxC uint8 array → PIL image → transform."""

    def __init__(self, hwc, labels, transform):
        self.data, self.targets, self.transform = hwc, labels, transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), int(self.targets[index])


def torchvision_case(trainer, train_set, workers: int):
    import torch
    import torchvision.transforms as T

    device, bs = trainer.device, trainer.cfg.batch_size
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(trainer.mean, trainer.std)])
    dataset = PILImages(train_set.images.permute(0, 2, 3, 1).contiguous().numpy(), train_set.labels.numpy(), transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=bs, shuffle=True, num_workers=workers)
    step = step_fn(trainer)

    def one_epoch() -> int:
        for x, y in loader:
            step(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
        return len(train_set)

    return one_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="128,4")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=0, help="images per round (default: 3072 at batch 128, 600 at batch 4)")
    parser.add_argument("--precision", default="auto", help="the Trainer's --precision; the other cases use what it resolves to")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2)
    add_threads_option(parser)
    parser.add_argument("--quick", action="store_true", help="3 rounds of half the images")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 3

    import torch

    set_threads(args.threads)

    torch.manual_seed(0)
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        n = args.images or (3072 if bs >= 32 else 150 * bs)
        if args.quick:
            n //= 2
        n -= n % bs
        train_set = make_data(n)
        trainer, cnntools_epoch = cnntools_case(train_set, config(bs, args.precision, args.device))
        cases = {
            "cnntools": cnntools_epoch,
            "limit": limit_case(trainer, train_set),
            "torchvision": torchvision_case(trainer, train_set, args.workers),
        }
        rates = interleaved(cases, args.repeats, device=trainer.device)
        extra = {"batch_size": bs, "images_per_round": n, "precision": trainer.precision,
                 "channels_last": trainer.channels_last, "device": str(trainer.device), **machine()}
        emit(ratio_record("train_data_path", rates, "cnntools", "limit", TARGETS["limit"], **extra))
        target = TARGETS["torchvision"].get(bs, TARGETS["torchvision"][4 if bs < 32 else 128])
        # No data path can beat the limit: limit/torchvision is the most this ratio can be here.
        bound = round(median(rates["limit"]) / median(rates["torchvision"]), 3)
        emit(ratio_record("train_data_path", rates, "cnntools", "torchvision", target, workers=args.workers,
                          bound_limit_over_torchvision=bound, **extra))


if __name__ == "__main__":
    main()
