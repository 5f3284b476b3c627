"""Datasets as uint8 tensors, normalisation and batched on-device augmentation.

    from cnntools.data import load_split, BatchLoader, parse_augment, normalization
    train = load_split("digits", "train").resized(32, channels=3)
    mean, std = normalization("dataset", train)
    loader = BatchLoader(train, batch_size=128, device=dev, augment=parse_augment("flip,crop:4"),
                         mean=mean, std=std)
"""

from cnntools.data.augment import Augment, parse_augment
from cnntools.data.imageset import ImageSet, convert_channels, resize_uint8, stratified_split
from cnntools.data.loader import BatchLoader
from cnntools.data.registry import (
    KINDS,
    SPLITS,
    available_splits,
    load_for_model,
    load_split,
    load_splits,
    match_classes,
    model_recipe,
    open_source,
    parse_spec,
)
from cnntools.data.stats import channel_stats, normalization

__all__ = [
    "Augment",
    "BatchLoader",
    "ImageSet",
    "KINDS",
    "SPLITS",
    "available_splits",
    "channel_stats",
    "convert_channels",
    "load_for_model",
    "load_split",
    "load_splits",
    "match_classes",
    "model_recipe",
    "normalization",
    "open_source",
    "parse_augment",
    "parse_spec",
    "resize_uint8",
    "stratified_split",
]
