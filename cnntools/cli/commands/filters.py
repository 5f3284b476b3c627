"""`cnntools filters`: a conv layer's kernels, and the dataset images that activate chosen filters most."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

from cnntools.cli import options
from cnntools.output import emitter as output
from cnntools.cli.completion import complete_model
from cnntools.core.errors import UsageError


# -o/--output in this command's --help (the shared option's help is generic).
OUTPUT_HELP = "Write the kernel grid (PNG, SVG or PDF by extension); - for stdout."


@options.model_run_options()
def main(
    model: Annotated[str, typer.Argument(metavar="MODEL", autocompletion=complete_model, help="Checkpoint (.safetensors, - for stdin) or torchvision:NAME.")],
    layer: options.Layer = "first",
    out: options.Output = None,
    scale: Annotated[Literal["shared", "per-filter"], typer.Option("--scale", help="Colour scale of the kernel tiles: one for all, or per filter.")] = "shared",
    max_filters: Annotated[int, typer.Option("--max-filters", min=1, help="Kernels drawn at most.")] = 64,
    top_k: options.TopK = 0,
    filter_: Annotated[Optional[str], typer.Option("--filter", "-f", metavar="SPEC", help="Filters to rank images for: 0,5,10 or 0-3 (default: 0-3).")] = None,
    score: Annotated[Literal["mean", "max"], typer.Option("--score", help="Image score: mean or max of the filter's post-ReLU feature map.")] = "mean",
    crop_rf: Annotated[bool, typer.Option("--crop-rf", help="Show the receptive-field patch around the strongest unit instead of the whole image.")] = False,
    top_output: Annotated[Optional[str], typer.Option("--top-output", metavar="FILE", help="Write the grid of top images here (PNG, SVG or PDF).")] = None,
    opts: options.ModelRunOptions = None,
) -> None:
    """Kernel weights as an image grid, and the images that activate chosen filters most.

    --layer is first (the first Conv2d, the default), last, or a name (see featmaps
    --list-layers). The first conv layer of a 3-channel model is drawn as one RGB tile per filter (grey 0.5
    is a zero weight); other layers as one tile per input channel. With --top-k, every image
    of the split is scored for each --filter (mean or max of its post-ReLU feature map, in
    batches under inference_mode) and the top K are listed and drawn, optionally cropped to
    the receptive field of the strongest unit. Without --top-k (0) only the kernels are shown.

    \b
    Examples:
      cnntools filters model.safetensors -o kernels.png
      cnntools filters model.safetensors --layer features.3 --scale per-filter -o k3.png
      cnntools filters model.safetensors --top-k 9 --filter 0,5,10 --top-output top.png --format json
      cnntools filters model.safetensors -l last --top-k 8 -f 0-3 --score max --crop-rf --top-output rf.png
    """
    run = opts.start()
    from cnntools.output.files import figure_format

    if top_k < 0:
        raise UsageError(f"--top-k must be 0 (kernels only) or more, got {top_k}")
    for path in (out, top_output):
        if path:
            figure_format(path)
    from cnntools.checkpoint import load_model
    from cnntools.inference.memory import fit_model_batch
    from cnntools.interpret.activations import example_input
    from cnntools.interpret.filters import kernel_stats, pick_conv_layer
    from cnntools.interpret.inputs import parse_int_list

    run.ready()
    lm = load_model(model, run.device, trust_code=opts.trust_code)
    batch_size = fit_model_batch(lm, opts.batch_size if top_k > 0 else 1)  # before the layer probe's forward pass
    layer, module = pick_conv_layer(lm.model, layer, example_input(lm))
    weight = module.weight.detach().cpu()
    doc = {"model": model, "layer": layer, "weight_shape": list(weight.shape), "scale": scale}
    # Checked before any figure is written: a failed command leaves no file behind. Checked against
    # the layer's filters while parsing: `--filter 0-999999999` is refused, not expanded.
    chosen = parse_int_list(filter_, "--filter", weight.shape[0], f"layer '{layer}'", "filters") if filter_ else list(range(min(4, weight.shape[0])))
    if out:
        from cnntools.output.plots import save_figure

        # --filter draws exactly those kernels in that order; otherwise the first --max-filters.
        shown = chosen if filter_ is not None else list(range(min(max_filters, weight.shape[0])))
        save_figure(_kernel_figure(weight, layer, scale, shown, lm.label), out)
        output.info(f"Wrote {out}")
    doc["filters"] = rows = kernel_stats(weight)
    if top_k > 0:
        _top(lm, doc, layer, chosen, top_k, score, crop_rf, top_output, opts, batch_size, run.precision)
        return
    output.emit(doc, opts.fmt, schema="filters", rows=rows, title=f"Filters of {layer} (weights {'×'.join(map(str, weight.shape))})")


def _top(lm, doc, layer, chosen, top_k, score, crop_rf, top_output, opts, batch_size, precision) -> None:
    """--top-k: rank the split's images for the chosen filters, draw and report them."""
    from cnntools.data import load_for_model
    from cnntools.interpret.filters import top_images
    from cnntools.output.progress import progress_bar

    imageset = load_for_model(lm.meta.data, opts.split, lm.preprocessing, lm.classes, data=opts.data,
                              data_dir=opts.data_dir, download=opts.download, name=lm.source)
    output.info(f"Ranking {len(imageset)} images of {imageset.spec} {imageset.split} for filters {chosen} of {layer}")
    with progress_bar(lm.source, len(imageset), elapsed=True) as bar:
        top, boxes = top_images(lm, imageset, layer, chosen, k=top_k, score=score, crop_rf=crop_rf,
                                batch_size=batch_size, precision=precision, progress=bar)
    for entry in top:
        if not max(entry["scores"]) > 0:
            output.warn(f"filter {entry['filter']} of {layer} never activates on {imageset.spec} {imageset.split} "
                        "(a dead ReLU unit): its ranking is arbitrary")
    doc.update({"score": score, "split": f"{imageset.spec}:{imageset.split}", "top": top})
    if top_output:
        from cnntools.output.plots import save_figure

        save_figure(_top_figure(imageset, lm.preprocessing.fit, top, layer, score, boxes), top_output)
        output.info(f"Wrote {top_output}")
    table_rows = [
        {"filter": e["filter"], "rank": r + 1, "index": i, "label": lab, "score": s}
        for e in top for r, (i, s, lab) in enumerate(zip(e["indices"], e["scores"], e["labels"]))
    ]
    output.emit(doc, opts.fmt, schema="filters", rows=table_rows, title=f"Top {top_k} images per filter of {layer} ({score} of post-ReLU map)")


def _kernel_figure(weight, layer, scale, shown, label):
    import math

    from cnntools.interpret.filters import kernel_tiles
    from cnntools.output.plots import new_figure

    # Scaled over the whole layer, so the tiles drawn compare with the rest of it.
    all_tiles, rgb = kernel_tiles(weight, scale)
    tiles = all_tiles[shown]
    bound = float(weight.abs().max())
    n = tiles.shape[0]
    shape = f"{weight.shape[1]}×{weight.shape[2]}×{weight.shape[3]}"
    scale_text = (f"{scale} scale: black -{bound:.3g}, grey 0, white +{bound:.3g}" if scale == "shared"
                  else "per-filter scale: grey = 0")
    if rgb or tiles.shape[1] == 1:
        title = (f"{label}: {layer}, {n} of {weight.shape[0]} filters, {shape}{', RGB' if rgb else ''}\n{scale_text}")
        cols = min(8, n)
        rows = math.ceil(n / cols)
        fig = new_figure(cols * 1.1 + 0.4, rows * 1.3 + 0.6)
        fig.set_layout_engine("constrained")  # places the title clear of the tiles
        axes = fig.subplots(rows, cols, squeeze=False)
        for k, ax in enumerate(axes.flat):
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= n:
                ax.axis("off")
                continue
            img = tiles[k].numpy() if rgb else tiles[k, 0].numpy()
            ax.imshow(img, cmap=None if rgb else "gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"{shown[k]}", fontsize=8)
    else:
        # One row per filter, one tile per input channel (at most 32 × 16 shown).
        cin = min(tiles.shape[1], 16)
        n = min(n, 32)
        title = (f"{label}: {layer}, {n} of {weight.shape[0]} filters, {shape}; {scale_text}\n"
                 f"rows: filters, columns: input channels 0–{cin - 1} of {weight.shape[1]}")
        fig = new_figure(cin * 0.7 + 0.9, n * 0.72 + 0.9)
        fig.set_layout_engine("constrained")
        axes = fig.subplots(n, cin, squeeze=False)
        for r in range(n):
            for c in range(cin):
                ax = axes[r, c]
                ax.imshow(tiles[r, c].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(f"f{shown[r]}", fontsize=7, rotation=0, labelpad=12, va="center")
                if r == 0:
                    ax.set_title(f"in {c}", fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def _top_figure(imageset, fit, top, layer, score, boxes):
    from cnntools.output.plots import new_figure, show_image

    k = max(len(e["indices"]) for e in top)
    tile = 1.35
    fig = new_figure(k * tile + 0.9, len(top) * (tile + 0.35) + 0.7)
    axes = fig.subplots(len(top), k, squeeze=False)
    for r, entry in enumerate(top):
        for c, ax in enumerate(axes[r]):
            if c >= len(entry["indices"]):
                ax.axis("off")
                continue
            image = fit(imageset.images[entry["indices"][c]][None])[0]  # as the model saw it
            if boxes is not None:
                t, left, b, right = boxes[r][c].tolist()
                image = image[:, t:b, left:right]
            show_image(ax, image, f"#{entry['indices'][c]} label {entry['labels'][c]}\n{score} {entry['scores'][c]:.2f}", fontsize=7)
            if c == 0:
                ax.set_ylabel(f"filter {entry['filter']}", fontsize=9)
    what = "receptive-field crops around the strongest unit" if boxes is not None else "whole images"
    fig.suptitle(f"Top images for filters of {layer} (score: {score} of post-ReLU map; {what})", fontsize=10)
    fig.tight_layout()
    return fig
