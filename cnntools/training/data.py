"""The data of a training run: its train and validation splits at the model's input size,
and the test split `--test-each-epoch` measures."""

from __future__ import annotations

from cnntools.core.errors import CnnError
from cnntools.training.config import TrainConfig


def load_training_data(cfg: TrainConfig):
    """(train, val or None, native size) as ImageSets at the model's input size."""
    from cnntools.data import available_splits, load_splits, open_source
    from cnntools.models import input_size_for

    source = open_source(cfg.data, cfg.data_dir, cfg.download, cfg.image_size)
    if getattr(source, "decodes_files", False) and cfg.image_size is None:
        # Decode the files straight to the model's size (once), as `eval --image` will decode one file.
        h, w = source.decode_size()
        size = input_size_for(cfg.arch, min(h, w))
        if (h, w) != (size, size):
            source = source.at_size(size)
    have = available_splits(source, cfg.val_split)
    if "train" not in have:
        raise CnnError(f"{cfg.data} has no train split (it has: {', '.join(have)})")
    wanted = ["train"] + (["val"] if "val" in have else [])
    splits = load_splits(cfg.data, wanted, cfg.data_dir, cfg.download, cfg.val_split, cfg.seed, cfg.image_size,
                         source=source)
    train_set = splits["train"]
    if len(train_set) == 0:
        raise CnnError(f"{cfg.data}: the train split is empty")
    h, w = train_set.image_size
    size = cfg.image_size or input_size_for(cfg.arch, min(h, w))
    channels = cfg.channels or train_set.channels
    train_set = train_set.resized(size, channels)
    val_set = splits.get("val")
    if val_set is not None:
        val_set = val_set.resized(size, channels) if len(val_set) else None
    return train_set, val_set, size


def load_test_split(cfg: TrainConfig, like):
    """The test split for `--test-each-epoch`, at the size and channels of the train set `like`."""
    from cnntools.data import load_split

    # A folder's test split decoded at the train set's size: the store (and, inside
    # `shared_walks`, the walk and the loaded splits) the train split came from.
    size = cfg.image_size or (int(like.image_size[0]), int(like.image_size[1]))
    try:
        test_set = load_split(cfg.data, "test", cfg.data_dir, cfg.download, 0.0, cfg.seed, size)
    except CnnError as error:
        raise CnnError(f"--test-each-epoch: {error}") from None
    if len(test_set) == 0:
        raise CnnError(f"--test-each-epoch: the test split of {cfg.data} is empty")
    if list(test_set.classes) != list(like.classes):
        raise CnnError(f"--test-each-epoch: the test split of {cfg.data} names other classes than its train split")
    return test_set.resized(int(like.image_size[0]), like.channels)
