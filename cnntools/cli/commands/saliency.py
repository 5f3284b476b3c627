"""`cnntools saliency`: Grad-CAM family and gradient saliency maps for one or more checkpoints."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

from cnntools.cli import options
from cnntools.output import emitter as output
from cnntools.core import runtime
from cnntools.cli.completion import complete_model, complete_target
from cnntools.core.errors import CnnError
from cnntools.checkpoint.runs import distinct_labels, shown_labels

# Kept in step with cnntools.interpret.saliency.METHODS (a test checks it); spelled out here
# so that --help and shell completion need no torch import.
MethodChoice = Literal[
    "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "scorecam", "ablationcam",
    "gradient", "smoothgrad", "guided-backprop",
]
METHOD_HELP = "CAM methods of pytorch-grad-cam, or gradient (|d loss/d input|), smoothgrad, guided-backprop."


def _model_name(spec: str) -> str:
    from pathlib import Path

    return spec if spec.startswith("torchvision:") or spec == "-" else Path(spec).stem


def _select_images(lm, indices, image_files, mistakes, n, data, data_dir, split, download=False):
    """uint8 images (raw, before fitting to any model), labels (-1 unknown) and names."""
    import torch

    from cnntools.output import files
    from cnntools.interpret import confusion as cmath
    from cnntools.interpret.inputs import check_indices, parse_int_list, read_image_files

    chosen = [x is not None and x != [] for x in (indices, image_files, mistakes)]
    if sum(chosen) > 1:
        raise CnnError("choose images one way: --indices, --image or --mistakes")
    if image_files:
        images = read_image_files(image_files)
        return images, [-1] * len(image_files), [_model_name(p) for p in image_files], None
    from cnntools.data import load_for_model

    imageset = load_for_model(lm.meta.data, split, lm.preprocessing, lm.classes, data=data, data_dir=data_dir,
                              download=download, name=lm.source)
    where = f"{imageset.spec} {imageset.split}"
    if mistakes:
        table = cmath.read_predictions(files.read_text(mistakes), files.display_name(mistakes))
        rows = table.mistakes[:n]
        if rows.size == 0:
            raise CnnError(f"{mistakes}: the predictions contain no mistakes")
        picked = [table.index[i] for i in rows]
    elif indices:
        picked = parse_int_list(indices, size=len(imageset), where=where)
    else:
        picked = list(range(min(n, len(imageset))))
    check_indices(picked, len(imageset), where)
    idx = torch.tensor(picked, dtype=torch.long)
    names = [f"#{i}" for i in picked]
    return imageset.images[idx], imageset.labels[idx].tolist(), names, picked


def main(
    models: Annotated[list[str], typer.Argument(metavar="MODEL", autocompletion=complete_model, help="Checkpoint(s) or torchvision:NAME; several give one column each.")],
    method: Annotated[MethodChoice, typer.Option("--method", "-m", help=METHOD_HELP)] = "gradcam",
    layer: options.Layer = "auto",
    target: Annotated[
        str, typer.Option("--target", metavar="CLASS", autocompletion=complete_target,
                          help="Class to explain: pred, true, a class index or name; several separated by "
                          "commas (3,5 or pred,true) give one column each for the same image.")
    ] = "pred",
    reduce: Annotated[
        Literal["max", "mean", "abs-mean"],
        typer.Option("--reduce", help="Gradient methods: channels to one map by max of |g| (Simonyan), |mean of g| "
                     "or mean of |g|."),
    ] = "max",
    overlay: Annotated[
        bool, typer.Option("--overlay/--no-overlay", help="Blend the map over the image, or draw it alone (nearest "
                           "neighbour, hot colour map) to see its pixel structure.")
    ] = True,
    indices: options.Indices = None,
    image: options.Images = None,
    mistakes: Annotated[Optional[str], typer.Option("--mistakes", metavar="FILE", help="Predictions CSV from `eval -o` (- for stdin): explain its mistakes.")] = None,
    n: options.Num = 8,
    list_layers: Annotated[bool, typer.Option("--list-layers", help="Print the model's layers with output shapes and exit.")] = False,
    out: options.Output = None,
    save_maps: options.Save = None,
    alpha: Annotated[float, typer.Option("--alpha", min=0.0, max=1.0, help="Opacity of the heatmap over the image.")] = 0.5,
    data: options.Data = None,
    data_dir: options.DataDir = None,
    split: options.Split = "test",
    download: options.Download = False,
    batch_size: options.BatchSize = 64,
    device: options.Device = "auto",
    threads: options.Threads = None,
    precision: options.Precision = "auto",
    seed: options.Seed = 0,
    fmt: options.Format = "table",
    quiet: options.Quiet = False,
    trust_code: options.TrustCode = False,
    debug: options.Debug = False,
) -> None:
    """Grad-CAM family and gradient saliency maps, several models side by side.

    Each image is explained for its predicted class (--target pred), its true class or a
    chosen class. All images go through the model together: one forward and one backward pass
    per batch. The grid (-o) has one row per image: the image with its label, then one overlay
    per model titled with the prediction and its probability. Images come from -i (dataset
    indices, default the first -n), --image (files or folders) or --mistakes (eval's
    predictions CSV). --layer auto explains the activation of the last conv layer (a residual
    block's output); --list-layers names the others. Gradient maps are drawn in their own
    units (|d loss/d input|; float64, as a confident model's loss gradient is far below fp32's
    range) on one colour scale per image, shared across its row; CAM maps are pytorch-grad-cam's,
    scaled to 0-1 per map. --save writes the maps as drawn (N×H×W per model). --precision bf16
    or fp16 runs the forward passes under autocast (the backward then runs in the forward's
    dtypes): CAM maps barely change, input gradient maps get visibly noisier, so use fp32 for
    the finest gradient maps. auto picks reduced precision only where the hardware runs it
    natively.

    \b
    Examples:
      cnntools saliency model.safetensors -i 0-7 -o gradcam.png
      cnntools saliency model.safetensors --method gradient --target 3 -i 0,5 -o grad.png
      cnntools saliency model.safetensors -m gradient --target 3,5 --reduce mean --no-overlay -i 0 -o two.png
      cnntools eval model.safetensors -o pred.csv
      cnntools saliency model.safetensors --mistakes pred.csv -n 8 -o mistakes.png
      cnntools saliency a.safetensors b.safetensors -i 0-3 -o compare.png --save maps.safetensors
    """
    run = options.start_run(quiet=quiet, debug=debug, threads=threads, device=device, precision=precision, seed=seed)
    models, image = options.split_image_files(models, image)
    image = options.expand_image_paths(image) if image else image
    if n < 1:
        raise CnnError(f"-n must be at least 1, got {n}")
    if not models:
        raise CnnError("name a model: a checkpoint (FILE.safetensors) or torchvision:NAME, before --image")
    from cnntools.interpret.saliency import METHODS

    if method not in METHODS:
        raise CnnError(f"unknown --method '{method}': use one of {', '.join(METHODS)}")
    from cnntools.output.files import check_output, figure_format

    if out:
        figure_format(out)
    check_output(save_maps)
    if sum(m == "-" for m in models) + (mistakes == "-") > 1:
        raise CnnError("only one input can come from stdin ('-')")

    import torch

    from cnntools.checkpoint import load_model
    from cnntools.inference.memory import fit_batch, fit_model_batch, gathered_bytes
    from cnntools.interpret.activations import example_input, layer_rows, resolve_layer_name
    from cnntools.interpret.inputs import resolve_targets
    from cnntools.interpret.saliency import GRADIENT_METHODS, map_quantity, saliency_maps, uses_layer
    from cnntools.inference.batches import predict

    run.ready()
    dev, prec = run.device, run.precision
    if list_layers:  # the architecture alone: no weight file needed
        from cnntools.checkpoint.model_loading import load_architecture

        net, in_channels, size = load_architecture(models[0], dev, trust_code=trust_code)
        fit_batch(net, (in_channels, size, size), 1, dev, _model_name(models[0]))  # layer_rows runs one image
        rows = layer_rows(net, in_channels, size)
        columns = ["layer", "type", "output_shape", "params"]
        output.emit({"model": models[0], "input_shape": [in_channels, size, size], "layers": rows},
                    fmt, schema="saliency.layers", rows=rows, columns=columns, title=f"Layers of {_model_name(models[0])}")
        return
    loaded = [load_model(spec, dev, trust_code=trust_code, download=download) for spec in models]
    first = loaded[0]
    # Before the first forward pass (the layer probe below): maps need the backward pass too.
    batches = [fit_model_batch(lm, batch_size, training=True) for lm in loaded]

    # Resolve every model's layer first: a wrong --layer fails before any work is announced.
    layer_names = [resolve_layer_name(lm.model, layer, example_input(lm)) if uses_layer(method) else None for lm in loaded]
    if reduce != "max" and method not in GRADIENT_METHODS:
        raise CnnError(f"--reduce applies to the gradient methods ({', '.join(GRADIENT_METHODS)}); {method} maps have one channel")
    target_specs = _target_specs(target, first.classes)
    raw, labels, names, picked = _select_images(first, indices, image, mistakes, n, data, data_dir, split, download)
    where = None if image else _where(first, data, split)
    output.info(f"Explaining {len(names)} image(s) with {method} on {len(loaded)} model(s)")
    model_names = distinct_labels([lm.label for lm in loaded], [_model_name(spec) for spec in models])
    short = shown_labels([lm.label for lm in loaded], [_model_name(spec) for spec in models])

    results = []  # one dict per (model, target) column
    for spec, lm, layer_name, model_name, batch, header in zip(models, loaded, layer_names, model_names, batches, short.labels):
        # All chosen images at the model's size at once: uint8 to draw, float32 to run.
        size = lm.preprocessing.size
        runtime.check_allocation(gathered_bytes(len(raw), *lm.preprocessing.shape, itemsize=5),
                                 f"{lm.source}: {len(raw):,} images at {size}×{size}")
        shown = lm.preprocessing.fit(raw)
        probs = torch.softmax(predict(lm.model, raw, lm.preprocessing, batch_size=batch, precision=prec,
                                      arch=lm.meta.arch_name), dim=1)
        x = lm.preprocessing(raw, dev)
        preds = probs.argmax(1).tolist()
        # Labels are indices into the first model's classes; map them by name for the others.
        index = {name: k for k, name in enumerate(lm.classes)}
        model_labels = [index.get(first.classes[lab], -1) if lab >= 0 else -1 for lab in labels]
        for target_spec in target_specs:
            targets = resolve_targets(target_spec, preds, None if min(model_labels) < 0 else model_labels, lm.classes)
            maps = []
            for start in range(0, x.shape[0], batch):
                maps.append(
                    saliency_maps(
                        lm.model,
                        x[start : start + batch],
                        targets[start : start + batch],
                        method=method,
                        layer=layer_name,
                        batch_size=batch,
                        seed=seed,
                        reduce=reduce,
                        precision=prec,
                    )
                )
            maps = torch.cat(maps)
            _warn_flat(maps, names, targets, lm.classes, model_name, method, layer_name)
            results.append(
                {"spec": spec, "name": model_name, "header": header, "lm": lm, "shown": shown, "layer": layer_name, "target_spec": target_spec,
                 "probs": probs, "preds": preds, "targets": targets, "maps": maps, "labels": model_labels}
            )

    rows = []
    for i, image_name in enumerate(names):
        for r in results:
            classes = r["lm"].classes
            peak = int(r["maps"][i].argmax())
            width = r["maps"].shape[2]
            label = r["labels"][i]
            rows.append(
                {
                    "image": image_name,
                    "index": picked[i] if picked else None,
                    "path": image[i] if image else None,
                    "model": r["name"],
                    "target_spec": r["target_spec"],
                    "label": label if label >= 0 else None,
                    "label_name": classes[label] if 0 <= label < len(classes) else None,
                    "pred": r["preds"][i],
                    "pred_name": classes[r["preds"][i]],
                    "prob": r["probs"][i, r["preds"][i]].item(),
                    "target": r["targets"][i],
                    "target_name": classes[r["targets"][i]],
                    "target_prob": r["probs"][i, r["targets"][i]].item(),
                    "peak_row": peak // width,
                    "peak_col": peak % width,
                    "peak_value": float(r["maps"][i].max()),
                }
            )

    if out:
        from cnntools.output.plots import save_figure

        title = _figure_title(method, results[0]["layer"], reduce, target, len(names), where, len(results))
        if short.shared:
            title += f"\n{short.note('all models: ')}"
        save_figure(_grid(results, names, labels, method, alpha, overlay, title, map_quantity(method, reduce)), out)
        output.info(f"Wrote {out}")
    if save_maps:
        from safetensors.torch import save

        from cnntools.output import files

        tensors = {}
        for k, r in enumerate(results):
            key = "maps" if len(results) == 1 else f"maps.{k}"  # column k: model k // targets, target k % targets
            tensors[key] = r["maps"].contiguous()
            tensors[key.replace("maps", "targets")] = torch.tensor(r["targets"], dtype=torch.long)
        if picked:
            tensors["indices"] = torch.tensor(picked, dtype=torch.long)
        meta = {"method": method, "models": ",".join(r["spec"] for r in results), "layers": ",".join(str(r["layer"]) for r in results),
                "targets": ",".join(r["target_spec"] for r in results), "reduce": reduce, "images": ",".join(names),
                "values": map_quantity(method, reduce)}
        files.write_bytes(save_maps, save(tensors, metadata=meta))
        output.info(f"Wrote {save_maps}")

    doc = {
        "method": method,
        "target": target,
        "reduce": reduce if method in GRADIENT_METHODS else None,
        "values": map_quantity(method, reduce),
        "models": [{"model": spec, "label": name, "layer": layer_name}
                   for spec, name, layer_name in zip(models, model_names, layer_names)],
        "images": rows,
    }
    columns = ["image", "model", "label_name", "pred_name", "prob", "target_name", "target_prob", "peak_row", "peak_col",
               "peak_value"]
    title = f"Saliency ({method}" + (f", layer {results[0]['layer']}" if results[0]["layer"] else "") + ")"
    output.emit(doc, fmt, schema="saliency", rows=rows, columns=columns if fmt == "table" else None, title=title)


def _target_specs(target: str, classes) -> list[str]:
    """`--target 3,5` → ["3", "5"]; a class name that itself holds a comma stays whole."""
    if target in classes or "," not in target:
        return [target]
    parts = [p.strip() for p in target.split(",") if p.strip()]
    if not parts:
        raise CnnError("--target: name at least one class (pred, true, an index or a name)")
    return parts


def _where(lm, data, split) -> str:
    return f"{data or lm.meta.data.spec or 'data'}:{split}"


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


def _figure_title(method, layer, reduce, target, n, where, columns: int = 1) -> str:
    from cnntools.interpret.saliency import GRADIENT_METHODS

    how = method + (f" @ {layer}" if layer else "") + (f", {reduce} over channels" if method in GRADIENT_METHODS else "")
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
        top = max(float(r["maps"][i].max()) for r in results)
        scales.append(top if top > 0 else 1.0)
    return scales


def _grid(results, names, labels, method, alpha, overlay=True, title=None, quantity=""):
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
    classes = results[0]["lm"].classes
    tops = _row_scales(results, n) if per_row else [1.0] * n
    cmap = "jet" if overlay else "hot"
    for i in range(n):
        label = labels[i]
        label_text = f"\nlabel: {classes[label]}" if 0 <= label < len(classes) else ""
        show_image(axes[i, 0], results[0]["shown"][i], f"{names[i]}{label_text}", fontsize=9)
        for j, r in enumerate(results):
            cls = r["lm"].classes
            pred, tgt = r["preds"][i], r["targets"][i]
            prob = r["probs"][i, pred].item()
            text = f"pred: {cls[pred]} ({prob:.0%})\nmap for: {cls[tgt]} ({r['probs'][i, tgt].item():.0%})"
            own_label = r["labels"][i]
            color = "black" if own_label < 0 or own_label == pred else "firebrick"
            heat = r["maps"][i]  # float64 kept: a confident model's values are below float32's range
            if overlay:
                show_overlay(axes[i, j + 1], r["shown"][i], heat, alpha=alpha, vmax=tops[i])
            else:
                show_map(axes[i, j + 1], heat, cmap=cmap, vmax=tops[i])
            axes[i, j + 1].set_title(text, fontsize=8.5, color=color)
    several_targets = len({r["target_spec"] for r in results}) > 1
    for j, r in enumerate(results):
        header = r.get("header", r["name"]) + (f"\ntarget {r['target_spec']}" if several_targets else "")
        axes[0, j + 1].annotate(header, xy=(0.5, 1.0), xytext=(0, 34), xycoords="axes fraction",
                                textcoords="offset points", ha="center", va="bottom", fontsize=10, weight="bold")
    axes[0, 0].annotate("image", xy=(0.5, 1.0), xytext=(0, 34), xycoords="axes fraction",
                        textcoords="offset points", ha="center", va="bottom", fontsize=10, weight="bold")
    if title:
        fig.suptitle(title, fontsize=11)
    width = fig.get_figwidth()
    fig.tight_layout(rect=(0, 0, 1 - right / width, 1))
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
