"""The JSON document of dataset-stats: what a dataset holds.

Fields as (path, type, meaning) in the notation of cnntools.schemas.
"""

from __future__ import annotations

DECLARED: dict[str, dict] = {
    "dataset-stats": {
        "command": "dataset-stats",
        "summary": "sizes, classes, counts, channel statistics, duplicates and folder statistics of a dataset. Its CSV is long: columns `field` (the dotted path of a value in this document, list items numbered) and `value`, one row per value.",
        "fields": [
            ("dataset", "string", "the --data spec"),
            ("classes", "array", "class names"),
            ("num_classes", "integer", "number of classes"),
            ("image_shape", "array", "[C, H, W] of the stored images"),
            ("dtype", "string", "dtype of the stored images (uint8)"),
            ("channels", "integer", "image channels"),
            ("splits", "object", "per split (train, val, test)"),
            ("splits.*", "object", "one split"),
            ("splits.*.count", "integer", "images in the split"),
            ("splits.*.class_counts", "object", "class name → images of that class"),
            ("imbalance_ratio", "number|null", "largest / smallest class count of the statistics split"),
            ("class_weights", "object", "class name → balanced weight n / (k · count) (null for an absent class)"),
            ("stats_split", "string", "the split the statistics are computed on"),
            ("mean", "array", "per-channel mean, pixels scaled to 0..1"),
            ("std", "array", "per-channel standard deviation, pixels scaled to 0..1"),
            ("mean_255", "array", "per-channel mean on the 0..255 scale"),
            ("std_255", "array", "per-channel standard deviation on the 0..255 scale"),
            ("duplicates", "object", "split pair (train_test, train_val, val_test) → images of the second also in the first"),
            ("folder?", "object", "image folders only: the files"),
            ("folder.files", "integer", "image files found"),
            ("folder.readable", "integer", "image files decoded"),
            ("folder.common_size", "array|null", "[H, W] every image was resized to"),
            ("folder.size_rule", "string|null", "how the common size was chosen"),
            ("folder.width", "object", "original widths: mean, median, std, min, max"),
            ("folder.height", "object", "original heights: mean, median, std, min, max"),
            ("folder.unreadable", "array", "files that could not be decoded: path, reason, split"),
            ("folder.cache", "object|null", "the decoded-image cache used"),
            ("data_dir", "string|null", "--data-dir"),
            ("val_split", "number", "--val-split"),
            ("seed", "integer", "--seed"),
            ("grid?", "string", "the --grid file written"),
            ("augment_preview?", "string", "the --augment-preview file written"),
            ("augment?", "string", "the augmentation previewed"),
        ],
    },
}
