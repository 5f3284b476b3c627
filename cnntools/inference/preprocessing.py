"""How uint8 images become a model's input: the `Preprocessing` value object.

A loaded model carries one (built from its checkpoint's metadata by `cnntools.checkpoint`),
the data registry fits a dataset's images with it (`cnntools.data.load_for_model`), and
`cnntools.inference.batches` applies it batch by batch on the device. It imports nothing of
cnntools at module level, so each of those layers can hold one without importing another;
the uint8 image operations it uses (`cnntools.data.imageset`, `cnntools.data.loader`) are
imported when images are fitted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Preprocessing:
    """How uint8 N×C×H×W images become a model's input.

    Channels are converted to `channels` (RGBA drops alpha, grey and RGB into each other), the
    image is resized to `size`×`size` or, with `resize` set (torchvision's and timm's ImageNet
    rule), its shorter side to `resize` with `interpolation` and then centre-cropped to `size`;
    then scaled to [0, 1] and normalised with `mean`/`std` per channel.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int
    channels: int
    resize: int | None = None
    interpolation: str = "bilinear"

    @classmethod
    def plain(cls, channels: int, size: int, mean=None, std=None) -> Preprocessing:
        """`mean`/`std` normalisation (default none: [0, 1] pixels) at `size`×`size`."""
        return cls(tuple(mean) if mean is not None else (0.0,) * channels,
                   tuple(std) if std is not None else (1.0,) * channels, size, channels)

    def for_fitted(self) -> Preprocessing:
        """The same normalisation for images `fit` has fitted already: they are not fitted
        again (torchvision's resize + centre crop is not idempotent)."""
        return replace(self, resize=None)

    @property
    def shape(self) -> tuple[int, int, int]:
        """C×H×W of the model input."""
        return (self.channels, self.size, self.size)

    def fit(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images at the model's channels and size (resized, or resized + centre-cropped)."""
        from cnntools.data.imageset import convert_channels, resize_uint8

        images = _fit_channels(images, self.channels, convert_channels)
        if self.resize is not None:
            return _resize_crop(images, self.resize, self.size, self.interpolation)
        if tuple(images.shape[2:]) != (self.size, self.size):
            images = resize_uint8(images, self.size)
        return images

    def __call__(self, images: torch.Tensor, device=None, channels_last: bool = False) -> torch.Tensor:
        """Normalised float32 model input on `device` (default: where `images` are) from uint8
        images, in channels_last memory format when asked."""
        from cnntools.data.loader import fold_normalization, normalize_uint8

        images = self.fit(images).to(device if device is not None else images.device, non_blocking=True)
        scale, shift = fold_normalization(self.mean, self.std, images.device)
        return normalize_uint8(images, scale, shift, channels_last)


def _fit_channels(images, channels, convert_channels):
    have = images.shape[1]
    if have == channels:
        return images
    if have == 4:  # RGBA: drop alpha
        images = images[:, :3]
    if have == 2:  # grey + alpha
        images = images[:, :1]
    return convert_channels(images, channels)


def _resize_crop(images: torch.Tensor, resize: int, crop: int, interpolation: str = "bilinear") -> torch.Tensor:
    """torchvision's ImageNet preprocessing on uint8 tensors: shorter side to `resize`, centre crop."""
    from cnntools.data.imageset import resize_uint8

    h, w = images.shape[2:]
    if h <= w:
        nh, nw = resize, max(1, round(w * resize / h))
    else:
        nh, nw = max(1, round(h * resize / w)), resize
    return resize_uint8(images, (nh, nw), mode=interpolation, crop=crop)
