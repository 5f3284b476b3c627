"""`cnntools tsne`: t-SNE of raw pixels or of a checkpoint's layer features, with class-separation numbers."""

from __future__ import annotations

import contextlib

from typing import Annotated, Literal, Optional

import typer

from cnntools.cli import options
from cnntools.output import emitter as output
from cnntools.cli.completion import complete_model
from cnntools.core.errors import CnnError, UsageError

MethodChoice = Literal["auto", "sklearn", "opentsne"]


# -o/--output in this command's --help (the shared option's help is generic).
OUTPUT_HELP = "Write the scatter plot (PNG, SVG or PDF by extension); - for stdout."


@options.model_run_options()
def main(
    checkpoint: Annotated[
        Optional[str],
        typer.Option("--checkpoint", "-c", metavar="CHECKPOINT", autocompletion=complete_model, help="Embed this model's features (FILE.safetensors, - or torchvision:NAME) instead of raw pixels."),
    ] = None,
    layer: options.Layer = None,
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
    opts: options.ModelRunOptions = None,
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
    run = opts.start()
    _check(plot, embedding, n, k, top_pairs, layer, checkpoint)
    import time

    from cnntools.interpret import tsne as lib
    from cnntools.output.progress import progress_bar

    run.seed_all()
    started = time.perf_counter()
    lm, images, batch_size = _load(checkpoint, opts, run)
    points = min(len(images), n or lib.DEFAULT_POINTS)
    with progress_bar(f"features of {lm.source}", points, elapsed=True) if lm else contextlib.nullcontext() as bar:
        try:
            out = lib.embed_split(images, lm=lm, checkpoint=checkpoint, layer=layer, n=n, seed=opts.seed, method=method,
                                  perplexity=perplexity, pca=pca, k=k, batch_size=batch_size, precision=run.precision,
                                  progress=bar, on_start=_say_start)
        except lib.TsneInputError as error:
            raise (UsageError if isinstance(error, UsageError) else CnnError)(str(error)) from None
    out.result.timings["total_s"] = time.perf_counter() - started
    if embedding is not None:
        _write_embedding(out, embedding)
    if plot is not None:
        _plot(out, plot, k)
    _render(out, n, top_pairs, centroids, plot, embedding, opts.fmt)


def _check(plot, embedding, n, k, top_pairs, layer, checkpoint) -> None:
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


def _load(checkpoint, opts, run):
    """(the loaded model or None, the split's ImageSet, the batch size that fits)."""
    if checkpoint is None:
        from cnntools.data import load_split

        images = load_split(opts.data or "digits", opts.split, data_dir=opts.data_dir, download=opts.download, seed=opts.seed)
        return None, images, opts.batch_size
    from cnntools.checkpoint import load_model
    from cnntools.data import load_for_model
    from cnntools.inference.memory import fit_model_batch

    run.ready()
    lm = load_model(checkpoint, run.device, trust_code=opts.trust_code)
    batch_size = fit_model_batch(lm, opts.batch_size)  # before the first forward pass
    return lm, load_for_model(lm.meta.data, opts.split, lm.preprocessing, lm.classes, data=opts.data,
                              data_dir=opts.data_dir, download=opts.download, name=lm.source), batch_size


def _say_start(what: str, points: int, dims: int, classes: int) -> None:
    output.info(f"t-SNE of {what}: {points} points × {dims} dims, {classes} classes")


def _write_embedding(out, path: str) -> None:
    from cnntools.output import files

    rows = [
        {"index": int(i), "label": int(l), "label_name": out.classes[l], "x": float(p[0]), "y": float(p[1])}
        for i, l, p in zip(out.indices, out.labels, out.result.embedding)
    ]
    files.write_text(path, output.csv_text(rows, ["index", "label", "label_name", "x", "y"]))


def _plot(out, path: str, k: int) -> None:
    from cnntools.output import plots

    s = out.summary
    title = f"t-SNE of {out.what} — {out.source['data']} {out.source['split']}, {s['points']} points"
    pca_text = f"PCA {s['pca_components']} → " if s["pca_components"] else ""
    subtitle = (
        f"{pca_text}{s['method']}, perplexity {s['perplexity']:g} | {k}-NN accuracy {s['knn_accuracy_features']:.3f}, "
        f"k-NN mixing {s['knn_mixing_overall']:.3f}, trustworthiness {s['trustworthiness']:.3f}"
    )
    if "knn_mixing_pixels" in s:
        subtitle += f"\nraw pixels of the same images at the model's input ({s['pixels_shape']}): {k}-NN accuracy {s['knn_accuracy_pixels']:.3f}, k-NN mixing {s['knn_mixing_pixels']:.3f}"
    plots.save_figure(plots.scatter_by_class(out.result.embedding, out.labels, out.classes, title, subtitle), path, dpi=120)


def _render(out, n, top_pairs, centroids, plot, embedding, fmt) -> None:
    result, summary, classes, source = out.result, out.summary, out.classes, out.source
    pairs = result.pairs()
    doc = {
        "source": source,
        "n_requested": n,
        "indices": out.indices.tolist(),
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
                           title=f"t-SNE of {out.what} ({source['data']} {source['split']})")
        output.print_table(pairs[:top_pairs], columns, title=f"Most overlapping class pairs (k-NN mixing, k={result.k})",
                           headers=headers)
        if centroids:
            output.print_table(matrix, ["class"] + list(classes),
                               title="Class-centroid distances in the 2-D embedding (row class to column class)")

    if centroids and fmt == "csv":
        output.emit(doc, fmt, schema="tsne", rows=matrix, columns=["class"] + list(classes))
    else:
        output.emit(doc, fmt, schema="tsne", rows=pairs, columns=columns, render_table=render)
