"""Generate a folder of JPEG photos-like images in class folders, for the data benchmarks.

    python tests/benchmarks/make_jpeg_folder.py OUT --n 1000 --size 224x224 --classes 5

Each class has its own smooth colour field (so a model can learn something) plus noise and
random shapes, saved as JPEG at quality 90 (about what photos compress to). Deterministic
for a given --seed. Files are written in parallel; an existing folder with the same number
of files is left as it is.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def make_folder(out: Path, n: int, width: int, height: int, classes: int = 5, seed: int = 0, quality: int = 90) -> Path:
    from PIL import Image, ImageDraw

    out = Path(out)
    existing = list(out.glob("*/*.jpg")) if out.is_dir() else []
    if len(existing) == n:
        return out
    rng = np.random.default_rng(seed)
    palettes = rng.integers(30, 226, (classes, 4, 3))

    def one(i: int) -> None:
        r = np.random.default_rng(seed * 1_000_003 + i)
        cls = i % classes
        yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
        corners = palettes[cls].astype(np.float64)
        field = (corners[0] * (1 - xx)[..., None] * (1 - yy)[..., None] + corners[1] * xx[..., None] * (1 - yy)[..., None]
                 + corners[2] * (1 - xx)[..., None] * yy[..., None] + corners[3] * xx[..., None] * yy[..., None])
        pixels = np.clip(field + r.normal(0, 18, field.shape), 0, 255).astype(np.uint8)
        im = Image.fromarray(pixels, "RGB")
        draw = ImageDraw.Draw(im)
        for _ in range(3):
            x0, y0 = int(r.integers(0, width)), int(r.integers(0, height))
            draw.ellipse([x0, y0, x0 + int(r.integers(8, width // 3 + 9)), y0 + int(r.integers(8, height // 3 + 9))],
                         fill=tuple(int(v) for v in r.integers(0, 256, 3)))
        folder = out / f"class{cls}"
        folder.mkdir(parents=True, exist_ok=True)
        im.save(folder / f"{i:06d}.jpg", quality=quality)

    with ThreadPoolExecutor(max(1, len(os.sched_getaffinity(0)))) as pool:
        list(pool.map(one, range(n)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--size", default="224x224", help="WIDTHxHEIGHT")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    print(make_folder(Path(args.out), args.n, width, height, args.classes, args.seed))


if __name__ == "__main__":
    main()
