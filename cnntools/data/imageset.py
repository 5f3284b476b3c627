"""The dataset every command reads: uint8 images N×C×H×W, int64 labels, class names, source files.

The images are a CPU tensor either held in memory (small sources) or mapped from a decoded
store on disk (cnntools.data.store): readers index batches out of it (`images[idx]`, slices)
and never need to know which. Whole-dataset passes go through `chunks()`, which bounds each
piece in bytes, so nothing the size of the dataset is ever made in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

# ITU-R 601-2 luma, the weights PIL's convert("L") and torchvision's rgb_to_grayscale use.
LUMA = (0.299, 0.587, 0.114)
# Whole-dataset passes read this many bytes of images at a time (float temporaries: 4× that).
CHUNK_BYTES = 32 * 1024**2


def chunk_rows(item_bytes: int, max_bytes: int = CHUNK_BYTES) -> int:
    """How many items of `item_bytes` fit in `max_bytes` (at least one)."""
    return max(1, int(max_bytes) // max(1, int(item_bytes)))


def mapped_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over a store's memmap (no copy: the page cache holds the pixels). Where the
    memmap carries `checks` (a store read by name), the tensor checks each chunk of pixels
    against its checksum before the chunk is first read (`CheckedImages`)."""
    tensor = torch.from_numpy(array)
    checks = getattr(array, "checks", None)
    if checks is None:
        return tensor
    tensor = tensor.as_subclass(CheckedImages)
    tensor.checks = checks
    return tensor


# Tensor methods and properties that read no pixels: answered without a check.
_NO_PIXELS = frozenset({"__len__", "dim", "size", "numel", "nelement", "element_size", "stride", "is_contiguous",
                        "storage_offset", "is_pinned", "data_ptr", "ndimension"})
_NO_PIXEL_PROPERTIES = frozenset({"shape", "dtype", "device", "ndim", "is_cuda", "layout", "requires_grad", "is_meta",
                                  "is_sparse", "itemsize", "nbytes", "is_mps", "is_quantized", "names", "grad"})


class CheckedImages(torch.Tensor):
    """The images of a store read by name: every operation first checks the chunks of pixels it
    may read (`images[rows]` and slices check only their own rows, anything else all of them),
    then runs on a plain tensor and returns plain tensors, so the check happens once per chunk
    and process and nothing downstream carries this type."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensor = args[0] if args and getattr(args[0], "checks", None) is not None else None
        if tensor is not None and not tensor.checks.done:
            name = getattr(func, "__name__", "")
            if name == "__get__":
                name = "." + getattr(getattr(func, "__self__", None), "__name__", "")
            if name == "__getitem__" and len(args) > 1:
                _check_rows(tensor, args[1])
            elif name not in _NO_PIXELS and name[1:] not in _NO_PIXEL_PROPERTIES:
                tensor.checks.everything()
        for value in (*args, *kwargs.values()):
            for item in value if isinstance(value, (list, tuple)) else (value,):
                if item is not tensor and getattr(item, "checks", None) is not None and isinstance(item, CheckedImages):
                    item.checks.everything()
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


def _check_rows(tensor: CheckedImages, key) -> None:
    """Check the chunks under the rows an index expression selects (all of them when unsure)."""
    n = int(tensor.shape[0])
    first = key[0] if isinstance(key, tuple) and key else key
    if isinstance(first, (int, np.integer)) and not isinstance(first, bool):
        row = int(first) + (n if first < 0 else 0)
        if 0 <= row < n:  # out of range: torch raises its own IndexError
            tensor.checks.span(row, row + 1)
    elif isinstance(first, slice):
        start, stop, step = first.indices(n)
        rows = range(start, stop, step)
        if len(rows):
            tensor.checks.span(min(rows[0], rows[-1]), max(rows[0], rows[-1]) + 1)
    elif isinstance(first, (torch.Tensor, np.ndarray, list)):
        rows = first.cpu().numpy() if isinstance(first, torch.Tensor) else np.asarray(first)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if rows.dtype.kind not in "iu":
            tensor.checks.everything()
            return
        rows = rows.reshape(-1)
        rows = np.where(rows < 0, rows + n, rows)
        tensor.checks.rows(rows[(rows >= 0) & (rows < n)])
    else:
        tensor.checks.everything()


def iter_chunks(images: torch.Tensor, max_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, images[start:start+k]) slices of at most `max_bytes` each, in order."""
    step = chunk_rows(images[0].numel() * images.element_size() if len(images) else 1, max_bytes)
    for start in range(0, images.shape[0], step):
        yield start, images[start : start + step]


class IndexedRows:
    """`images[index]` without gathering it: a slice gathers only its own rows, so a sample
    of a mapped store is read batch by batch (what `inference.forward_batches` takes)."""

    def __init__(self, images: torch.Tensor, index) -> None:
        self.images, self.index = images, torch.as_tensor(index, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, rows: slice) -> torch.Tensor:
        return self.images[self.index[rows]]


@dataclass
class ImageSet:
    """One split of a dataset.

    `images` is a uint8 CPU tensor N×C×H×W (in memory, or mapped from a store when `mapped`
    is true: then every derived set — a subset, another size — is written to a new anonymous
    store chunk by chunk instead of being made in memory), `labels` int64 N, `classes` the class names
    (label i is `classes[i]`), `paths` the source file of each image (folders only),
    `spec` the dataset spec it came from and `split` its split name. `meta` carries
    what a source knows beyond that (original file sizes, unreadable files, patch boxes).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    paths: list[str] | None = None
    spec: str = ""
    split: str = ""
    meta: dict = field(default_factory=dict)
    mapped: bool = False

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 N×C×H×W, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must have one entry per image")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def chunks(self, max_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, torch.Tensor]]:
        """(start, uint8 images) pieces of at most `max_bytes` each, in order: the way every
        whole-dataset computation reads the images."""
        return iter_chunks(self.images, max_bytes)

    def class_counts(self) -> list[int]:
        """Images per class, in class order (zero for classes absent from this split)."""
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()

    def subset(self, indices) -> "ImageSet":
        """The images at `indices` (a sequence or tensor of ints), in that order."""
        index = torch.as_tensor(indices, dtype=torch.long)
        paths = [self.paths[i] for i in index.tolist()] if self.paths is not None else None
        meta = {}
        for key, value in self.meta.items():
            # Per-image entries follow the selection; dataset-wide entries are kept as they are.
            if isinstance(value, torch.Tensor) and value.shape[:1] == (len(self),):
                meta[key] = value[index]
            elif isinstance(value, list) and len(value) == len(self) and key.startswith("per_image_"):
                meta[key] = [value[i] for i in index.tolist()]
            else:
                meta[key] = value
        if self.mapped:
            step = chunk_rows(self.images[0].numel()) if len(self) else 1
            pieces = (self.images[index[i : i + step]] for i in range(0, len(index), step))
            images = _to_store(len(index), tuple(self.images.shape[1:]), pieces)
        else:
            images = self.images[index]
        return replace(self, images=images, labels=self.labels[index], paths=paths, meta=meta)

    def resized(self, size: int | tuple[int, int] | None = None, channels: int | None = None) -> "ImageSet":
        """A copy at another size and/or channel count.

        Resizing is bilinear with antialiasing (as torchvision's `Resize`); 1→3 channels
        replicates the grey channel, 3→1 takes the ITU-R 601-2 luminance.
        """
        c = self.channels if channels is None else channels
        target = self.image_size if size is None else ((size, size) if isinstance(size, int) else tuple(int(v) for v in size))
        if (c, *target) == tuple(self.images.shape[1:]):
            return self

        def fit(chunk: torch.Tensor) -> torch.Tensor:
            return resize_uint8(convert_channels(chunk, c), target)

        return self.transformed(fit, (c, *target))

    def transformed(self, fn: Callable[[torch.Tensor], torch.Tensor], item_shape: tuple[int, ...]) -> "ImageSet":
        """A copy whose images are `fn(images)`, applied piece by piece (`fn` maps a uint8 batch to
        uint8 batch of items shaped `item_shape`); mapped sets get a new anonymous store."""
        # Pieces are bounded by the larger of the input and output item, float temporaries included.
        item = max(int(np.prod(item_shape)), self.images[0].numel() if len(self) else 1) * 4
        step = chunk_rows(item)
        pieces = (fn(self.images[i : i + step]) for i in range(0, len(self), step))
        if self.mapped:
            images = _to_store(len(self), tuple(item_shape), pieces)
        else:
            from cnntools.core.runtime import check_allocation

            # Held in RAM beside the model that runs on them: at most half of what is free.
            check_allocation(len(self) * int(np.prod(item_shape)),
                             f"{self.spec}: {len(self):,} images at {'×'.join(map(str, item_shape))}", share=0.5)
            images = torch.empty((len(self), *item_shape), dtype=torch.uint8)
            for i, piece in zip(range(0, len(self), step), pieces):
                images[i : i + len(piece)] = piece
        return replace(self, images=images)


def _to_store(n: int, item_shape: tuple[int, ...], pieces) -> torch.Tensor:
    """Write uint8 pieces (n items in all) to an anonymous store and map it."""
    from cnntools.data.cache import scratch_store
    from cnntools.data.store import open_store

    with scratch_store(n * int(np.prod(item_shape))) as writer:
        writer.begin("derived.images", item_shape)
        for piece in pieces:
            writer.write(piece.numpy())
        if writer.end() != n:
            raise RuntimeError("derived store has the wrong number of images")
        handle = writer.commit({}, {})
    arrays, _, _ = open_store(handle)
    handle.close()
    return mapped_tensor(arrays["derived.images"]) if n else torch.empty((0, *item_shape), dtype=torch.uint8)


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 N×C×H×W with C in (1, 3) to `channels` (1 or 3)."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        weights = torch.tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1)
        out = []
        for _, chunk in iter_chunks(images):
            out.append((chunk.float() * weights).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8))
        return torch.cat(out) if out else images[:, :1]
    raise ValueError(f"cannot convert {have} channels to {channels} (only 1 and 3 are supported)")


def resize_uint8(images: torch.Tensor, size: int | tuple[int, int], *, mode: str = "bilinear",
                 crop: int | None = None) -> torch.Tensor:
    """Antialiased resize of a uint8 batch to `size` (bilinear, or bicubic), in chunks so memory
    stays bounded; with `crop`, then the centre crop×crop of it (torchvision's Resize and
    CenterCrop, the way pretrained models' preprocessing is written down). The one resize
    routine: datasets fitted to a model and a named model's preprocessing both use it."""
    target = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if tuple(images.shape[2:]) == target and crop is None:
        return images
    top, left = ((target[0] - crop) // 2, (target[1] - crop) // 2) if crop is not None else (0, 0)
    out_hw = (crop, crop) if crop is not None else target
    mode = mode if mode in ("bilinear", "bicubic") else "bilinear"
    out = []
    for _, chunk in iter_chunks(images, CHUNK_BYTES // 4):
        resized = F.interpolate(chunk.float(), size=target, mode=mode, align_corners=False, antialias=True)
        resized = resized[:, :, top : top + out_hw[0], left : left + out_hw[1]]
        out.append(resized.round_().clamp_(0, 255).to(torch.uint8))
    if not out:
        return images.new_empty((0, images.shape[1], *out_hw))
    return torch.cat(out)


def stratified_split(labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of indices into (keep, held_out).

    Each class gives `round(fraction × its count)` images to the held-out part (at least
    one where the class has two or more images), chosen by a NumPy generator seeded with
    `seed`; both parts keep the original order.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        take = int(round(fraction * len(members)))
        if fraction > 0 and take == 0 and len(members) >= 2:
            take = 1
        take = min(take, len(members) - 1) if len(members) > 1 else take
        held.append(rng.permutation(members)[:take])
    held_idx = np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx
