"""Batches of device tensors from an ImageSet: seeded shuffling, sharding, on-device augmentation."""

from __future__ import annotations

import math

import torch

from cnntools.data.imageset import ImageSet

# Datasets up to this size move to an accelerator once, so each batch is an index, not a copy.
_RESIDENT_BYTES = 2 * 1024**3


def fold_normalization(mean, std, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), 1×C×1×1 float32: x/255 then (x - mean)/std as one multiply-add, x·scale + shift."""
    std_t = torch.tensor(list(std), dtype=torch.float32)
    scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1)
    shift = (-torch.tensor(list(mean), dtype=torch.float32) / std_t).view(1, -1, 1, 1)
    return scale.to(device), shift.to(device)


def normalize_uint8(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 N×C×H×W → normalised float32 in two passes, written straight into the memory
    format the model runs in (no separate conversion and layout copies)."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device, memory_format=layout)
    torch.mul(images, scale, out=out)
    return out.add_(shift)


class BatchLoader:
    """Iterate (x, y) batches: x float32 normalised N×C×H×W on `device` (channels_last memory
    format when asked), y int64 on `device`.

    The order of an epoch is a permutation drawn from a torch.Generator seeded with
    `seed + epoch` (call `set_epoch`), the same on every rank; with `world_size` > 1 rank r
    takes every world_size-th index starting at r. For training (`pad=True`) the
    permutation is first padded by wrapping to a multiple of `world_size`, as
    DistributedSampler does, so every rank runs the same number of steps (DDP needs every
    rank in every gradient exchange). For evaluation use `pad=False`: the shards then differ
    in length by at most one and together hold every image exactly once, so summed metrics
    are those of one process. uint8→float, augmentation and normalisation run on the device
    on whole batches.
    """

    def __init__(
        self,
        data: ImageSet,
        batch_size: int = 128,
        shuffle: bool = True,
        seed: int = 0,
        device=None,
        augment=None,
        mean=None,
        std=None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool | None = None,
        pad: bool = True,
        channels_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.augment = augment
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.epoch = 0
        self.channels_last = channels_last  # batches come in the memory format the model runs in
        c = data.channels
        mean = [0.0] * c if mean is None else list(mean)
        std = [1.0] * c if std is None else list(std)
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean/std need {c} values (one per channel), got {len(mean)}/{len(std)}")
        self._scale, self._shift = fold_normalization(mean, std, self.device)
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1).to(self.device)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1).to(self.device)
        on_accelerator = self.device.type != "cpu"
        self._pin_batches = False
        if on_accelerator and data.images.numel() <= _RESIDENT_BYTES:
            self._images = data.images.to(self.device)
            self._labels = data.labels.to(self.device)
        else:
            pin = (on_accelerator and self.device.type == "cuda" if pin_memory is None else pin_memory) and torch.cuda.is_available()
            # A mapped store stays on disk: each batch is pinned as it is gathered, not the whole set.
            self._images = data.images.pin_memory() if pin and not data.mapped else data.images
            self._labels = data.labels
            self._pin_batches = pin
        self._aug_gen = None
        self._aug_exact, self._aug_float = augment.split_exact() if augment is not None else (None, None)
        if augment is not None:
            self._aug_gen = torch.Generator(device=self.device)
            self._seed_augment()

    def _seed_augment(self) -> None:
        if self._aug_gen is not None:
            # Different ranks and epochs draw different augmentations, reproducibly.
            self._aug_gen.manual_seed((self.seed * 1_000_003 + self.epoch) * 4099 + self.rank)

    def set_epoch(self, epoch: int) -> None:
        """Select epoch `epoch`'s permutation (and augmentation stream)."""
        self.epoch = int(epoch)
        self._seed_augment()

    def _per_rank(self) -> int:
        n = len(self.data)
        if self.world_size == 1:
            return n
        if not self.pad:
            return len(range(self.rank, n, self.world_size))
        if self.drop_last:
            return n // self.world_size
        return math.ceil(n / self.world_size)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in order."""
        n = len(self.data)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        if self.world_size > 1 and not self.pad:
            order = order[self.rank :: self.world_size]
        elif self.world_size > 1:
            total = self._per_rank() * self.world_size
            if total > n:
                order = torch.cat([order, order[: total - n]])
            order = order[:total][self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        per_rank = self._per_rank()
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def prepare(self, images: torch.Tensor, augment: bool = True) -> torch.Tensor:
        """uint8 batch → normalised float32 on the device (augmented when the loader augments)."""
        x = images.to(self.device, non_blocking=True)
        if self.augment is not None and augment:
            # Flips and crops only move pixels: run them on uint8 (a quarter of the memory
            # traffic), then convert and normalise in one multiply-add.
            if self._aug_exact is not None:
                x = self._aug_exact(x, self._aug_gen)
            if self._aug_float is not None:
                x = self._aug_float(x.float().div_(255.0), self._aug_gen).sub_(self._mean).div_(self._std)
                return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        return normalize_uint8(x, self._scale, self._shift, self.channels_last)

    def __iter__(self):
        order = self.indices()
        steps = len(self)
        if self._images.device != torch.device("cpu"):
            order = order.to(self._images.device)
        for step in range(steps):
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            images = self._images[idx]
            labels = self._labels[idx]
            if images.device.type == "cpu" and self._pin_batches:
                images = images.pin_memory()
            yield self.prepare(images), labels.to(self.device, non_blocking=True)
