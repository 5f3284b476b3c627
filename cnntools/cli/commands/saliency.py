"""`cnntools saliency`: Grad-CAM family and gradient saliency maps for one or more checkpoints."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

from cnntools.cli import options
from cnntools.output import emitter as output
from cnntools.core import runtime
from cnntools.cli.completion import complete_model, complete_target
from cnntools.core.errors import CnnError, UsageError
from cnntools.checkpoint.runs import distinct_labels, shown_labels

# Kept in step with cnntools.interpret.saliency.METHODS (a test checks it); spelled out here
# so that --help and shell completion need no torch import.
MethodChoice = Literal[
    "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "scorecam", "ablationcam",
    "fullgrad", "shapleycam", "finercam", "kpcacam",
    "gradient", "smoothgrad", "guided-backprop",
]
# -o/--output in this command's --help (the shared option's help is generic).
OUTPUT_HELP = "Write the maps over the images (PNG, SVG or PDF by extension); - for stdout."
METHOD_HELP = ("CAM methods as pytorch-grad-cam defines them: gradcam, gradcam++, xgradcam, hirescam, layercam, "
               "eigencam (computed by cnntools, tested equal to pytorch-grad-cam's maps), scorecam, ablationcam, "
               "fullgrad (reads every bias, not --layer), shapleycam, finercam (the target against its 3 most similar "
               "classes), kpcacam (these run pytorch-grad-cam); or gradient (|d score/d input|, see --of), smoothgrad, "
               "guided-backprop.")


def _model_name(spec: str) -> str:
    from pathlib import Path

    return spec if spec.startswith("torchvision:") or spec == "-" else Path(spec).stem


def _pick(first, indices, image_files, mistakes, per_class, n, data, data_dir, split, download):
    """Which images to explain: (names, dataset indices or None, file paths or None, the raw
    uint8 images of --image files or None). Mistakes come worst first (`top_losses`)."""
    from cnntools.interpret import confusion as cmath
    from cnntools.interpret.inputs import check_indices, parse_int_list, read_image_files
    from cnntools.output import files

    if sum(x is not None and x != [] for x in (indices, image_files, mistakes)) > 1:
        raise UsageError("choose images one way: --indices, --image or --mistakes")
    if per_class and not mistakes:
        raise UsageError("--per-class picks the worst mistake of each true class: give --mistakes FILE")
    if image_files:
        return [_model_name(p) for p in image_files], None, list(image_files), read_image_files(image_files)
    size = len(_dataset(first, first, data, data_dir, split, download))
    where = f"{_data_name(first, data)} {split}"  # as every command names a split in its messages
    if mistakes:
        table = cmath.read_predictions(files.read_text(mistakes), files.display_name(mistakes))
        rows = cmath.top_losses(table.label, table.pred, table.loss, table.prob, per_class=per_class)[:n]
        if rows.size == 0:
            raise CnnError(f"{mistakes}: the predictions contain no mistakes")
        picked = [table.index[i] for i in rows]
    elif indices:
        picked = parse_int_list(indices, size=size, where=where)
    else:
        picked = list(range(min(n, size)))
    check_indices(picked, size, where)
    return [f"#{i}" for i in picked], picked, None, None


def _dataset(first, lm, data, data_dir, split, download):
    """The split as `lm`'s own preprocessing makes it from the source pixels (the first model's
    data recipe, `lm`'s size and classes): what `eval` would run `lm` on."""
    from cnntools.data import load_for_model

    return load_for_model(first.meta.data, split, lm.preprocessing, lm.classes, data=data, data_dir=data_dir,
                          download=download, name=lm.source)


def _subjects(loaded, names, layer_names, batches, picked, raw, data, data_dir, split, download):
    """One `Subject` per model: its images from the source pixels, labels in its own classes."""
    import torch

    from cnntools.inference.memory import gathered_bytes
    from cnntools.interpret.saliency import Subject

    subjects = []
    for lm, name, layer_name, batch in zip(loaded, names, layer_names, batches):
        count = len(picked) if picked is not None else len(raw)
        runtime.check_allocation(gathered_bytes(count, *lm.preprocessing.shape, itemsize=5),
                                 f"{lm.source}: {count:,} images at {lm.preprocessing.size}×{lm.preprocessing.size}")
        if picked is None:
            images, labels = raw, [-1] * len(raw)
        else:
            imageset = _dataset(loaded[0], lm, data, data_dir, split, download)
            idx = torch.tensor(picked, dtype=torch.long)
            images, labels = imageset.images[idx], imageset.labels[idx].tolist()
        subjects.append(Subject(lm.model, lm.preprocessing, list(lm.classes), images, labels, layer_name, name, batch,
                                lm.meta.arch_name))
    return subjects


def _list_layers(spec, dev, fmt, trust_code) -> None:
    """--list-layers: the architecture alone, no weight file needed."""
    from cnntools.checkpoint.model_loading import load_architecture
    from cnntools.inference.memory import fit_batch
    from cnntools.interpret.activations import layer_rows

    net, in_channels, size = load_architecture(spec, dev, trust_code=trust_code)
    fit_batch(net, (in_channels, size, size), 1, dev, _model_name(spec))  # layer_rows runs one image
    rows = layer_rows(net, in_channels, size)
    output.emit({"model": spec, "input_shape": [in_channels, size, size], "layers": rows}, fmt,
                schema="saliency.layers", rows=rows, columns=["layer", "type", "output_shape", "params"],
                title=f"Layers of {_model_name(spec)}")


@options.model_run_options(batch_size=64)
def main(
    models: Annotated[list[str], typer.Argument(metavar="MODEL", autocompletion=complete_model, help="Checkpoint(s) or torchvision:NAME; several give one column each.")],
    method: Annotated[MethodChoice, typer.Option("--method", "-m", metavar="METHOD", help=METHOD_HELP)] = "gradcam",
    layer: options.Layer = "auto",
    target: Annotated[
        str, typer.Option("--target", metavar="CLASS", autocompletion=complete_target,
                          help="Class to explain: pred, true, a class index or name; several separated by "
                          "commas (3,5 or pred,true) give one column each for the same image.")
    ] = "pred",
    of: Annotated[
        Literal["score", "loss"],
        typer.Option("--of", help="Gradient methods: differentiate the target's class score (Simonyan et al., "
                     "captum's Saliency) or the cross-entropy loss against it (the course notebook's choice)."),
    ] = "score",
    reduce: Annotated[
        Literal["max", "mean", "abs-mean"],
        typer.Option("--reduce", help="Gradient methods: channels to one map by max of |g| (Simonyan), |mean of g| "
                     "or mean of |g|."),
    ] = "max",
    overlay: Annotated[
        bool, typer.Option("--overlay/--no-overlay", help="Blend the map over the image, or draw it alone (nearest "
                           "neighbour, hot colour map) to see its pixel structure.")
    ] = True,
    faithful: Annotated[
        bool, typer.Option("--faithfulness", help="Score every map with pytorch-grad-cam's confidence change and "
                           "ROAD metrics (higher = more faithful), to rank methods on the same images.")
    ] = False,
    indices: options.Indices = None,
    image: options.Images = None,
    mistakes: Annotated[Optional[str], typer.Option("--mistakes", metavar="FILE", help="Predictions CSV from `eval -o` (- for stdin): explain its mistakes, highest loss first.")] = None,
    per_class: options.PerClassWorst = False,
    n: options.Num = 8,
    list_layers: Annotated[bool, typer.Option("--list-layers", help="Print the model's layers with output shapes and exit.")] = False,
    out: options.Output = None,
    save_maps: options.Save = None,
    alpha: Annotated[float, typer.Option("--alpha", min=0.0, max=1.0, help="Opacity of the heatmap over the image.")] = 0.5,
    opts: options.ModelRunOptions = None,
) -> None:
    """Grad-CAM family and gradient saliency maps, several models side by side.

    Each image is explained for its predicted class (--target pred), its true class or a
    chosen class. All images go through the model together: one forward and one backward pass
    per batch. The grid (-o) has one row per image: the image with its label, then one overlay
    per model titled with the prediction and its probability; each model sees the images as
    its own preprocessing makes them from the source pixels, and each column names its own
    layer. Images come from -i (dataset indices, default the first -n), --image (files or
    folders) or --mistakes (eval's predictions CSV, highest loss first: the most confident
    mistakes; --per-class keeps the worst of each true class). --layer auto explains the
    activation of the last conv layer (a residual block's output); --list-layers names the
    others. The gradient methods differentiate the target's class score (--of score, as
    Simonyan et al. and captum's Saliency: maps differ between targets) or the loss (--of
    loss: for a confident model nearly the same map whatever the target). Gradient maps are
    drawn in their own units (float64) on one colour scale per image, shared across its row;
    CAM maps are pytorch-grad-cam's, scaled to 0-1 per map. --faithfulness adds, per map,
    pytorch-grad-cam's confidence change (image × map) and ROAD scores. --save writes the maps
    as drawn (N×H×W per model). --precision bf16 or fp16 runs the forward passes under
    autocast: CAM maps barely change, input gradient maps get visibly noisier, so use fp32 for
    the finest gradient maps. auto picks reduced precision only where the hardware runs it
    natively.

    \b
    Examples:
      cnntools saliency model.safetensors -i 0-7 -o gradcam.png
      cnntools saliency model.safetensors --method gradient --target 3 -i 0,5 -o grad.png
      cnntools saliency model.safetensors -m gradient --target 5,9 --no-overlay -i 0 -o two.png
      cnntools saliency model.safetensors -m gradient --of loss -i 0-3 -o loss.png
      cnntools eval model.safetensors -o pred.csv
      cnntools saliency model.safetensors --mistakes pred.csv --per-class -o worst.png
      cnntools saliency a.safetensors b.safetensors -i 0-3 --faithfulness -o compare.png --save maps.safetensors
    """
    run = opts.start()
    models, image = options.split_image_files(models, image)
    image = options.expand_image_paths(image) if image else image
    _check(models, method, n, out, save_maps, mistakes, of, reduce)

    from cnntools.checkpoint import load_model
    from cnntools.inference.memory import fit_model_batch
    from cnntools.interpret.activations import example_input, resolve_layer_name
    from cnntools.interpret.saliency import explain, explanation_rows, uses_layer

    run.ready()
    dev, prec = run.device, run.precision
    if list_layers:
        return _list_layers(models[0], dev, opts.fmt, opts.trust_code)
    loaded = [load_model(spec, dev, trust_code=opts.trust_code, download=opts.download) for spec in models]
    # Before the first forward pass (the layer probe below): maps need the backward pass too.
    batches = [fit_model_batch(lm, opts.batch_size, training=True) for lm in loaded]
    # Resolve every model's layer first: a wrong --layer fails before any work is announced.
    layer_names = [resolve_layer_name(lm.model, layer, example_input(lm)) if uses_layer(method) else None for lm in loaded]
    target_specs = _target_specs(target, loaded[0].classes)
    names, picked, paths, raw = _pick(loaded[0], indices, image, mistakes, per_class, n, opts.data, opts.data_dir, opts.split, opts.download)
    labels_of = distinct_labels([lm.label for lm in loaded], [_model_name(spec) for spec in models])
    short = shown_labels([lm.label for lm in loaded], [_model_name(spec) for spec in models])
    subjects = _subjects(loaded, labels_of, layer_names, batches, picked, raw, opts.data, opts.data_dir, opts.split, opts.download)
    output.info(f"Explaining {len(names)} image(s) with {method} on {len(loaded)} model(s)")
    columns = explain(subjects, method, target_specs, reduce=reduce, of=of, precision=prec, seed=opts.seed, device=dev,
                      score=faithful)
    for col in columns:
        _warn_flat(col.maps, names, col.targets, col.subject.classes, col.subject.name, method, col.subject.layer)
    rows = explanation_rows(columns, names, picked, paths)
    headers = [h for h in short.labels for _ in target_specs]
    if out:
        _draw(columns, headers, names, method, alpha, overlay, reduce, of, target, None if image else _where(loaded[0], opts.data, opts.split),
              short, out)
    if save_maps:
        _save(columns, models, names, picked, method, target_specs, reduce, of, save_maps)
    _emit(columns, models, labels_of, layer_names, rows, method, target, reduce, of, faithful, opts.fmt)


def _check(models, method, n, out, save_maps, mistakes, of, reduce) -> None:
    from cnntools.interpret.saliency import GRADIENT_METHODS, METHODS
    from cnntools.output.files import check_output, figure_format

    if n < 1:
        raise UsageError(f"-n must be at least 1, got {n}")
    if not models:
        raise UsageError("name a model: a checkpoint (FILE.safetensors) or torchvision:NAME, before --image")
    if method not in METHODS:
        raise UsageError(f"unknown --method '{method}': use one of {', '.join(METHODS)}")
    if reduce != "max" and method not in GRADIENT_METHODS:
        raise UsageError(f"--reduce applies to the gradient methods ({', '.join(GRADIENT_METHODS)}); {method} maps have one channel")
    if of != "score" and method not in GRADIENT_METHODS:
        raise UsageError(f"--of applies to the gradient methods ({', '.join(GRADIENT_METHODS)}); {method} explains the class score")
    if out:
        figure_format(out)
    check_output(save_maps)
    if sum(m == "-" for m in models) + (mistakes == "-") > 1:
        raise UsageError("only one input can come from stdin ('-')")


def _draw(columns, headers, names, method, alpha, overlay, reduce, of, target, where, short, out) -> None:
    from cnntools.interpret.saliency import map_quantity
    from cnntools.output.plots import save_figure

    layers = {col.subject.layer for col in columns}
    shared = layers.pop() if len(layers) == 1 else None  # else each column names its own
    title = _figure_title(method, shared, reduce, target, len(names), where, len(columns), of)
    if short.shared:
        title += f"\n{short.note('all models: ')}"
    if shared is None and any(col.subject.layer for col in columns):
        headers = [f"{h}\n@ {col.subject.layer}" for h, col in zip(headers, columns)]
    labels = columns[0].subject.labels
    save_figure(_grid(columns, headers, names, labels, method, alpha, overlay, title, map_quantity(method, reduce, of)), out)
    output.info(f"Wrote {out}")


def _save(columns, models, names, picked, method, target_specs, reduce, of, path) -> None:
    import torch
    from safetensors.torch import save

    from cnntools.interpret.saliency import map_quantity
    from cnntools.output import files

    tensors = {}
    for k, col in enumerate(columns):
        key = "maps" if len(columns) == 1 else f"maps.{k}"  # column k: model k // targets, target k % targets
        tensors[key] = col.maps.contiguous()
        tensors[key.replace("maps", "targets")] = torch.tensor(col.targets, dtype=torch.long)
    if picked:
        tensors["indices"] = torch.tensor(picked, dtype=torch.long)
    specs = [spec for spec in models for _ in target_specs]
    meta = {"method": method, "models": ",".join(specs), "layers": ",".join(str(c.subject.layer) for c in columns),
            "targets": ",".join(c.target_spec for c in columns), "reduce": reduce, "of": of, "images": ",".join(names),
            "values": map_quantity(method, reduce, of)}
    files.write_bytes(path, save(tensors, metadata=meta))
    output.info(f"Wrote {path}")


def _emit(columns, models, labels_of, layer_names, rows, method, target, reduce, of, faithful, fmt) -> None:
    from cnntools.interpret.saliency import FAITHFULNESS, GRADIENT_METHODS, map_quantity

    gradient = method in GRADIENT_METHODS
    doc = {
        "method": method,
        "target": target,
        "reduce": reduce if gradient else None,
        "of": of if gradient else "score",
        "values": map_quantity(method, reduce, of),
        "models": [{"model": spec, "label": name, "layer": layer_name}
                   for spec, name, layer_name in zip(models, labels_of, layer_names)],
        "images": rows,
    }
    if faithful:
        doc["faithfulness"] = _faithfulness_summary(columns)
    columns_shown = ["image", "model", "label_name", "pred_name", "prob", "target_name", "target_prob", "peak_row",
                     "peak_col", "peak_value"] + (list(FAITHFULNESS) if faithful else [])
    if len(set(layer_names)) == 1:
        where = f", layer {layer_names[0]}" if layer_names[0] else ""
    else:  # each model at its own layer
        where = ", " + ", ".join(f"{name} @ {layer_name}" for name, layer_name in zip(labels_of, layer_names))
    title = f"Saliency ({method}{where})"
    output.emit(doc, fmt, schema="saliency", rows=rows, columns=columns_shown if fmt == "table" else None, title=title)


def _faithfulness_summary(columns) -> list[dict]:
    """Mean faithfulness of each column's maps: one number per model, target and metric."""
    from cnntools.interpret.saliency import FAITHFULNESS

    return [{"model": col.subject.name, "layer": col.subject.layer, "target_spec": col.target_spec,
             **{name: sum(col.scores[name]) / len(col.scores[name]) for name in FAITHFULNESS}} for col in columns]


def _target_specs(target: str, classes) -> list[str]:
    """`--target 3,5` → ["3", "5"]; a class name that itself holds a comma stays whole."""
    if target in classes or "," not in target:
        return [target]
    parts = [p.strip() for p in target.split(",") if p.strip()]
    if not parts:
        raise UsageError("--target: name at least one class (pred, true, an index or a name)")
    return parts


def _data_name(lm, data) -> str:
    return data or lm.meta.data.spec or "data"


def _where(lm, data, split) -> str:
    return f"{_data_name(lm, data)}:{split}"


def _warn_flat(maps, names, targets, classes, model_name, method, layer_name) -> None:
    """A map with nothing in it is a finding, not a picture: say what most likely caused it."""
    flat = [i for i in range(maps.shape[0]) if float(maps[i].max()) <= 0.0]
    if not flat:
        return
    shown = ", ".join(names[i] for i in flat[:5]) + (" ..." if len(flat) > 5 else "")
    if layer_name:
        cause = (f"the gradient at layer {layer_name} vanished (its activations are zero or do not reach the "
                 "target class); try another --layer or --method gradient")
    else:
        cause = "the input gradient vanished (a saturated output or dead ReLUs); try --method smoothgrad"
    output.warn(f"{model_name}: the {method} map of {shown} for class {classes[targets[flat[0]]]} is all zero: {cause}")


def _figure_title(method, layer, reduce, target, n, where, columns: int = 1, of: str = "score") -> str:
    from cnntools.interpret.saliency import GRADIENT_METHODS

    gradient = method in GRADIENT_METHODS
    how = method + (f" of the {of}" if gradient else "") + (f" @ {layer}" if layer else "") + (f", {reduce} over channels" if gradient else "")
    images = f"{n} image{'s' if n != 1 else ''}" + (f" of {where}" if where else "")
    title = f"Saliency: {how}; target {target}; {images}"
    if method in GRADIENT_METHODS and n > 1:  # raw values: say which maps share a colour scale
        title += "\n" + ("one colour scale per image, shared across its row" if columns > 1 else "one colour scale per image")
    return title


def _row_scales(results, n: int) -> list[float]:
    """The top of each row's colour scale: the largest value of that image's maps across the
    models and targets drawn beside it (1 for a row of all-zero maps), so the maps of one image
    compare on one scale while images of very different gradient size stay readable."""
    scales = []
    for i in range(n):
        top = max(float(col.maps[i].max()) for col in results)
        scales.append(top if top > 0 else 1.0)
    return scales


def _grid(results, headers, names, labels, method, alpha, overlay=True, title=None, quantity=""):
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    from cnntools.interpret.saliency import CAM_METHODS
    from cnntools.output.plots import new_figure, show_image, show_map, show_overlay

    n, m = len(names), len(results)
    tile = 2.0
    per_row = method not in CAM_METHODS  # raw values: one scale per image; CAMs are 0-1 already
    right = 1.25 if per_row else 0.9  # inches kept free for the colour bars and their labels
    fig = new_figure((m + 1) * tile + right + 0.1, n * (tile + 0.45) + 1.1)
    axes = fig.subplots(n, m + 1, squeeze=False)
    classes = results[0].subject.classes
    tops = _row_scales(results, n) if per_row else [1.0] * n
    cmap = "jet" if overlay else "hot"
    for i in range(n):
        label = labels[i]
        label_text = f"\nlabel: {classes[label]}" if 0 <= label < len(classes) else ""
        show_image(axes[i, 0], results[0].shown[i], f"{names[i]}{label_text}", fontsize=9)
        for j, r in enumerate(results):
            cls = r.subject.classes
            pred, tgt = r.preds[i], r.targets[i]
            prob = r.probs[i, pred].item()
            text = f"pred: {cls[pred]} ({prob:.0%})\nmap for: {cls[tgt]} ({r.probs[i, tgt].item():.0%})"
            own_label = r.subject.labels[i]
            color = "black" if own_label < 0 or own_label == pred else "firebrick"
            heat = r.maps[i]  # float64 kept: a confident model's values are below float32's range
            if overlay:
                show_overlay(axes[i, j + 1], r.shown[i], heat, alpha=alpha, vmax=tops[i])
            else:
                show_map(axes[i, j + 1], heat, cmap=cmap, vmax=tops[i])
            axes[i, j + 1].set_title(text, fontsize=8.5, color=color)
    several_targets = len({r.target_spec for r in results}) > 1
    for j, r in enumerate(results):
        header = headers[j] + (f"\ntarget {r.target_spec}" if several_targets else "")
        axes[0, j + 1].annotate(header, xy=(0.5, 1.0), xytext=(0, 34), xycoords="axes fraction",
                                textcoords="offset points", ha="center", va="bottom", fontsize=10, weight="bold")
    axes[0, 0].annotate("image", xy=(0.5, 1.0), xytext=(0, 34), xycoords="axes fraction",
                        textcoords="offset points", ha="center", va="bottom", fontsize=10, weight="bold")
    if title:
        fig.suptitle(title, fontsize=11)
    width = fig.get_figwidth()
    # tight_layout does not see the column headers (annotations 34 pt above the first row's
    # titles) nor leave room under the title for them: keep that band free at the top.
    band = 0.3 + (0.17 if several_targets else 0.0) + (0.3 if title else 0.0)
    fig.tight_layout(rect=(0, 0, 1 - right / width, 1 - band / fig.get_figheight()))
    bar_x, bar_w = 1 - (right - 0.1) / width, 0.14 / width
    if per_row:
        # One bar per image, beside its row, in the units of the maps (scientific offset on top).
        for i in range(n):
            box = axes[i, -1].get_position()
            cax = fig.add_axes((bar_x, box.y0, bar_w, box.height))
            bar = fig.colorbar(ScalarMappable(Normalize(0, tops[i]), colormaps[cmap]), cax=cax)
            bar.locator = MaxNLocator(5)
            bar.formatter.set_powerlimits((-2, 3))  # 0.0042 reads as 4.2 with "1e-3" on top
            bar.update_ticks()
            bar.ax.tick_params(labelsize=7)
            bar.ax.yaxis.get_offset_text().set_fontsize(7)
            bar.set_label(_wrap(quantity, 30), fontsize=7)
        return fig
    # CAM maps are 0-1 per map: one bar serves them all and says so. It spans the rows of maps.
    boxes = [ax.get_position() for ax in axes[:, 1:].flat]
    low, high = min(b.y0 for b in boxes), max(b.y1 for b in boxes)
    span = min(high - low, 3.0 / fig.get_figheight())
    cax = fig.add_axes((bar_x, (low + high - span) / 2, bar_w, span))
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), colormaps[cmap]), cax=cax)
    bar.set_label(quantity, fontsize=9)
    bar.ax.tick_params(labelsize=8)
    return fig


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))
