"""Everything `dataset-stats` reports about a dataset, as one plain dict."""

from __future__ import annotations

import hashlib

import numpy as np

from cnntools.data.imageset import ImageSet, iter_chunks
from cnntools.data.stats import channel_stats


def balanced_class_weights(counts: list[int]) -> list[float | None]:
    """scikit-learn's 'balanced' weights: n_samples / (n_classes × count); None for an absent class."""
    n = sum(counts)
    k = sum(1 for c in counts if c > 0)
    return [n / (k * c) if c > 0 else None for c in counts]


def image_digests(images) -> list[bytes]:
    """A digest of every image's bytes, in order (exact duplicates share one); `images` is a
    uint8 tensor or an ImageSet, read in pieces bounded in bytes."""
    chunks = images.chunks() if hasattr(images, "chunks") else iter_chunks(images)
    digests = []
    for _, chunk in chunks:
        array = np.ascontiguousarray(chunk.numpy()).reshape(len(chunk), -1)
        digests.extend(hashlib.blake2b(row.data, digest_size=16).digest() for row in array)
    return digests


def count_duplicates(reference: ImageSet, other: ImageSet, digests=None) -> int:
    """How many images of `other` have an exact copy (same shape, same bytes) in `reference`.

    `digests(imageset)` gives a split's image digests (default: `image_digests` of its images;
    `describe` passes a memo so each split is hashed once across the pairs).
    """
    if reference.images.shape[1:] != other.images.shape[1:]:
        return 0
    digests = digests or image_digests
    known = set(digests(reference))
    return sum(1 for digest in digests(other) if digest in known)


def summary(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "std": float(values.std()),
        "min": int(values.min()),
        "max": int(values.max()),
    }


def describe(spec: str, splits: dict[str, ImageSet]) -> dict:
    """Sizes, classes, counts, exact channel statistics, folder file statistics and duplicates."""
    names = list(splits)
    first = splits[names[0]]
    classes = first.classes
    stats_split = "train" if "train" in splits else names[0]
    base = splits[stats_split]
    mean, std = channel_stats(base)
    doc: dict = {
        "dataset": spec,
        "classes": classes,
        "num_classes": len(classes),
        "image_shape": [base.channels, *base.image_size],
        "dtype": str(base.images.dtype).replace("torch.", ""),
        "channels": base.channels,
        "splits": {},
    }
    for name, s in splits.items():
        doc["splits"][name] = {
            "count": len(s),
            "class_counts": dict(zip(classes, s.class_counts())),
        }
    counts = base.class_counts()
    present = [c for c in counts if c > 0]
    doc["imbalance_ratio"] = max(present) / min(present) if present else None
    doc["class_weights"] = dict(zip(classes, balanced_class_weights(counts)))
    doc["stats_split"] = stats_split
    doc["mean"] = mean
    doc["std"] = std
    doc["mean_255"] = [m * 255 for m in mean]
    doc["std_255"] = [s * 255 for s in std]
    duplicates = {}
    hashed: dict[int, list[bytes]] = {}

    def digests(s: ImageSet) -> list[bytes]:
        if id(s) not in hashed:
            hashed[id(s)] = image_digests(s)
        return hashed[id(s)]

    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        if a in splits and b in splits:
            duplicates[f"{a}_{b}"] = count_duplicates(splits[a], splits[b], digests)
    doc["duplicates"] = duplicates
    if base.paths is not None and "per_image_original_size" in base.meta:
        sizes = [size for s in splits.values() for size in s.meta.get("per_image_original_size", [])]
        unreadable = [u for s in splits.values() for u in s.meta.get("unreadable", [])]
        doc["folder"] = {
            "files": len(sizes) + len(unreadable),
            "readable": len(sizes),
            "common_size": base.meta.get("common_size"),
            "size_rule": base.meta.get("size_rule"),
            "width": summary([w for w, _ in sizes]),
            "height": summary([h for _, h in sizes]),
            "unreadable": [{"path": p, "reason": r, "split": sp} for p, r, sp in unreadable],
            "cache": base.meta.get("cache"),
        }
    return doc
