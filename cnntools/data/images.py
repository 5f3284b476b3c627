"""Decoding image files: one converter for every reader, with a decompression-bomb limit.

Every image cnntools reads (folders, `--image` files, stdin) goes through here, so 16-bit,
float, CMYK, palette and transparent images are converted the same way everywhere, and an
image whose header claims more pixels than the limit is refused before it is decoded.
The limit is Pillow's own default (89,478,485 pixels, about 9459×9459); CNNTOOLS_MAX_IMAGE_PIXELS
raises or lowers it. Above it Pillow merely warns up to twice the limit; here that warning is
an error too.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator

import numpy as np

from cnntools.core.errors import CnnError

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's Image.MAX_IMAGE_PIXELS
# Part of every image store's key: a change to the pixels a file decodes to rebuilds the
# stores made before it. 2: the EXIF orientation is applied (photos as displayed).
DECODER_VERSION = "2"
EXIF_ORIENTATION = 0x0112


def max_pixels() -> int:
    """The largest image (width × height) that will be decoded."""
    value = os.environ.get("CNNTOOLS_MAX_IMAGE_PIXELS", "").strip()
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(value)
    except ValueError:
        raise CnnError(f"CNNTOOLS_MAX_IMAGE_PIXELS='{value}': expected a number of pixels") from None
    if limit < 1:
        raise CnnError("CNNTOOLS_MAX_IMAGE_PIXELS must be at least 1")
    return limit


def pil():
    """PIL.Image with the pixel limit applied and its bomb warning turned into an error.

    Call from the main thread before decoding (the warnings filter is process-wide).
    """
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels()
    # Decoder chatter (odd TIFF tags, palette notes) is not for the user's stderr; but a cut-short
    # TIFF decodes "successfully" with a warning, and that file is damaged. Later filters win.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
    warnings.filterwarnings("error", message="Truncated File Read", category=UserWarning)
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
    return Image


def is_bomb(error: BaseException) -> bool:
    from PIL import Image

    return isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning))


def bomb_message(name: str) -> str:
    return (
        f"{name}: image has more than {max_pixels():,} pixels, the decompression-bomb limit; "
        "if you trust the file, raise the limit with CNNTOOLS_MAX_IMAGE_PIXELS"
    )


def to_array(im, target_mode: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one PIL image to a uint8 array in `target_mode` (L or RGB), at `size` (width, height) if given.

    16-bit images keep their top 8 bits, float and 32-bit integer images are scaled to
    0..255, CMYK and palette images go through PIL's conversion, and transparency is
    composited over white.
    """
    from PIL import Image

    im.load()
    if im.mode.startswith("I;16"):
        im = Image.fromarray((np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8), "L")
    elif im.mode in ("I", "F"):
        values = np.asarray(im, dtype=np.float64)
        top = 65535.0 if values.size and values.max() > 255 else 255.0
        im = Image.fromarray(np.clip(np.nan_to_num(values) * (255.0 / top), 0, 255).round().astype(np.uint8), "L")
    has_alpha = im.mode in ("RGBA", "LA", "La", "PA", "RGBa") or (im.mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    if im.mode != target_mode:
        im = im.convert(target_mode)  # (a no-op convert would still copy)
    if size is not None and im.size != size:
        im = im.resize(size, Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def orientation(im) -> int:
    """The EXIF orientation (1-8; 1: as stored) of an opened image, from its header: phones
    store a portrait photo sideways with a tag that says how to turn it for display. (A PNG
    whose eXIf chunk follows the pixels reports it once loaded.)"""
    if im.format == "PNG" and "exif" not in im.info:
        return 1  # Pillow would decode the whole PNG to look further
    try:
        value = im.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block: the image as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def displayed_size(im) -> tuple[int, int]:
    """(width, height) of the image as displayed: orientations 5-8 turn it a quarter."""
    width, height = im.size
    return (height, width) if orientation(im) >= 5 else (width, height)


def upright(im):
    """The image as displayed: its EXIF orientation applied (Pillow's exif_transpose)."""
    if orientation(im) == 1:
        return im
    from PIL import ImageOps

    return ImageOps.exif_transpose(im)


def decode_file(source, target_mode: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """A file (path or binary stream) decoded by `to_array` at `size` (width, height), as displayed.

    The EXIF orientation is applied (`upright`), so a portrait photo is learned upright.
    JPEGs are decoded with DCT scaling (`Image.draft`) when the target is at most half the
    file's size: libjpeg then skips most of the work and the resize starts from an image
    at least as large as the target. Folders and `eval --image` both decode through here,
    so a file gives the same pixels whichever way it reaches a model. Call `pil()` once
    first (from the main thread) so the pixel limit applies.
    """
    from PIL import Image

    with Image.open(source) as im:
        if size is not None and im.format == "JPEG":
            turned = orientation(im) >= 5  # the stored image is the displayed one turned a quarter
            im.draft(None, (size[1], size[0]) if turned else size)
        im.load()
        return to_array(upright(im), target_mode, size)


def decode_image(data: bytes, name: str, mode: str = "RGB", size: tuple[int, int] | None = None) -> np.ndarray:
    """The image in `data` as a uint8 array H×W (mode L) or H×W×3 (RGB); one clear error otherwise."""
    if not data:
        raise CnnError(f"{name}: empty file (0 bytes), not an image")
    pil()
    try:
        return decode_file(io.BytesIO(data), mode, size)
    except Exception as error:  # noqa: BLE001 - every decoder failure is one line for the user
        if is_bomb(error):
            raise CnnError(bomb_message(name)) from None
        kind = type(error).__name__
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if kind == "UnidentifiedImageError" or not detail:
            detail = "not an image format Pillow knows" if kind == "UnidentifiedImageError" else kind
        raise CnnError(f"{name}: not a readable image ({detail[:200]})") from None


def read_image(path: str, mode: str = "RGB", size: tuple[int, int] | None = None) -> np.ndarray:
    """An image file (or stdin for `-`) decoded by `decode_image`, at `size` (width, height) if given."""
    from cnntools.output import files

    if path != files.STDIO and not os.path.exists(path):
        raise CnnError(f"{files.display_name(path)}: no such image file")
    # No image file worth decoding is larger than its pixels stored raw (4 bytes each) plus
    # headroom; a pipe or stdin that keeps going is cut off there, before any decoding.
    limit = 4 * max_pixels() + 16 * 2**20
    return decode_image(files.read_bytes(path, limit), files.display_name(path), mode, size)


def image_extensions() -> set[str]:
    """Every file suffix Pillow decodes (`.png`, `.jpg`, ...)."""
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def image_paths(paths: list[str], on_skip) -> Iterator[tuple[str, bool]]:
    """(path, named) for every image in `paths`: files as given (`named`: a file the user
    named, whose failure is an error) and each folder walked with `files.walk_files` (hidden
    names left out, link cycles entered once, non-regular files passed to `on_skip(path,
    message)` with their reason and never opened)."""
    from cnntools.output import files

    suffixes = None
    for path in paths:
        if path != files.STDIO and os.path.isdir(path):
            suffixes = suffixes or image_extensions()
            found, skipped = files.walk_files(path, lambda name: os.path.splitext(name)[1].lower() in suffixes)
            for where, reason in skipped:
                on_skip(str(where), f"{files.display_name(str(where))}: {reason}")
            if not found and not skipped:
                raise CnnError(f"{files.display_name(path)}: no image files in the folder "
                               f"(looked for {', '.join(sorted(suffixes)[:6])}, ...)")
            for found_path in found:
                yield str(found_path), False
        else:
            yield path, True
