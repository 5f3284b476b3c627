"""Batched data augmentation on the training device: whole batches, tensor ops, no PIL.

Each op draws its parameters per sample from a torch.Generator and applies them to the
whole batch at once (masks, one gather, one affine grid), which is what keeps augmentation
from starving a small model. The functional ops take explicit parameters and match
torchvision.transforms.v2.functional on the same parameters (see tests/test_data_augment.py).
Images are float N×C×H×W in 0..1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnntools.core.errors import CnnError, UsageError

# torchvision's rgb_to_grayscale weights, so contrast/saturation match it.
_GRAY = (0.2989, 0.587, 0.114)

# name → (default parameter, what the parameter is)
OPS = {
    "flip": (0.5, "probability of a horizontal flip"),
    "vflip": (0.5, "probability of a vertical flip"),
    "crop": (4.0, "zero padding in pixels before a random crop back to the original size"),
    "jitter": (0.4, "brightness/contrast/saturation factors drawn from [1-J, 1+J]"),
    "rotate": (15.0, "rotation angle drawn from [-D, D] degrees (bilinear, zero fill)"),
    "hue": (0.1, "hue shift drawn from [-H, H] turns of the colour wheel (H at most 0.5)"),
    "rrc": (0.08, "random resized crop: smallest area fraction (aspect from the aspect op, default 3/4..4/3)"),
    "aspect": (4 / 3, "random resized crop's aspect-ratio range [1/R, R] (R at least 1)"),
}


# Datasets of handwritten digits: small shifts and rotations are what their writers vary;
# flips are not (a mirrored 2 is no 2).
DIGIT_DATASETS = ("digits", "mnist")
DIGIT_AUGMENT = "rotate:10,crop:1"
# Digit-like data: one channel, or at most this many pixels a side (MNIST's 28), whatever its name.
SMALL_SIDE = 28
# Class names that say a mirror image is another class (deg135_left / deg135_right, mirrored).
_ORIENTATION_WORDS = ("left", "right", "mirror", "flipped", "clockwise", "cw", "ccw")


def resolve_augment(spec: str, data: str, channels: int | None = None, size: int | None = None) -> str:
    """What `--augment SPEC` applies to the data set `data` whose images have `channels` and
    `size` pixels a side (None: unknown): other values as given; `auto` → `DIGIT_AUGMENT` for
    digit-like data (a known digits dataset, one channel, or at most `SMALL_SIDE` pixels a side),
    none elsewhere. `auto` never proposes a flip. `train` and `dataset-stats --augment-preview`
    both call it (through `augment_for`), so the preview shows what training does."""
    if (spec or "").strip().lower() != "auto":
        return spec
    base = data.split(":", 1)[0].strip().lower()
    digit_like = base in DIGIT_DATASETS or channels == 1 or (size is not None and size <= SMALL_SIDE)
    return DIGIT_AUGMENT if digit_like else "none"


def augment_for(spec: str, data: str, imageset) -> tuple[str, str | None]:
    """`resolve_augment` on a loaded data set (an `ImageSet`: its channels, size and class
    names), and a warning when the result flips images of classes whose names suggest an
    orientation (`left`/`right`, `mirrored`, `deg…`): a flip would change their labels."""
    _, channels, height, width = imageset.images.shape
    resolved = resolve_augment(spec, data, channels, max(height, width))
    return resolved, orientation_warning(resolved, imageset.classes)


def orientation_warning(spec: str, classes) -> str | None:
    """A warning when `spec` flips images and class names suggest orientation, else None."""
    import re

    ops = {part.split(":", 1)[0].strip().lower() for part in (spec or "").split(",")}
    if not ops & {"flip", "vflip"}:
        return None
    words = re.compile(r"(?:^|[^a-z])(" + "|".join(_ORIENTATION_WORDS) + r"|deg\d*|\d+deg)(?:[^a-z]|$)")
    hits = [c for c in map(str, classes) if words.search(c.lower())]
    if not hits:
        return None
    shown = ", ".join(hits[:4]) + (" ..." if len(hits) > 4 else "")
    return (f"--augment {spec} flips images, but class names suggest an orientation ({shown}): a flip may "
            "turn one class into another; leave flip out (e.g. --augment crop:4)")


# ---------------------------------------------------------------------------- functional ops


def hflip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flip the images where `mask` (bool N) is true."""
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def vflip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-2), x)


def crop_with_padding(x: torch.Tensor, padding: int, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Zero-pad by `padding` and crop each image back to H×W at its own (top, left) in the padded image."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    wp = w + 2 * padding
    rows = top.view(n, 1, 1) + torch.arange(h, device=x.device).view(1, h, 1)
    cols = left.view(n, 1, 1) + torch.arange(w, device=x.device).view(1, 1, w)
    flat = (rows * wp + cols).view(n, 1, h * w).expand(n, c, h * w)
    return padded.flatten(2).gather(2, flat).view(n, c, h, w)


def crop_with_padding_and_flip(
    x: torch.Tensor, padding: int, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    """`crop_with_padding`, then a horizontal flip where `flip` is true — in one gather."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    wp = w + 2 * padding
    j = torch.arange(w, device=x.device)
    cols = torch.where(flip.view(n, 1), (w - 1 - j).view(1, w), j.view(1, w)) + left.view(n, 1)
    rows = top.view(n, 1) + torch.arange(h, device=x.device).view(1, h)
    flat = (rows.view(n, h, 1) * wp + cols.view(n, 1, w)).view(n, 1, h * w).expand(n, c, h * w)
    return padded.flatten(2).gather(2, flat).view(n, c, h, w)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * _gray(x)).clamp_(0, 1)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Shift each image's hue by its factor (in turns, -0.5..0.5), through HSV as torchvision does."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    h = torch.remainder(h + factor.view(-1, 1, 1).to(h.dtype), 1.0)
    # HSV back to RGB
    v = maxc
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int32) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    mask = i.unsqueeze(1) == torch.arange(6, device=x.device).view(-1, 1, 1)
    a1 = torch.stack((v, q, p, p, t, v), dim=1)
    a2 = torch.stack((t, v, v, q, p, p), dim=1)
    a3 = torch.stack((p, p, t, v, v, q), dim=1)
    a4 = torch.stack((a1, a2, a3), dim=1)
    return torch.einsum("...ijk, ...xijk -> ...xjk", mask.to(x.dtype), a4)


def rotate(x: torch.Tensor, angle_deg: torch.Tensor) -> torch.Tensor:
    """Rotate each image counter-clockwise by its angle about the centre (bilinear, zero fill)."""
    n, _, h, w = x.shape
    a = angle_deg.to(x.dtype) * (math.pi / 180)
    cos, sin = torch.cos(a), torch.sin(a)
    zero = torch.zeros_like(a)
    # Output → input map in normalised coordinates; the aspect terms keep it a rotation in pixels.
    theta = torch.stack(
        [torch.stack([cos, -sin * h / w, zero], 1), torch.stack([sin * w / h, cos, zero], 1)], 1
    )
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def resized_crop(
    x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: torch.Tensor, width: torch.Tensor, size=None
) -> torch.Tensor:
    """Crop box (top, left, height, width) of each image resized to `size` (default H×W), bilinear."""
    n, c, h, w = x.shape
    out_h, out_w = (h, w) if size is None else ((size, size) if isinstance(size, int) else size)
    t, l, bh, bw = (v.to(x.dtype) for v in (top, left, height, width))
    zero = torch.zeros_like(t)
    # Output pixel j samples input pixel left + (j + 0.5)·width/out_w − 0.5, as interpolate does.
    theta = torch.stack(
        [torch.stack([bw / w, zero, (2 * l + bw) / w - 1], 1), torch.stack([zero, bh / h, (2 * t + bh) / h - 1], 1)], 1
    )
    grid = F.affine_grid(theta, [n, c, out_h, out_w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def sample_resized_crop_boxes(
    n: int, h: int, w: int, min_scale: float, generator, device, ratio=(3 / 4, 4 / 3), attempts: int = 10
):
    """torchvision's RandomResizedCrop.get_params for a whole batch: (top, left, height, width) int64 N."""
    area = h * w
    scale = torch.empty(n, attempts, device=device).uniform_(min_scale, 1.0, generator=generator)
    log_ratio = torch.empty(n, attempts, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    bw = torch.sqrt(area * scale * aspect).round().long()
    bh = torch.sqrt(area * scale / aspect).round().long()
    ok = (bw > 0) & (bw <= w) & (bh > 0) & (bh <= h)
    # First valid attempt per sample; none valid → the whole image.
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.zeros(n, dtype=torch.long, device=device))
    any_ok = ok.any(1)
    bw = torch.where(any_ok, bw.gather(1, first[:, None]).squeeze(1), torch.full_like(first, w))
    bh = torch.where(any_ok, bh.gather(1, first[:, None]).squeeze(1), torch.full_like(first, h))
    u = torch.rand(n, 2, device=device, generator=generator)
    top = (u[:, 0] * (h - bh + 1).float()).floor().long().clamp_max(h - bh)
    left = (u[:, 1] * (w - bw + 1).float()).floor().long().clamp_max(w - bw)
    return top, left, bh, bw


# ---------------------------------------------------------------------------- the pipeline

_EXACT = ("flip", "vflip", "crop")


@dataclass
class Augment:
    """A parsed augmentation spec: ops applied in the order given, each with its parameter."""

    ops: list[tuple[str, float]]

    @property
    def aspect_range(self) -> tuple[float, float]:
        """The aspect-ratio range of random resized crops: [1/R, R] of the `aspect` op, else 3/4..4/3."""
        r = next((p for name, p in self.ops if name == "aspect"), 4 / 3)
        return (1 / r, r)

    @property
    def spec(self) -> str:
        return ",".join(f"{name}:{param:g}" for name, param in self.ops)

    def split_exact(self) -> tuple["Augment | None", "Augment | None"]:
        """(leading flips/crops, the rest): the first part moves pixels without changing them,
        so it can run on the uint8 batch before the conversion to float."""
        k = 0
        while k < len(self.ops) and self.ops[k][0] in _EXACT:
            k += 1
        head, tail = self.ops[:k], self.ops[k:]
        return (Augment(head) if head else None), (Augment(tail) if tail else None)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a batch (float 0..1; flips and crops also work on uint8) with per-sample random parameters."""
        n, _, h, w = x.shape
        dev = x.device

        def rand(*shape):
            return torch.rand(*shape, device=dev, generator=generator)

        def crop_offsets(pad: int) -> torch.Tensor:
            """(top, left) of each crop in the padded image, uniform over 0..2P: N×2."""
            return (rand(n, 2) * (2 * pad + 1)).floor().long().clamp_max(2 * pad)

        ops = list(self.ops)
        i = 0
        while i < len(ops):
            name, p = ops[i]
            i += 1
            pair = {name, ops[i][0]} if i < len(ops) else set()
            if pair == {"flip", "crop"}:
                # Flip and crop commute (a flipped crop at `left` is the crop at 2P-left of the
                # flipped image, equally likely), so adjacent ones run as a single gather.
                params = dict(ops[i - 1 : i + 1])
                pad = int(params["crop"])
                offsets = crop_offsets(pad)
                x = crop_with_padding_and_flip(x, pad, offsets[:, 0], offsets[:, 1], rand(n) < params["flip"])
                i += 1
            elif name == "flip":
                x = hflip(x, rand(n) < p)
            elif name == "vflip":
                x = vflip(x, rand(n) < p)
            elif name == "crop":
                pad = int(p)
                offsets = crop_offsets(pad)
                x = crop_with_padding(x, pad, offsets[:, 0], offsets[:, 1])
            elif name == "jitter":
                factors = 1 + (rand(3, n) * 2 - 1) * p
                x = adjust_brightness(x, factors[0].clamp_min(0))
                x = adjust_contrast(x, factors[1].clamp_min(0))
                x = adjust_saturation(x, factors[2].clamp_min(0))
            elif name == "hue":
                x = adjust_hue(x, (rand(n) * 2 - 1) * p)
            elif name == "rotate":
                x = rotate(x, (rand(n) * 2 - 1) * p)
            elif name == "rrc":
                top, left, bh, bw = sample_resized_crop_boxes(n, h, w, p, generator, dev, ratio=self.aspect_range)
                x = resized_crop(x, top, left, bh, bw)
        return x


def parse_augment(spec: str | None) -> Augment | None:
    """`flip,crop:4,jitter:0.4,rotate:15,rrc:0.08` → Augment; None for "" or "none".

    Each op takes an optional `:PARAM` (defaults: flip 0.5, crop 4, jitter 0.4, hue 0.1,
    rotate 15, rrc 0.08, aspect 4/3). `aspect` sets the aspect-ratio range of the `rrc` crops.
    """
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    ops: list[tuple[str, float]] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition(":")
        name = name.strip().lower()
        if name not in OPS:
            raise UsageError(f"unknown augmentation '{name}' in '{spec}': use {', '.join(OPS)} (e.g. flip,crop:4)")
        try:
            param = float(value) if value.strip() else OPS[name][0]
        except ValueError:
            raise UsageError(f"augmentation '{part}': the parameter after ':' must be a number") from None
        if name in ("flip", "vflip", "rrc") and not 0 <= param <= 1:
            raise UsageError(f"augmentation '{part}': {name} takes a fraction from 0 to 1")
        if name == "hue" and not 0 <= param <= 0.5:
            raise UsageError(f"augmentation '{part}': hue takes a shift from 0 to 0.5 (turns of the colour wheel)")
        if name == "aspect" and param < 1:
            raise UsageError(f"augmentation '{part}': aspect takes R >= 1 (crops with aspect ratio from 1/R to R)")
        if name in ("crop", "jitter", "rotate") and param < 0:
            raise UsageError(f"augmentation '{part}': the parameter must not be negative")
        if name == "crop" and param != int(param):
            raise UsageError(f"augmentation '{part}': crop padding is a whole number of pixels")
        ops.append((name, param))
    return Augment(ops) if ops else None
