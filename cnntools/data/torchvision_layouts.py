"""CIFAR-10/100 python batches and MNIST/Fashion-MNIST idx files, read without torchvision.

CIFAR's python batches are pickles. A pickle can name any importable callable and run it
while loading, so they are read with an Unpickler whose `find_class` admits only what a
CIFAR batch really contains: NumPy's ndarray reconstruction (`_reconstruct`, `ndarray`,
`dtype`, `scalar`) and `_codecs.encode` (how protocol-2 pickles spell bytes). Anything
else — `os.system`, `builtins.eval`, any class — is refused before it is called, and the
loaded arrays are checked to be plain numeric arrays.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch

from cnntools.data import cache
from cnntools.data.imageset import ImageSet, mapped_tensor
from cnntools.core.errors import CnnError
from cnntools.output.emitter import info

_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_pickle(path: Path) -> dict:
    """One CIFAR python batch as a dict with str keys, loaded without running foreign code."""
    from cnntools.output import files

    with files.open_binary(path) as handle:  # stat first: a FIFO or device named data_batch_1 never blocks
        try:
            obj = _RestrictedUnpickler(handle, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                KeyError, OverflowError, MemoryError, RecursionError, UnicodeDecodeError) as error:
            raise CnnError(f"{files.display_name(path)}: not a readable CIFAR python batch ({type(error).__name__}: {str(error)[:200]})") from None
        except OSError as error:
            raise CnnError(f"{files.display_name(path)}: cannot read ({error.strerror})") from None
    if not isinstance(obj, dict):
        raise CnnError(f"{path}: not a CIFAR python batch (expected a dict, found {type(obj).__name__})")
    out = {}
    for key, value in obj.items():
        key = key.decode("latin1") if isinstance(key, bytes) else str(key)
        if isinstance(value, np.ndarray) and value.dtype == object:
            raise CnnError(f"{path}: entry '{key}' holds Python objects, not numbers; refusing it")
        out[key] = value
    return out


def _pixels(value, path: Path) -> np.ndarray:
    """A batch's `data` entry as uint8 rows, or one clear error: it must be a numeric array of
    N ≥ 1 images with values 0..255 (never wrapped round into a byte)."""
    if not isinstance(value, np.ndarray):
        raise CnnError(f"{path}: entry 'data' is a {type(value).__name__}, expected an array of pixel bytes (N×3072 for CIFAR)")
    if value.dtype.kind not in "biuf" or value.ndim < 2 or value.shape[0] == 0 or value.size == 0:
        raise CnnError(f"{path}: entry 'data' is a {value.dtype} array of shape {value.shape}, expected N×3072 unsigned bytes")
    if value.dtype != np.uint8:
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise CnnError(f"{path}: entry 'data' holds NaN or infinite pixel values")
        low, high = value.min(), value.max()
        if low < 0 or high > 255 or (value.dtype.kind == "f" and not np.array_equal(value, np.round(value))):
            raise CnnError(f"{path}: entry 'data' holds pixel values from {low} to {high}; expected whole numbers 0..255")
    return value.reshape(len(value), -1).astype(np.uint8, copy=False)


def _labels(value, key: str, path: Path) -> np.ndarray:
    array = value if isinstance(value, np.ndarray) else np.asarray(value) if isinstance(value, (list, tuple)) else None
    if array is None or array.ndim != 1 or (array.size and array.dtype.kind not in "biu"):
        what = type(value).__name__ if array is None else f"{array.dtype} array of shape {array.shape}"
        raise CnnError(f"{path}: entry '{key}' is a {what}, expected a list of integer class indices")
    return array.astype(np.int64)


def _cifar_shape(row_length: int, path: Path) -> tuple[int, int]:
    for channels in (3, 1):
        side = int(round((row_length / channels) ** 0.5))
        if row_length % channels == 0 and side * side * channels == row_length:
            return channels, side
    raise CnnError(f"{path}: rows of {row_length} bytes are not square C×S×S images (C = 3 or 1)")


def _names(meta: dict, keys: tuple[str, ...], path: Path | None = None) -> list[str] | None:
    for key in keys:
        if key in meta:
            names = meta[key]
            if not isinstance(names, (list, tuple, np.ndarray)) or not all(isinstance(n, (str, bytes, np.str_, np.bytes_)) for n in names):
                raise CnnError(f"{path}: entry '{key}' is not a list of class names (found {type(names).__name__})")
            return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]
    return None


def read_cifar_batches(files: list[Path], label_keys: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for path in files:
        batch = read_cifar_pickle(path)
        if "data" not in batch:
            raise CnnError(f"{path}: no 'data' entry (not a CIFAR python batch)")
        data = _pixels(batch["data"], path)
        key = next((k for k in label_keys if k in batch), None)
        if key is None:
            raise CnnError(f"{path}: no labels (looked for {', '.join(label_keys)})")
        lab = _labels(batch[key], key, path)
        if len(lab) != len(data):
            raise CnnError(f"{path}: {len(data)} images but {len(lab)} labels")
        c, s = _cifar_shape(data.shape[1], path)
        images.append(data.reshape(-1, c, s, s))
        labels.append(lab)
    if len({im.shape[1:] for im in images}) > 1:
        raise CnnError(f"{files[0].parent}: batches hold images of different shapes")
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


class CifarPickleSource:
    """A folder of CIFAR python batches: `data_batch_*` (train), `test_batch`, `batches.meta` names.

    Also CIFAR-100's `train`/`test`/`meta` files (fine labels). Any number of classes and of
    images per batch.
    """

    def __init__(self, root: Path, spec: str, train_files, test_files, meta_file, label_keys, name_keys):
        self.root, self.spec = root, spec
        self.train_files, self.test_files = train_files, test_files
        self.label_keys, self.meta_file, self.name_keys = label_keys, meta_file, name_keys
        self._classes = None

    def splits(self) -> list[str]:
        return [s for s, f in (("train", self.train_files), ("test", self.test_files)) if f]

    def classes(self, labels: torch.Tensor) -> list[str]:
        if self._classes is None and self.meta_file is not None and self.meta_file.exists():
            self._classes = _names(read_cifar_pickle(self.meta_file), self.name_keys, self.meta_file)
        count = int(labels.max()) + 1 if len(labels) else 0
        if self._classes is None:
            self._classes = [str(i) for i in range(count)]
        if count > len(self._classes) or (len(labels) and int(labels.min()) < 0):
            raise CnnError(f"{self.root}: labels run to {count - 1} but {self.meta_file} names {len(self._classes)} classes")
        return list(self._classes)

    def load(self, split: str) -> ImageSet:
        files = self.train_files if split == "train" else self.test_files
        if sum(_file_size(f) for f in files) > cache.STORE_THRESHOLD:
            return self._load_stored(split, files)
        images, labels = read_cifar_batches(files, self.label_keys)
        return ImageSet(images=images, labels=labels, classes=self.classes(labels), spec=self.spec, split=split)

    def _load_stored(self, split: str, files: list[Path]) -> ImageSet:
        """A large layout goes through a store on disk, written one batch file at a time."""
        listing = []
        for path in files:
            st = path.stat()
            listing.append((path.name, st.st_size, st.st_mtime_ns))
        prefix, key = cache.cache_key(self.root, f"cifar-{split}", listing)

        def build(writer) -> dict:
            labels, shape = [], None
            for path in files:
                images, batch_labels = read_cifar_batches([path], self.label_keys)
                if shape is None:
                    shape = tuple(images.shape[1:])
                    writer.begin(f"{split}.images", shape)
                elif tuple(images.shape[1:]) != shape:
                    raise CnnError(f"{files[0].parent}: batches hold images of different shapes")
                writer.write(images.numpy())
                labels.append(batch_labels.numpy())
            writer.end()
            writer.add(f"{split}.labels", np.concatenate(labels))
            return {"split": split}

        arrays, _, info = cache.open_or_build(cache.cache_file(prefix, key), key, build, sum(_file_size(f) for f in files))
        labels = torch.from_numpy(arrays[f"{split}.labels"])
        return ImageSet(images=mapped_tensor(arrays[f"{split}.images"]), labels=labels, classes=self.classes(labels),
                        spec=self.spec, split=split, meta={"cache": info}, mapped=True)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def cifar_folder(root: Path, spec: str) -> CifarPickleSource | None:
    """The CIFAR-pickle source for a folder in that layout, or None when it is not one."""
    train = sorted(root.glob("data_batch_*"), key=lambda p: (len(p.name), p.name))
    test = sorted(root.glob("test_batch*"))
    numbers = sorted(int(p.name.rsplit("_", 1)[1]) for p in train if p.name.rsplit("_", 1)[1].isdigit())
    missing = sorted(set(range(1, (numbers[-1] if numbers else 0) + 1)) - set(numbers))
    if missing:
        raise CnnError(
            f"{root}: CIFAR batch data_batch_{missing[0]} is missing (found {', '.join(p.name for p in train)}); "
            "copy the complete set of batches, or fetch the dataset again with --data cifar10 --download"
        )
    if (root / "batches.meta").exists() or train:
        return CifarPickleSource(root, spec, train, test, root / "batches.meta", ("labels", "fine_labels"), ("label_names", "fine_label_names"))
    if (root / "meta").exists() and (root / "train").is_file():
        return CifarPickleSource(root, spec, [root / "train"], [root / "test"] if (root / "test").is_file() else [], root / "meta", ("fine_labels", "labels"), ("fine_label_names", "label_names"))
    return None


# ---------------------------------------------------------------------------- MNIST idx


IDX_LIMIT = 2**30  # bytes of an idx file (after gunzip); MNIST's largest is 47 MB


def read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally .gz) as a NumPy array: magic 0 0 dtype ndim, big-endian dims.

    The header is checked against the data before anything is shaped, and a .gz file is
    decompressed only up to IDX_LIMIT bytes (a gzip bomb stops there)."""
    import io

    from cnntools.output import files

    name = files.display_name(path)
    raw = files.read_bytes(path, IDX_LIMIT)
    if path.suffix == ".gz":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
                raw = stream.read(IDX_LIMIT + 1)
        except (OSError, EOFError, ValueError) as error:
            raise CnnError(f"{name}: not a readable gzip file ({error})") from None
        if len(raw) > IDX_LIMIT:
            raise CnnError(f"{name}: decompresses to more than {IDX_LIMIT:,} bytes; not an MNIST idx file")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise CnnError(f"{name}: not an idx file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    if not 1 <= ndim <= 4:
        raise CnnError(f"{name}: idx header claims {ndim} dimensions; MNIST files have 1 (labels) or 3 (images)")
    if len(raw) < 4 + 4 * ndim:
        raise CnnError(f"{name}: truncated or padded idx file (the header of {ndim} dimensions needs {4 + 4 * ndim} bytes, {len(raw)} present)")
    dims = [int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)]
    expected = 1
    for d in dims:
        expected *= d  # Python ints: a header of huge dimensions cannot overflow
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != expected:
        raise CnnError(f"{name}: truncated or padded idx file ({body.size} bytes of data, header says {expected})")
    return body.reshape(*dims)


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class IdxSource:
    """MNIST-style idx files in torchvision's layout DATA_DIR/<Folder>/raw/ (plain or .gz)."""

    def __init__(self, name: str, raw_dir: Path, classes: list[str]):
        self.name, self.raw_dir, self._classes = name, raw_dir, classes

    def splits(self) -> list[str]:
        return ["train", "test"]

    def _file(self, stem: str) -> Path:
        for candidate in (self.raw_dir / stem, self.raw_dir / f"{stem}.gz"):
            if candidate.exists():
                return candidate
        raise CnnError(f"{self.raw_dir / stem}: missing")

    def load(self, split: str) -> ImageSet:
        img_stem, lab_stem = _IDX_FILES[split]
        images = read_idx(self._file(img_stem))
        labels = read_idx(self._file(lab_stem)).astype(np.int64)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise CnnError(f"{self.raw_dir}: {split} images {images.shape} and labels {labels.shape} do not match")
        if len(labels) and labels.max() >= len(self._classes):
            raise CnnError(f"{self.raw_dir}: label {labels.max()} outside the {len(self._classes)} classes")
        return ImageSet(
            images=torch.from_numpy(images.copy()).unsqueeze(1),
            labels=torch.from_numpy(labels),
            classes=list(self._classes),
            spec=self.name,
            split=split,
        )


# ---------------------------------------------------------------------------- registry glue

_LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"], "CIFAR10"),
    "cifar100": ("cifar-100-python", ["train", "test", "meta"], "CIFAR100"),
    "mnist": ("MNIST/raw", [f for pair in _IDX_FILES.values() for f in pair], "MNIST"),
    "fashion-mnist": ("FashionMNIST/raw", [f for pair in _IDX_FILES.values() for f in pair], "FashionMNIST"),
}


def _present(folder: Path, name: str) -> bool:
    return (folder / name).exists() or (folder / f"{name}.gz").exists()


def _download(name: str, data_dir: Path) -> None:
    import torchvision.datasets as tvd

    cls = getattr(tvd, _LAYOUTS[name][2])
    info(f"Downloading {name} into {data_dir} ...")
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        for train in (True, False):
            cls(root=str(data_dir), train=train, download=True)
    except Exception as error:  # noqa: BLE001 - network and disk errors of every kind
        reason = " ".join(str(error).split())  # torchvision's message spans several lines
        raise CnnError(f"downloading {name} into {data_dir} failed: {reason}; check the network, or copy the files there") from None


def open_torchvision(name: str, options: dict, data_dir: Path, download: bool = False):
    """A torchvision-layout dataset under `data_dir`, downloaded first when asked."""
    if options:
        raise CnnError(f"{name} takes no options (got {','.join(options)})")
    sub, files, _ = _LAYOUTS[name]
    folder = data_dir / sub
    missing = [f for f in files if not _present(folder, f)]
    if missing and download:
        _download(name, data_dir)
        missing = [f for f in files if not _present(folder, f)]
    if missing:
        raise CnnError(
            f"{name} not found: expected {', '.join(missing)} in {folder}; "
            f"add --download to fetch it, or point --data-dir at the folder that holds {sub}"
        )
    if name.startswith("cifar"):
        source = cifar_folder(folder, name)
        assert source is not None
        if name == "cifar10":
            source.train_files = [folder / f"data_batch_{i}" for i in range(1, 6)]
        return source
    classes = [str(d) for d in range(10)] if name == "mnist" else FASHION_CLASSES
    return IdxSource(name, folder, classes)
