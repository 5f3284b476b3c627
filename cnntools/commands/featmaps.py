"""`cnntools featmaps`: activations of named layers for one image, via forward hooks."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cnntools import options, output, runtime
from cnntools.completion import complete_model
from cnntools.output import CnnError


def main(
    model: Annotated[str, typer.Argument(metavar="MODEL", autocompletion=complete_model, help="Checkpoint (.safetensors, - for stdin) or torchvision:NAME.")],
    layer: options.Layers = None,
    index: options.Indices = None,
    image: options.Images = None,
    list_layers: Annotated[bool, typer.Option("--list-layers", help="Print every layer with its output shape and parameters, then exit.")] = False,
    out: options.Output = None,
    max_channels: Annotated[int, typer.Option("--max-channels", min=1, help="Channels drawn per layer (the most active first).")] = 16,
    overlay: Annotated[bool, typer.Option("--overlay", help="Draw each channel over the image, resized to the image's size.")] = False,
    save: options.Save = None,
    data: options.Data = None,
    data_dir: options.DataDir = None,
    split: options.Split = "test",
    download: options.Download = False,
    batch_size: options.BatchSize = 1,
    device: options.Device = "auto",
    threads: options.Threads = None,
    precision: options.Precision = "auto",
    seed: options.Seed = 0,
    fmt: options.Format = "table",
    quiet: options.Quiet = False,
    debug: options.Debug = False,
) -> None:
    """Activations (feature maps) of named layers for one image, as a grid per layer.

    The image is one dataset image (-i, default 0) or one image file (--image; a folder must
    hold exactly one image). -l names the layers (repeatable; default: each conv layer's
    activation, its ReLU or else the conv itself). Forward hooks record the outputs of the
    chosen layers during one forward pass and are removed afterwards. Channels are drawn most active first (by mean activation), each layer
    with one colour scale; --overlay blends them over the image instead. The numbers (shape,
    min, max, mean, share of zeros) come as a table or JSON; --save writes the raw activations
    (one tensor per layer) as safetensors.

    \b
    Examples:
      cnntools featmaps model.safetensors --list-layers
      cnntools featmaps model.safetensors -i 3 -o featmaps.png
      cnntools featmaps model.safetensors -l features.0 -l features.3 --overlay -o over.png
      cnntools featmaps model.safetensors --image cat.png --save acts.safetensors --format json
    """
    output.configure(quiet=quiet, debug=debug)
    runtime.use_threads(threads)
    from cnntools.files import check_output, figure_format

    if out:
        figure_format(out)
    check_output(save)

    import torch

    from cnntools.checkpoint import load_model
    from cnntools.interpret.activations import activation_layer_names, activation_stats, activations_of, get_layer, layer_rows
    from cnntools.runtime import autocast, resolve_device, resolve_precision, seed_everything

    seed_everything(seed)
    dev = resolve_device(device)
    lm = load_model(model, dev)
    if list_layers:
        rows = layer_rows(lm.model, lm.in_channels, lm.image_size)
        output.emit({"model": model, "input_shape": [lm.in_channels, lm.image_size, lm.image_size], "layers": rows}, fmt,
                    schema="featmaps.layers", rows=rows, columns=["layer", "type", "output_shape", "params"],
                    title=f"Layers of {model} (input {lm.in_channels}×{lm.image_size}×{lm.image_size})")
        return

    if image and index is not None:
        raise CnnError("choose the image one way: -i (a dataset index) or --image")
    if image:
        from cnntools.interpret.inputs import read_image_files

        image = options.expand_image_paths(image)
        if len(image) != 1:
            raise CnnError(f"featmaps shows one image; --image names {len(image)} ({', '.join(image[:3])}{', ...' if len(image) > 3 else ''})")
        raw = read_image_files(image)
        label, name = None, image[0]
    else:
        from cnntools.interpret.inputs import check_indices, parse_int_list

        chosen = parse_int_list(index, "-i") if index is not None else [0]
        if len(chosen) != 1:
            raise CnnError(f"featmaps shows one image; -i names {len(chosen)}")
        index = chosen[0]
        imageset = lm.load_split(split, data_override=data, data_dir=data_dir, download=download)
        check_indices([index], len(imageset), f"{imageset.spec} {imageset.split}")
        raw = imageset.images[index : index + 1]
        label, name = int(imageset.labels[index]), f"{imageset.spec} {imageset.split} #{index}"
    names = list(layer) if layer else activation_layer_names(lm.model)
    if not names:
        raise CnnError("the model has no Conv2d layer; name layers with --layer (see --list-layers)")
    for n in names:
        get_layer(lm.model, n)
    x = lm.prepare(raw)
    with autocast(dev, resolve_precision(precision, dev)):
        logits, captured = activations_of(lm.model, x, names)
    probs = torch.softmax(logits.float(), dim=1)[0].cpu()
    acts = {n: a[0].float().cpu() for n, a in captured.items()}
    pred = int(probs.argmax())

    layers_doc = []
    for n in names:
        a = acts[n]
        stats = activation_stats(a)
        entry = {"layer": n, "type": type(get_layer(lm.model, n)).__name__, **stats}
        if a.dim() == 3:
            order = a.flatten(1).mean(1).argsort(descending=True)
            entry["most_active_channels"] = order[:max_channels].tolist()
        layers_doc.append(entry)

    if out:
        from cnntools.plots import save_figure

        shown = lm.fit_images(raw)[0]
        title = f"{name}" + (f" — label {lm.classes[label]}" if label is not None else "") + f" — pred {lm.classes[pred]} ({probs[pred]:.0%})"
        save_figure(_figure(acts, layers_doc, shown, max_channels, overlay, title), out)
        output.info(f"Wrote {out}")
    if save:
        from safetensors.torch import save as st_save

        from cnntools import files

        tensors = {n: a.contiguous() for n, a in acts.items()}
        tensors["__input__"] = x[0].float().cpu().contiguous()
        files.write_bytes(save, st_save(tensors, metadata={"model": model, "image": name, "layers": ",".join(names)}))
        output.info(f"Wrote {save}")

    doc = {
        "model": model,
        "image": name,
        "label": label,
        "label_name": lm.classes[label] if label is not None else None,
        "pred": pred,
        "pred_name": lm.classes[pred],
        "prob": probs[pred].item(),
        "layers": layers_doc,
    }
    output.emit(doc, fmt, schema="featmaps", rows=layers_doc, columns=["layer", "type", "shape", "min", "max", "mean", "std", "zero_fraction"],
                title=f"Activations for {name} (pred {lm.classes[pred]}, {probs[pred]:.1%})")


def _figure(acts, layers_doc, shown, max_channels, overlay, title):
    import math

    import torch.nn.functional as F

    from cnntools.plots import new_figure, show_overlay

    blocks = []
    for entry in layers_doc:
        a = acts[entry["layer"]]
        if a.dim() != 3:
            continue  # linear layers have no spatial map to draw
        blocks.append((entry, a[entry["most_active_channels"]]))
    if not blocks:
        raise CnnError("none of the chosen layers has spatial feature maps to draw (pick conv layers)")
    cols = min(8, max(b[1].shape[0] for b in blocks))
    heights = [math.ceil(b[1].shape[0] / cols) for b in blocks]
    tile = 1.25
    fig = new_figure(cols * tile + 0.8, sum(h * (tile + 0.25) + 0.55 for h in heights) + 0.5)
    subfigs = fig.subfigures(len(blocks), 1, height_ratios=[h * (tile + 0.25) + 0.55 for h in heights], squeeze=False)[:, 0]
    for number, (sub, (entry, maps), h) in enumerate(zip(subfigs, blocks, heights)):
        axes = sub.subplots(h, cols, squeeze=False)
        low, high = float(maps.min()), float(maps.max())
        image_ax = None
        for k, ax in enumerate(axes.flat):
            if k >= maps.shape[0]:
                ax.axis("off")
                continue
            channel = entry["most_active_channels"][k]
            if overlay:
                m = maps[k]
                up = F.interpolate(m[None, None], size=tuple(shown.shape[1:]), mode="bilinear", align_corners=False)[0, 0]
                up = (up - low) / max(high - low, 1e-12)
                show_overlay(ax, shown, up.clamp(0, 1), alpha=0.55, title=f"ch {channel}", fontsize=7)
            else:
                image_ax = ax.imshow(maps[k].numpy(), cmap="viridis", vmin=low, vmax=high, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"ch {channel}", fontsize=7)
        shape = "×".join(str(d) for d in entry["shape"])
        heading = f"{entry['layer']} ({entry['type']}, {shape}): {maps.shape[0]} most active channels, range {low:.2f}…{high:.2f}"
        # The figure's own title goes above the first block so the two never overlap.
        sub.suptitle(f"{title}\n{heading}" if number == 0 else heading, fontsize=9)
        if image_ax is not None:
            sub.colorbar(image_ax, ax=list(axes.flat), fraction=0.02, pad=0.02).ax.tick_params(labelsize=7)
    return fig
