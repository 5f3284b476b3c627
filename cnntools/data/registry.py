"""Dataset specs → sources → splits. Adding a kind of dataset is one entry in KINDS.

A spec is `NAME[:OPTIONS]` for a registered kind (`digits`, `cifar10`, `fake:500`,
`fake-patch:n=200,size=16`) or a folder path (image class folders, or a folder in CIFAR's
python-pickle batch layout). Every source has the same two methods: `splits()` (the splits
it has on its own) and `load(split)` → ImageSet.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
import torch

from cnntools.data.imageset import ImageSet, stratified_split
from cnntools.core.errors import CnnError, UsageError
from cnntools.output.emitter import warn

SPLITS = ("train", "val", "test")
DEFAULT_DATA_DIR = "./data"


@dataclass(frozen=True)
class Kind:
    """One registered kind of dataset: how to open it and one line describing it."""

    name: str
    opener: Callable[..., object]
    description: str


def _digits(**kw):
    from cnntools.data.synthetic import DigitsSource

    return DigitsSource(**kw)


def _fake(**kw):
    from cnntools.data.synthetic import FakeSource

    return FakeSource(**kw)


def _fake_patch(**kw):
    from cnntools.data.synthetic import FakePatchSource

    return FakePatchSource(**kw)


def _torchvision(name):
    def opener(**kw):
        from cnntools.data.torchvision_layouts import open_torchvision

        return open_torchvision(name, **kw)

    return opener


KINDS: dict[str, Kind] = {
    k.name: k
    for k in [
        Kind("digits", _digits, "scikit-learn's 8×8 handwritten digits (embedded, 1,438 train / 359 test)"),
        Kind("cifar10", _torchvision("cifar10"), "CIFAR-10 python batches under DATA_DIR/cifar-10-batches-py"),
        Kind("cifar100", _torchvision("cifar100"), "CIFAR-100 python files under DATA_DIR/cifar-100-python"),
        Kind("mnist", _torchvision("mnist"), "MNIST idx files under DATA_DIR/MNIST/raw"),
        Kind("fashion-mnist", _torchvision("fashion-mnist"), "Fashion-MNIST idx files under DATA_DIR/FashionMNIST/raw"),
        Kind("fake", _fake, "random class-patterned images: fake[:N][,size=S,channels=C,classes=K]"),
        Kind("fake-patch", _fake_patch, "label = quadrant of a bright square: fake-patch[:N][,size=S,channels=C]"),
    ]
}


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """`name:500,size=16` → ("name", {"n": "500", "size": "16"}); a bare number is `n`."""
    name, _, rest = spec.partition(":")
    options: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            key, value = "n", part
        options[key.strip()] = value.strip()
    return name.strip().lower(), options


def open_source(spec: str, data_dir: str | None = None, download: bool = False, image_size=None):
    """The source object for a spec (registered kind or folder path)."""
    if not spec or not spec.strip():
        raise CnnError("no dataset given: use --data digits, cifar10, mnist, ..., or a folder path")
    name, options = parse_spec(spec)
    if name in KINDS and not os.path.isdir(spec):
        data_root = Path(data_dir or DEFAULT_DATA_DIR)
        return KINDS[name].opener(options=options, data_dir=data_root, download=download)
    path = Path(spec).expanduser()
    if path.is_dir():
        from cnntools.data.folders import open_folder

        return open_folder(path, image_size=image_size)
    if path.exists():
        raise CnnError(f"{spec}: is a file; --data takes a dataset name or a folder of images")
    known = ", ".join(KINDS)
    raise CnnError(f"unknown dataset '{spec}': use one of {known}, or the path of an existing folder")


def load_split(
    spec: str,
    split: str = "train",
    data_dir: str | None = None,
    download: bool = False,
    val_split: float = 0.0,
    seed: int = 0,
    image_size: int | tuple[int, int] | None = None,
) -> ImageSet:
    """One split of a dataset as an ImageSet (uint8 N×C×H×W on the CPU).

    `val_split` > 0 carves a seeded, stratified validation set (that fraction of each
    class) out of train where the dataset has no validation split of its own; "train"
    then means train minus that set. `image_size` sets the common size of image folders
    whose files differ in size (default: the median height and width).
    """
    return load_splits(spec, [split], data_dir, download, val_split, seed, image_size)[split]


def available_splits(source, val_split: float = 0.0) -> list[str]:
    """The splits a source offers, counting a carved validation split."""
    native = list(source.splits())
    if "val" not in native and val_split > 0 and "train" in native:
        native.insert(native.index("train") + 1, "val")
    return [s for s in SPLITS if s in native]


def load_splits(
    spec: str,
    splits=None,
    data_dir: str | None = None,
    download: bool = False,
    val_split: float = 0.0,
    seed: int = 0,
    image_size=None,
    source=None,
) -> dict[str, ImageSet]:
    """Several splits at once (all available ones for `splits=None`), each loaded once.

    `source`: the spec's source when the caller has already opened it (`open_source`).
    """
    if not 0.0 <= val_split < 1.0:
        raise UsageError(f"--val-split {val_split}: use a fraction from 0 (none) to below 1, e.g. 0.2")
    if source is None:
        source = open_source(spec, data_dir, download, image_size)
    native = list(source.splits())
    wanted = list(splits) if splits is not None else available_splits(source, val_split)
    for split in wanted:
        if split not in SPLITS:
            raise CnnError(f"unknown split '{split}': use train, val or test")
    if "val" in native and val_split > 0 and any(s in ("train", "val") for s in wanted):
        warn(f"{spec} has its own validation split; --val-split {val_split} is ignored")
    result: dict[str, ImageSet] = {}
    carve = "val" not in native and val_split > 0
    full = None  # train as the source has it, loaded once for both carved parts
    for split in wanted:
        if split in native and not (carve and split == "train"):
            result[split] = source.load(split)
            continue
        if split in ("train", "val") and carve:
            if full is None:
                full = source.load("train")
                keep, held = stratified_split(full.labels.numpy(), val_split, seed)
            part = full.subset(keep if split == "train" else held)
            part.split = split
            result[split] = part
            continue
        if split == "val":
            raise CnnError(f"{spec} has no validation split: pass --val-split F (e.g. 0.2) to carve one out of train")
        have = ", ".join(native)
        raise CnnError(f"{spec} has no {split} split (it has: {have})")
    return result


def model_recipe(recipe, data: str | None = None, data_dir: str | None = None, name: str = "the model"):
    """The data recipe a model runs on: its own (`recipe`, the `DataRecipe` its checkpoint
    records: spec, data_dir, val_split, seed) with the user's --data and --data-dir, as a
    recipe of the same type. (Taken as given, not imported: the data layer sits below the
    checkpoint layer.)

    Without --data, or with --data naming the recorded dataset, the recipe's folder,
    validation fraction and seed stay (so `val` is exactly the split the run held out);
    --data naming another dataset drops all three (they describe the recorded one: the new
    one is read with its own splits). --data-dir, when given, always wins.
    """
    data = data or None  # an empty --data names nothing
    if data is None or data == recipe.spec:
        spec = recipe.spec
        if not spec:
            raise CnnError(f"{name}: no dataset recorded in the model; name one with --data")
        return replace(recipe, data_dir=data_dir if data_dir is not None else recipe.data_dir)
    return replace(recipe, spec=data, data_dir=data_dir, val_split=0.0, seed=0)


def match_classes(imageset: ImageSet, classes: list[str], spec: str | None = None) -> ImageSet:
    """`imageset` with its labels counted in `classes` (a model's outputs).

    Labels are mapped by class name when the dataset names its classes in another order (or
    names a subset of the model's); a dataset whose class names the model does not know is
    taken label for label (index i is the model's class i, with a warning) when it has as
    many classes, and refused otherwise. `spec`: the dataset as the user named it, for the
    messages (default: the set's own).
    """
    spec = spec or imageset.spec
    if imageset.classes == list(classes):
        return imageset
    index = {name: i for i, name in enumerate(classes)}
    if all(name in index for name in imageset.classes):
        mapping = torch.tensor([index[name] for name in imageset.classes], dtype=torch.long)
        return replace(imageset, labels=mapping[imageset.labels], classes=list(classes))
    if len(imageset.classes) == len(classes):
        warn(f"{spec} names its classes differently from the model's; labels are compared by index")
        return replace(imageset, classes=list(classes))
    raise CnnError(
        f"{spec} has {len(imageset.classes)} classes that the model ({len(classes)} classes) does not know; "
        "evaluate on the dataset the model was trained on, or one with the same class names"
    )


def load_for_model(recipe, split: str, preprocessing, classes: list[str], *,
                   data: str | None = None, data_dir: str | None = None, download: bool = False,
                   name: str = "the model") -> ImageSet:
    """One split of the data a model runs on, labelled in the model's `classes` and fitted to
    its input: the model's own dataset (`recipe`, its checkpoint's `DataRecipe`) or the
    user's --data (see `model_recipe` for what the overrides change, `match_classes` for the
    labels).

    Images come fitted to the model's channels and size (`preprocessing`, a
    `cnntools.inference.preprocessing.Preprocessing`), piece by piece (a mapped dataset stays mapped),
    except for a model with a resize rule (torchvision's and timm's resize + centre crop):
    its images come at the dataset's own size, because that rule is not idempotent and the
    forward pass applies it once. `name` (the model's) goes into the error when no dataset
    is known.
    """
    recipe = model_recipe(recipe, data, data_dir, name)
    # Folders decode straight to the model's size (the same decoding as `eval --image`).
    size = preprocessing.size if preprocessing.resize is None else None
    imageset = load_split(recipe.spec, split, data_dir=recipe.data_dir, download=download, val_split=recipe.val_split,
                          seed=recipe.seed, image_size=size)
    imageset = match_classes(imageset, classes, recipe.spec)
    if preprocessing.resize is not None or tuple(imageset.images.shape[1:]) == preprocessing.shape:
        return imageset
    return imageset.transformed(preprocessing.fit, preprocessing.shape)
