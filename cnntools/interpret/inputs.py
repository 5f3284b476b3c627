"""Choosing what to look at: image files, dataset indices, mistakes from a predictions CSV,
and target classes given as `pred`, `true`, an index or a class name."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cnntools.core.errors import CnnError, UsageError


def parse_int_list(text: str, what: str = "indices", size: int | None = None, where: str = "", unit: str = "images") -> list[int]:
    """`0,5,7` or `0-3,9` → [0, 5, 7] / [0, 1, 2, 3, 9].

    `size`: how many items there are (`where` names them); an index or range end outside
    0..size-1 is refused before a range is expanded, so `0-999999999` costs nothing.
    """
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                low, high = part.split("-", 1) if not part.startswith("-") else (part, "")
                low, high = int(low), int(high)
            else:
                low = high = int(part)
        except ValueError:
            raise CnnError(f"{what} '{text}': expected integers such as 0,5,7 or 0-3") from None
        if size is not None:
            check_indices([low, high], size, where or what, unit)
        out.extend(range(low, high + 1))
    if not out:
        raise CnnError(f"{what}: none given")
    return out


def check_indices(indices: Sequence[int], n: int, where: str, unit: str = "images") -> None:
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise CnnError(f"index {bad[0]} is out of range: {where} has {n} {unit} (0..{n - 1})")


def read_image_files(paths: Sequence[str]) -> torch.Tensor:
    """Image files as one uint8 N×C×H×W tensor (RGB; the others decoded at the first image's
    size, by the same decoder and resampling an image folder's store uses)."""
    from cnntools.data.images import read_image

    first = read_image(paths[0], "RGB")
    size = (first.shape[1], first.shape[0])  # (width, height)
    arrays = [first] + [read_image(path, "RGB", size) for path in paths[1:]]
    return torch.stack([torch.from_numpy(a.copy()).permute(2, 0, 1) for a in arrays])


def resolve_targets(spec: str, preds: Sequence[int], labels: Sequence[int] | None, classes: Sequence[str]) -> list[int]:
    """One class per image: `pred` (the model's prediction), `true` (the label), or a class
    given by index or by name."""
    n = len(preds)
    if spec == "pred":
        return [int(p) for p in preds]
    if spec == "true":
        if labels is None or any(label is None or label < 0 for label in labels):
            raise UsageError("--target true needs labelled images (dataset indices or mistakes); image files have no label")
        return [int(label) for label in labels]
    if spec in classes:
        return [classes.index(spec)] * n
    try:
        index = int(spec)
    except ValueError:
        shown = ", ".join(classes[:10]) + (" ..." if len(classes) > 10 else "")
        raise UsageError(f"--target '{spec}': use pred, true, a class index or a class name ({shown})") from None
    if not 0 <= index < len(classes):
        raise UsageError(f"--target {index}: the model has classes 0..{len(classes) - 1}")
    return [index] * n
