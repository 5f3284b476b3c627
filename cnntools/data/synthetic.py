"""Datasets that need no files: scikit-learn's 8×8 digits and synthetic images.

The digits ship inside the package (digits.npz, 45 KB: scikit-learn's `load_digits()` images as
uint8 counts 0..16 and their labels, written once with
`np.savez_compressed(path, counts=b.images.astype(np.uint8), labels=b.target.astype(np.uint8))`),
so reading them costs no scikit-learn/scipy import (1-4 s); tests/test_data_sources.py checks
them bit for bit against `load_digits()`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from cnntools.data.imageset import ImageSet, stratified_split
from cnntools.core.errors import CnnError

# The digits train/test split never changes with --seed: a test set must stay the test set.
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
# Pixels per chunk when generating fake images (16 MB of float32 temporaries).
_CHUNK_PIXELS = 1 << 22


DIGITS_FILE = Path(__file__).with_name("digits.npz")


@functools.lru_cache(maxsize=1)
def _digits_arrays():
    with np.load(DIGITS_FILE) as stored:
        counts, labels = stored["counts"], stored["labels"].astype(np.int64)
    # Pixel values are counts 0..16; scale to 0..255 with round-half-up in integers.
    values = counts.astype(np.int64)
    images = ((values * 255 + 8) // 16).astype(np.uint8)[:, None, :, :]
    train_idx, test_idx = stratified_split(labels, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    return images, labels, train_idx, test_idx


class DigitsSource:
    """scikit-learn's 1,797 handwritten digits, 1×8×8, split 1,438 train / 359 test (stratified, fixed)."""

    name = "digits"

    def __init__(self, options: dict, **_ignored) -> None:
        if options:
            raise CnnError(f"digits takes no options (got {','.join(options)})")

    def splits(self) -> list[str]:
        return ["train", "test"]

    def load(self, split: str) -> ImageSet:
        images, labels, train_idx, test_idx = _digits_arrays()
        idx = train_idx if split == "train" else test_idx
        return ImageSet(
            images=torch.from_numpy(images[idx].copy()),
            labels=torch.from_numpy(labels[idx].copy()),
            classes=[str(d) for d in range(10)],
            spec="digits",
            split=split,
        )


def _int_option(options: dict, key: str, default: int, low: int = 1) -> int:
    value = options.pop(key, default)
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise CnnError(f"fake dataset option {key}={value!r}: expected an integer") from None
    if value < low:
        raise CnnError(f"fake dataset option {key}={value}: must be at least {low}")
    return value


class FakeSource:
    """Random images for smoke tests: each class has its own colour pattern plus noise.

    Spec `fake[:N][,size=S,channels=C,classes=K]`: N training images (default 1,000),
    N/5 test images, C×S×S (default 3×32×32), K classes (default 10). The pattern makes
    the task learnable, so a short training run shows the loss going down.
    """

    name = "fake"
    _seeds = {"train": 1, "test": 2}

    def __init__(self, options: dict, **_ignored) -> None:
        options = dict(options)
        self.n = _int_option(options, "n", 1000)
        self.size = _int_option(options, "size", 32, low=4)
        self.channels = _int_option(options, "channels", 3)
        self.num_classes = _int_option(options, "classes", 10, low=2)
        if self.channels not in (1, 3):
            raise CnnError("fake dataset option channels: use 1 or 3")
        if options:
            raise CnnError(f"unknown fake dataset option(s): {', '.join(options)} (use n, size, channels, classes)")

    def splits(self) -> list[str]:
        return ["train", "test"]

    def _count(self, split: str) -> int:
        return self.n if split == "train" else max(1, self.n // 5)

    def load(self, split: str) -> ImageSet:
        n, c, s, k = self._count(split), self.channels, self.size, self.num_classes
        # Class templates depend only on the spec, so train and test share them.
        templates_gen = torch.Generator().manual_seed(1234)
        coarse = torch.rand(k, c, 4, 4, generator=templates_gen)
        templates = torch.nn.functional.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)
        gen = torch.Generator().manual_seed(self._seeds[split] * 7919 + n)
        labels = torch.arange(n) % k
        labels = labels[torch.randperm(n, generator=gen)]
        # Chunk by chunk, so a CIFAR-sized fake set never holds float copies of itself
        # (the chunks draw the same numbers as one call would).
        images = torch.empty(n, c, s, s, dtype=torch.uint8)
        step = max(1, _CHUNK_PIXELS // (c * s * s))
        for start in range(0, n, step):
            stop = min(n, start + step)
            noise = torch.rand(stop - start, c, s, s, generator=gen)
            chunk = (0.6 * templates[labels[start:stop]] + 0.4 * noise) * 255
            images[start:stop] = chunk.round_().clamp_(0, 255).to(torch.uint8)
        return ImageSet(
            images=images,
            labels=labels.long(),
            classes=[f"class{i}" for i in range(k)],
            spec="fake",
            split=split,
        )


class FakePatchSource(FakeSource):
    """Dark noise with one bright square; the label is the quadrant that holds it.

    Spec `fake-patch[:N][,size=S,channels=C]` (default 1,000 train images of 3×32×32,
    4 classes). `meta["patch_boxes"]` holds each square's (top, left, bottom, right) in
    pixels (bottom/right exclusive), so saliency maps can be checked against where the
    evidence really is. A small CNN learns it to ~100% in a few epochs.
    """

    name = "fake-patch"
    CLASSES = ["top-left", "top-right", "bottom-left", "bottom-right"]

    def __init__(self, options: dict, **_ignored) -> None:
        options = dict(options)
        if "classes" in options:
            raise CnnError("fake-patch always has 4 classes (the quadrants)")
        options["classes"] = 4
        super().__init__(options)

    def load(self, split: str) -> ImageSet:
        n, c, s = self._count(split), self.channels, self.size
        gen = torch.Generator().manual_seed(self._seeds[split] * 104729 + n)
        labels = torch.randint(0, 4, (n,), generator=gen)
        patch = max(2, s // 5)
        half = s // 2
        # Position of the square inside its quadrant, fully contained.
        room = max(1, half - patch + 1)
        dy = torch.randint(0, room, (n,), generator=gen)
        dx = torch.randint(0, room, (n,), generator=gen)
        top = dy + (labels // 2) * half
        left = dx + (labels % 2) * half
        images = torch.randint(0, 90, (n, c, s, s), generator=gen, dtype=torch.int64)
        rows = torch.arange(s)
        inside_y = (rows[None, :] >= top[:, None]) & (rows[None, :] < (top + patch)[:, None])
        inside_x = (rows[None, :] >= left[:, None]) & (rows[None, :] < (left + patch)[:, None])
        mask = inside_y[:, :, None] & inside_x[:, None, :]
        images = torch.where(mask[:, None], torch.full_like(images, 255), images)
        boxes = torch.stack([top, left, top + patch, left + patch], dim=1)
        return ImageSet(
            images=images.to(torch.uint8),
            labels=labels.long(),
            classes=list(self.CLASSES),
            spec="fake-patch",
            split=split,
            meta={"patch_boxes": boxes},
        )
