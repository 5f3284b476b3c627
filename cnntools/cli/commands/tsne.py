"""`cnntools tsne`: t-SNE of raw pixels or of a checkpoint's layer features, with class-separation numbers."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

from cnntools.cli import options
from cnntools.output import emitter as output
from cnntools.core import runtime
from cnntools.cli.completion import complete_model

MethodChoice = Literal["auto", "sklearn", "opentsne"]
DEFAULT_POINTS = 2000


# -o/--output in this command's --help (the shared option's help is generic).
OUTPUT_HELP = "Write the scatter plot (PNG, SVG or PDF by extension); - for stdout."

def main(
    checkpoint: Annotated[
        Optional[str],
        typer.Option("--checkpoint", "-c", metavar="CHECKPOINT", autocompletion=complete_model, help="Embed this model's features (FILE.safetensors, - or torchvision:NAME) instead of raw pixels."),
    ] = None,
    layer: options.Layer = None,
    data: options.Data = None,
    data_dir: options.DataDir = None,
    split: options.Split = "test",
    download: options.Download = False,
    n: options.Num = None,
    pca: Annotated[
        Optional[int], typer.Option("--pca", help="PCA components before t-SNE (default 50 when the dimension is larger; 0 = off).")
    ] = None,
    perplexity: Annotated[float, typer.Option("--perplexity", help="t-SNE perplexity (effective number of neighbours).")] = 30.0,
    method: Annotated[
        MethodChoice, typer.Option("--method", help="t-SNE engine: auto (openTSNE if installed), sklearn (TSNE defaults), opentsne.")
    ] = "auto",
    k: Annotated[int, typer.Option("--k", help="Neighbours for k-NN mixing, k-NN accuracy and trustworthiness.")] = 10,
    top_pairs: Annotated[int, typer.Option("--top-pairs", help="How many most-overlapping class pairs to show.")] = 5,
    centroids: Annotated[
        bool, typer.Option("--centroids", help="Print the full class-centroid distance matrix of the 2-D embedding "
                           "(rows and columns labelled; csv: the matrix instead of the pairs).")
    ] = False,
    plot: options.Output = None,
    embedding: Annotated[
        Optional[str], typer.Option("--embedding", metavar="FILE", help="Write the 2-D points as CSV (index,label,label_name,x,y); - for stdout.")
    ] = None,
    batch_size: options.BatchSize = 256,
    device: options.Device = "auto",
    threads: options.Threads = None,
    precision: options.Precision = "auto",
    seed: options.Seed = 0,
    fmt: options.Format = "table",
    quiet: options.Quiet = False,
    trust_code: options.TrustCode = False,
    debug: options.Debug = False,
) -> None:
    """t-SNE of raw pixels or a checkpoint's layer features: plot, centroid distances, overlapping pairs.

    Embeds a seeded, stratified subset of a split (-n points, default 2,000 or all when the
    split is smaller) in 2-D (PCA to 50 dimensions first when the
    input is larger), plots it by class, and measures how well the classes separate: the
    class-centroid distance matrix in the embedding (as the course notebooks compute it) and
    in the original feature space, the k-NN class mixing of every class pair in the original
    space (share of the pair's nearest-neighbour slots that cross to the other class), the
    most overlapping pairs, leave-one-out k-NN accuracy and scikit-learn's trustworthiness.
    With --checkpoint the k-NN accuracy and mixing of the same images' pixels (as the model
    sees them, before normalisation) are
    reported beside the features' (knn_accuracy_pixels, knn_mixing_pixels): did training
    separate the classes?
    With --checkpoint the features are the input of the last Linear layer (the classifier)
    unless --layer names another module (its output is used); the dataset defaults to
    digits, or the checkpoint's own. -o writes the scatter plot. --method auto uses openTSNE
    when installed (Barnes-Hut below 10,000 points, FFT-accelerated above; several times
    faster than scikit-learn at the same trustworthiness), sklearn forces scikit-learn's
    TSNE with its defaults. The default split is test. Table: summary and top pairs; csv:
    every pair ranked; json: everything.

    \b
    Examples:
      cnntools tsne --data digits -o pixels.png
      cnntools tsne --checkpoint model.safetensors -o features.png --top-pairs 3
      cnntools tsne --embedding - -q | head
      cnntools tsne --centroids --format csv > centroids.csv
      cnntools tsne --checkpoint model.safetensors --format json | jq .summary
    """
    output.configure(quiet=quiet, debug=debug)
    runtime.use_threads(threads)
    from cnntools.core.errors import CnnError, UsageError

    from cnntools.output.files import check_output, figure_format

    if plot is not None:
        figure_format(plot)
    check_output(embedding)
    if n is not None and n < 4:
        raise UsageError(f"--num must be at least 4 (t-SNE needs a few points), got {n}")
    if k < 1:
        raise UsageError(f"--k must be at least 1, got {k}")
    if top_pairs < 0:
        raise UsageError(f"--top-pairs must be 0 or more, got {top_pairs}")
    if layer is not None and checkpoint is None:
        raise UsageError("--layer needs --checkpoint (raw pixels have no layers)")

    import time

    import numpy as np

    from cnntools.interpret import tsne as lib

    runtime.seed_everything(seed)
    started = time.perf_counter()
    source: dict = {"split": split, "seed": seed}
    if checkpoint is None:
        from cnntools.data import load_split

        images = load_split(data or "digits", split, data_dir=data_dir, download=download, seed=seed)
        source.update(kind="pixels", data=images.spec)
        idx = _subset(images.labels.numpy(), n, seed, lib)
        _check_sample(images, idx)
        features = _pixels(images, idx)
        what = f"raw pixels ({_shape(images)}, as stored)"
    else:
        from cnntools.checkpoint import load_model

        dev = runtime.resolve_device(device)
        lm = load_model(checkpoint, dev, trust_code=trust_code)
        from cnntools.data import load_for_model
        from cnntools.data.imageset import IndexedRows
        from cnntools.inference.memory import fit_model_batch

        batch_size = fit_model_batch(lm, batch_size)  # before the first forward pass
        images = load_for_model(lm.meta.data, split, lm.preprocessing, lm.classes, data=data, data_dir=data_dir,
                                download=download, name=lm.source)
        idx = _subset(images.labels.numpy(), n, seed, lib)
        _check_sample(images, idx)
        features, layer_name, hook = lib.layer_features(
            lm.model, lm.preprocessing, IndexedRows(images.images, idx), layer=layer, batch_size=batch_size,
            precision=runtime.resolve_precision(precision, dev), arch=lm.meta.arch_name,
        )
        source.update(kind="features", data=images.spec, checkpoint=checkpoint, arch=lm.meta.arch_name,
                      layer=layer_name, hook=hook)
        what = f"{lm.meta.arch_name} {layer_name} {'input' if hook == 'input' else 'output'}"
    labels = images.labels.numpy()[idx].astype(np.int64)
    classes = [str(c) for c in images.classes]
    output.info(f"t-SNE of {what}: {len(idx)} points × {features.shape[1]} dims, {len(classes)} classes")
    try:
        result = lib.analyse(features, labels, classes, method=method, perplexity=perplexity, pca=pca, k=k, seed=seed)
    except lib.TsneInputError as error:
        raise (UsageError if isinstance(error, UsageError) else CnnError)(str(error)) from None
    summary = result.summary()
    if checkpoint is not None:
        # The same images' raw pixels, measured the same way: did training separate the classes?
        # At the model's input size, which need not be the data's own: `tsne` without a
        # checkpoint measures the stored size, so the two numbers name their sizes.
        pixels = _pixels(images, idx)
        baseline = lib.knn_separation(pixels, labels, len(classes), result.k)
        summary["knn_accuracy_pixels"] = baseline["knn_accuracy"]
        summary["knn_mixing_pixels"] = baseline["knn_mixing_overall"]
    summary["pixels_shape"] = _shape(images)
    result.timings["total_s"] = time.perf_counter() - started

    if embedding is not None:
        from cnntools.output import files

        rows = [
            {"index": int(i), "label": int(l), "label_name": classes[l], "x": float(p[0]), "y": float(p[1])}
            for i, l, p in zip(idx, labels, result.embedding)
        ]
        files.write_text(embedding, output.csv_text(rows, ["index", "label", "label_name", "x", "y"]))
    if plot is not None:
        from cnntools.output import plots

        s = summary
        title = f"t-SNE of {what} — {source['data']} {split}, {s['points']} points"
        pca_text = f"PCA {s['pca_components']} → " if s["pca_components"] else ""
        subtitle = (
            f"{pca_text}{s['method']}, perplexity {s['perplexity']:g} | {k}-NN accuracy {s['knn_accuracy_features']:.3f}, "
            f"k-NN mixing {s['knn_mixing_overall']:.3f}, trustworthiness {s['trustworthiness']:.3f}"
        )
        if "knn_mixing_pixels" in s:
            subtitle += f"\nraw pixels of the same images at the model's input ({s['pixels_shape']}): {k}-NN accuracy {s['knn_accuracy_pixels']:.3f}, k-NN mixing {s['knn_mixing_pixels']:.3f}"
        plots.save_figure(plots.scatter_by_class(result.embedding, labels, classes, title, subtitle), plot, dpi=120)

    pairs = result.pairs()
    doc = {
        "source": source,
        "n_requested": n,
        "indices": idx.tolist(),
        "classes": classes,
        "class_counts": result.class_counts(),
        "summary": summary,
        "centroid_distance_embedding": result.centroid_distance_embedding,
        "centroid_distance_features": result.centroid_distance_features,
        "knn_mixing": result.mixing,
        "top_pairs": pairs[:top_pairs],
        "pairs": pairs,
        "timings": result.timings,
        "plot": plot,
        "embedding": embedding,
    }
    columns = ["rank", "class_a", "class_b", "knn_mixing", "centroid_distance_embedding", "centroid_distance_features"]
    headers = {"knn_mixing": "kNN mixing", "centroid_distance_embedding": "centroid dist (2-D)",
               "centroid_distance_features": "centroid dist (features)"}

    matrix = [{"class": a, **{b: float(d) for b, d in zip(classes, row)}}
              for a, row in zip(classes, result.centroid_distance_embedding)]

    def render() -> None:
        output.print_table([{"measure": key, "value": value} for key, value in summary.items()], ["measure", "value"],
                           title=f"t-SNE of {what} ({source['data']} {split})")
        output.print_table(pairs[:top_pairs], columns, title=f"Most overlapping class pairs (k-NN mixing, k={result.k})",
                           headers=headers)
        if centroids:
            output.print_table(matrix, ["class"] + list(classes),
                               title="Class-centroid distances in the 2-D embedding (row class to column class)")

    if centroids and fmt == "csv":
        output.emit(doc, fmt, schema="tsne", rows=matrix, columns=["class"] + list(classes))
    else:
        output.emit(doc, fmt, schema="tsne", rows=pairs, columns=columns, render_table=render)


def _shape(images) -> str:
    """C×H×W of the images as loaded (for a checkpoint: fitted to the model's input)."""
    return "×".join(str(d) for d in images.images.shape[1:])


def _check_sample(images, idx) -> None:
    """Refuse a sample whose pixels cannot be held as float32 rows (what `_pixels` makes),
    before any of it is made."""
    from cnntools.inference.memory import gathered_bytes

    runtime.check_allocation(gathered_bytes(len(idx), *images.images.shape[1:], itemsize=4),
                             f"a t-SNE sample of {len(idx):,} {'×'.join(map(str, images.images.shape[1:]))} images")


def _pixels(images, idx):
    """The chosen images' raw pixels as float32 rows in [0, 1] (as the model sees them, before
    normalisation), filled piece by piece: no uint8 or unscaled copy of the whole sample."""
    import numpy as np

    from cnntools.data.imageset import chunk_rows

    dims = int(np.prod(images.images.shape[1:]))
    rows = np.empty((len(idx), dims), dtype=np.float32)
    step = chunk_rows(dims * 4)
    for a in range(0, len(idx), step):
        piece = images.images[idx[a:a + step]].reshape(-1, dims).numpy()
        np.divide(piece, np.float32(255.0), out=rows[a:a + len(piece)], casting="unsafe")
    return rows


def _subset(labels, n, seed, lib):
    if n is None:
        n = DEFAULT_POINTS
    elif n > len(labels):
        output.info(f"the split has {len(labels)} images, fewer than -n {n}: using all of them")
    return lib.stratified_subset(labels, n, seed)
