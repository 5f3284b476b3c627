"""Sizes, classes, class balance, exact mean/std and sample grids of a dataset.

For each split: its size and class counts; the class names, image shape, dtype and
channels; the imbalance ratio (largest / smallest class of the training split) and the
class weights that balance it (scikit-learn's 'balanced': n_samples / (n_classes × count));
the exact per-channel mean and std of the training split (after --val-split) — the
population std over every pixel of every image, accumulated exactly and reported in
float64 for pixels scaled to 0..1 (also ×255), not an average of per-image stds; the
number of exact duplicate images between train and test; and for image folders the
width/height statistics of the original files and the files that could not be read.

\b
Examples:
  cnntools dataset-stats
  cnntools dataset-stats --data cifar10 --data-dir ~/data --format json
  cnntools dataset-stats --data ./flowers --grid samples.png
  cnntools dataset-stats --data digits --augment-preview aug.png --augment flip,crop:2,rotate:20
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cnntools.cli import options
from cnntools.core.errors import UsageError


def _parse_size(text: Optional[str]):
    if text is None:
        return None
    parts = text.lower().replace("×", "x").split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"--image-size '{text}': use S (square) or HxW, e.g. 64 or 48x64") from None
    if len(numbers) not in (1, 2) or min(numbers) < 1:
        raise UsageError(f"--image-size '{text}': use S (square) or HxW with positive numbers")
    return numbers[0] if len(numbers) == 1 else (numbers[0], numbers[1])


def main(
    data: options.Data = "digits",
    data_dir: options.DataDir = None,
    download: options.Download = False,
    val_split: Annotated[
        float, typer.Option("--val-split", help="Carve this fraction of each class out of train as val (datasets without one).")
    ] = 0.0,
    image_size: Annotated[
        Optional[str],
        typer.Option("--image-size", metavar="SIZE", help="Image folders: common size S or HxW (default: median height and width of the files)."),
    ] = None,
    grid: Annotated[Optional[str], typer.Option("--grid", metavar="FILE", help="Write a labelled grid of sample images (PNG, SVG, PDF).")] = None,
    grid_split: Annotated[options.SplitChoice, typer.Option("--grid-split", help="Split the grid and preview draw from.")] = "train",
    per_class: Annotated[int, typer.Option("--grid-per-class", metavar="N", min=1, max=32, help="Grid images per class.")] = 8,
    augment_preview: Annotated[
        Optional[str], typer.Option("--augment-preview", metavar="FILE", help="Write originals next to augmented versions (PNG, SVG, PDF).")
    ] = None,
    augment: Annotated[
        str, typer.Option(
            "--augment", metavar="SPEC",
            help="Augmentation for the preview, exactly as train --augment applies it to this data: flip, crop:P, "
            "jitter:J, rotate:D, rrc:S, comma-separated; auto = rotate:10,crop:1 for digit-like data (a digits "
            "dataset, one channel or at most 28 px), none (nothing to preview) elsewhere.",
        ),
    ] = "auto",
    preview_images: Annotated[int, typer.Option("--preview-images", min=1, max=32, help="Originals in the preview.")] = 6,
    versions: Annotated[int, typer.Option("--versions", min=1, max=16, help="Augmented versions per original.")] = 5,
    seed: options.Seed = 0,
    threads: options.Threads = None,
    fmt: options.Format = "table",
    quiet: options.Quiet = False,
    debug: options.Debug = False,
) -> None:
    """Sizes, class counts, imbalance, exact per-channel mean/std (population std over all training pixels, float64), sample grids."""
    from cnntools.output import emitter as output

    options.start_run(quiet=quiet, debug=debug, threads=threads)
    from cnntools.output import files

    if grid:
        files.figure_format(grid)
    if augment_preview:
        files.figure_format(augment_preview)

    from cnntools.data import load_splits, parse_augment
    from cnntools.data.augment import augment_for
    from cnntools.data.describe import describe

    if augment_preview:
        parse_augment(augment if augment.strip().lower() != "auto" else "none")  # a bad spec fails before loading
    splits = load_splits(data, None, data_dir, download, val_split, seed, _parse_size(image_size))
    aug = None
    if augment_preview:
        # Exactly what `train --augment` would apply to this data set (the same resolver).
        resolved, warning = augment_for(augment, data, splits["train"] if "train" in splits else next(iter(splits.values())))
        if warning:
            output.warn(warning)
        aug = parse_augment(resolved)
        if aug is None:
            raise UsageError(f"--augment {augment} resolves to none on {data}: train would not augment it; "
                           "name a spec to preview (e.g. --augment crop:4, or flip,crop:4 where a mirror image keeps its class)")
    doc = describe(data, splits)
    doc["data_dir"] = data_dir
    doc["val_split"] = val_split
    doc["seed"] = seed

    if grid or augment_preview:
        if grid_split not in splits:
            raise UsageError(f"--grid-split {grid_split}: {data} has only {', '.join(splits)}")
        source = splits[grid_split]
        from cnntools.output import plots

        if grid:
            fig = plots.class_sample_grid(
                source.images, source.labels.numpy(), source.classes, per_class=per_class, seed=seed,
                title=f"{data} — {grid_split} samples ({len(source):,} images)",
            )
            plots.save_figure(fig, grid, dpi=110)
            doc["grid"] = grid
        if augment_preview:
            _augment_preview(source, aug, data, seed, preview_images, versions, augment_preview)
            doc["augment_preview"] = augment_preview
            doc["augment"] = aug.spec

    split_names = list(doc["splits"])
    rows = [
        {"class": name, **{s: doc["splits"][s]["class_counts"][name] for s in split_names},
         "class_weight": doc["class_weights"][name]}
        for name in doc["classes"]
    ]
    # CSV is long (one row per number, named by its path in the JSON document): a wide
    # table cannot hold the per-split counts, the per-channel statistics and the sizes at once.
    output.emit(doc, fmt, schema="dataset-stats", rows=output.long_rows(doc), columns=["field", "value"],
                render_table=lambda: _render_tables(doc, rows, split_names))


main.__doc__ = __doc__


def _augment_preview(source, aug, data: str, seed: int, images: int, versions: int, path: str) -> None:
    """--augment-preview: seeded originals beside `versions` augmented copies each."""
    import torch

    from cnntools.output import plots

    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(source), generator=gen)[:images]
    originals = source.images[pick]
    batch = originals.float().div(255).repeat_interleave(versions, dim=0)
    augmented = aug(batch, gen).view(len(pick), versions, *originals.shape[1:])
    fig = plots.augment_preview_grid(
        list(originals), [list(a) for a in augmented],
        row_labels=[source.classes[int(source.labels[i])] for i in pick],
        title=f"{data}: augment {aug.spec}",
    )
    plots.save_figure(fig, path, dpi=110)


def _render_tables(doc: dict, rows: list[dict], split_names: list[str]) -> None:
    from cnntools.output.emitter import data_stream, format_cell, print_table

    stream = data_stream()
    c, h, w = doc["image_shape"]
    overview = [
        {"property": "dataset", "value": doc["dataset"]},
        {"property": "classes", "value": str(doc["num_classes"])},
        *({"property": f"{s} images", "value": f"{doc['splits'][s]['count']:,}"} for s in split_names),
        {"property": "image shape (C×H×W)", "value": f"{c}×{h}×{w}"},
        {"property": "dtype", "value": doc["dtype"]},
        {"property": f"mean ({doc['stats_split']}, 0..1)", "value": format_cell(doc["mean"], 6)},
        {"property": f"std ({doc['stats_split']}, 0..1)", "value": format_cell(doc["std"], 6)},
        {"property": "mean (0..255)", "value": format_cell(doc["mean_255"], 3)},
        {"property": "std (0..255)", "value": format_cell(doc["std_255"], 3)},
        {"property": "imbalance ratio (max/min)", "value": format_cell(doc["imbalance_ratio"], 3)},
    ]
    for pair, count in doc["duplicates"].items():
        a, b = pair.split("_")
        overview.append({"property": f"{b} images also in {a}", "value": str(count)})
    folder = doc.get("folder")
    if folder:
        overview.append({"property": "files read / found", "value": f"{folder['readable']:,} / {folder['files']:,}"})
        ch, cw = folder["common_size"]
        overview.append({"property": "common size (H×W)", "value": f"{ch}×{cw} ({folder['size_rule']})"})
        cache = folder.get("cache") or {}
        overview.append({"property": "cache", "value": "hit" if cache.get("hit") else ("written" if cache.get("written") else "off")})
    for key in ("grid", "augment_preview"):
        if key in doc:
            overview.append({"property": key.replace("_", " "), "value": doc[key]})
    print_table(overview, ["property", "value"], title="Dataset")
    stream.write("\n")
    print_table(rows, ["class", *split_names, "class_weight"], title="Class counts (class_weight: balanced)")
    if folder:
        stream.write("\n")
        size_rows = [
            {"": axis, **{k: f"{v:.1f}" if isinstance(v, float) else v for k, v in folder[axis].items()}}
            for axis in ("width", "height")
        ]
        print_table(size_rows, ["", "mean", "median", "std", "min", "max"], title="Original file sizes (pixels)")
        if folder["unreadable"]:
            stream.write("\n")
            print_table(folder["unreadable"], ["path", "reason"], title=f"Unreadable files ({len(folder['unreadable'])})")
