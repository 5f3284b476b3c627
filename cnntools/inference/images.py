"""Top-k predictions for image files and folders of them, streamed in batches.

`eval MODEL --image PATH...`: each PATH is an image file (or `-` for stdin) or a folder,
walked recursively in sorted order. Images are decoded one at a time, fitted to the model
(channels, size), and run `batch_size` at a time, so memory holds one batch of images
whatever the folder's size. A file in a folder that cannot be decoded is reported and
skipped; a file named on the command line that cannot be decoded is an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from cnntools.data.images import image_paths
from cnntools.core.errors import CnnError

PREDICTION_COLUMNS = ["image", "rank", "class", "index", "prob", "logit"]


def read_uint8(path: str, channels: int, size: int | None = None) -> torch.Tensor:
    """uint8 1×C×H×W of an image file (- for stdin), at size×size when given: decoded exactly
    as an image folder is decoded into its store (JPEG draft decoding included)."""
    from cnntools.data.images import read_image

    array = read_image(path, "L" if channels == 1 else "RGB", (size, size) if size else None)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None]


def _read(path: str, lm) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw 1×C×H×W, fitted C×H×W) uint8 of one image: decoded, then fitted (channels, size,
    or torchvision's resize + centre crop from the full image). Fitting is per image because
    the files differ in size, and done once: torchvision's resize + crop is not idempotent."""
    pre = lm.preprocessing
    raw = read_uint8(path, pre.channels, None if pre.resize is not None else pre.size)
    return raw, pre.fit(raw)[0]


def batches(lm, paths: list[str], batch_size: int, on_skip: Callable[[str, str], None],
            on_image: Callable[[str, torch.Tensor], None] | None = None) -> Iterator[tuple[list[str], torch.Tensor]]:
    """(paths, N×C×H×W fitted uint8 images) batches of the readable images, in order."""
    names, images = [], []
    for path, named in image_paths(paths, on_skip):
        try:
            raw, prepared = _read(path, lm)
            images.append(prepared)
            if on_image is not None:
                on_image(path, raw)
        except CnnError as error:
            if named:
                raise
            on_skip(path, str(error))
            continue
        names.append(path)
        if len(images) == batch_size:
            yield names, torch.stack(images)
            names, images = [], []
    if images:
        yield names, torch.stack(images)


def predict_images(lm, paths: list[str], batch_size: int, top_k: int, precision: str,
                   on_skip: Callable[[str, str], None], on_image=None) -> Iterator[list[dict]]:
    """Per batch, the rows of each image's top-k classes: image, rank, class, index, prob, logit."""
    from cnntools.inference.batches import predict

    fitted = lm.preprocessing.for_fitted()
    for names, images in batches(lm, paths, batch_size, on_skip, on_image):
        logits = predict(lm.model, images, fitted, batch_size=batch_size, precision=precision, arch=lm.meta.arch_name)
        probs = torch.softmax(logits, 1)
        k = min(top_k, probs.shape[1])
        values, indices = probs.topk(k, dim=1)
        rows = []
        for i, name in enumerate(names):
            for rank, (p, c) in enumerate(zip(values[i].tolist(), indices[i].tolist()), start=1):
                rows.append({"image": name, "rank": rank, "class": lm.classes[c], "index": c, "prob": p,
                             "logit": float(logits[i, c])})
        yield rows
