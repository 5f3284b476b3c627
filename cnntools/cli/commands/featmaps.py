"""`cnntools featmaps`: activations of named layers for one image, via forward hooks."""

from __future__ import annotations

from typing import Annotated

import typer

from cnntools.cli import options
from cnntools.output import emitter as output
from cnntools.cli.completion import complete_model
from cnntools.core.errors import CnnError, UsageError


# -o/--output in this command's --help (the shared option's help is generic).
OUTPUT_HELP = "Write the feature-map grids (PNG, SVG or PDF by extension); - for stdout."


@options.model_run_options(batch_size=1)
def main(
    model: Annotated[str, typer.Argument(metavar="MODEL", autocompletion=complete_model, help="Checkpoint (.safetensors, - for stdin) or torchvision:NAME.")],
    layer: options.Layers = None,
    index: options.Indices = None,
    image: options.Images = None,
    list_layers: Annotated[bool, typer.Option("--list-layers", help="Print every layer with its output shape, parameters and multiply-adds, and the totals, then exit.")] = False,
    out: options.Output = None,
    max_channels: Annotated[int, typer.Option("--max-channels", min=1, help="Channels drawn per layer (the most active first).")] = 16,
    channels: options.Channels = None,
    overlay: Annotated[bool, typer.Option("--overlay", help="Draw each channel over the image, resized to the image's size.")] = False,
    save: options.Save = None,
    opts: options.ModelRunOptions = None,
) -> None:
    """Activations (feature maps) of named layers for one image, as a grid per layer.

    The image is one dataset image (-i, default 0) or one image file (--image; a folder must
    hold exactly one image). -l names the layers (repeatable; default: each conv layer's
    activation, its ReLU or else the conv itself). Forward hooks record the outputs of the
    chosen layers during one forward pass and are removed afterwards. Channels are drawn most active first (by mean activation), each layer
    with one colour scale; --overlay blends them over the image instead. The numbers (shape,
    min, max, mean, share of zeros) come as a table or JSON; --save writes the raw activations
    (one tensor per layer) as safetensors. The pass runs at --precision (bf16 activations are
    reported and saved as float32); it is one image, so --batch-size changes nothing here.

    \b
    Examples:
      cnntools featmaps model.safetensors --list-layers
      cnntools featmaps model.safetensors -i 3 -o featmaps.png
      cnntools featmaps model.safetensors -l features.0 --channels 0-7 -o f0-f7.png
      cnntools featmaps model.safetensors -l features.0 -l features.3 --overlay -o over.png
      cnntools featmaps model.safetensors --image cat.png --save acts.safetensors --format json
    """
    run = opts.start()
    from cnntools.output.files import check_output, figure_format

    if out:
        figure_format(out)
    check_output(save)
    from cnntools.checkpoint import load_model
    from cnntools.inference.memory import fit_model_batch
    from cnntools.interpret.activations import feature_maps

    run.ready()
    if list_layers:  # the architecture alone: no weight file needed
        return _list_layers(model, run.device, opts.trust_code, opts.fmt)
    lm = load_model(model, run.device, trust_code=opts.trust_code, download=opts.download)
    fit_model_batch(lm, 1)  # before the probe that names the layers
    wanted = None
    if channels is not None:
        from cnntools.interpret.inputs import parse_int_list

        wanted = parse_int_list(channels, "--channels")
    if image and index is not None:
        raise UsageError("choose the image one way: -i (a dataset index) or --image")
    raw, label, name = _the_image(lm, image, index, opts.data, opts.data_dir, opts.split, opts.download)
    maps = feature_maps(lm, raw, layer, channels=wanted, max_channels=max_channels, batch_size=opts.batch_size,
                        precision=run.precision)
    probs, pred, acts, layers_doc = maps["probs"], maps["pred"], maps["activations"], maps["layers"]
    if out:
        from cnntools.output.plots import save_figure

        shown = lm.preprocessing.fit(raw)[0]
        title = (f"Feature maps of {lm.label}: {name}" + (f", label {lm.classes[label]}" if label is not None else "")
                 + f", pred {lm.classes[pred]} ({probs[pred]:.0%})")
        save_figure(_figure(acts, layers_doc, shown, overlay, title), out)
        output.info(f"Wrote {out}")
    if save:
        _save(save, acts, [e["layer"] for e in layers_doc], lm, raw, model, name)
    doc = {
        "model": model,
        "label_of_model": lm.label,
        "image": name,
        "label": label,
        "label_name": lm.classes[label] if label is not None else None,
        "pred": pred,
        "pred_name": lm.classes[pred],
        "prob": probs[pred].item(),
        "layers": layers_doc,
    }
    output.emit(doc, opts.fmt, schema="featmaps", rows=layers_doc, columns=["layer", "type", "shape", "min", "max", "mean", "std", "zero_fraction"],
                title=f"Activations for {name} (pred {lm.classes[pred]}, {probs[pred]:.1%})")


def _list_layers(model: str, device, trust_code: bool, fmt: str) -> None:
    """--list-layers: every layer with its output shape and multiply-adds, and the totals, from
    the architecture alone."""
    from cnntools.checkpoint.model_loading import load_architecture
    from cnntools.inference.memory import fit_batch
    from cnntools.interpret.activations import layer_rows
    from cnntools.models.counting import model_totals
    from cnntools.output import files

    net, in_channels, size = load_architecture(model, device, trust_code=trust_code)
    fit_batch(net, (in_channels, size, size), 1, device, files.display_name(model))  # layer_rows runs one image
    rows, totals = layer_rows(net, in_channels, size), model_totals(net, in_channels, size)
    columns = ["layer", "type", "output_shape", "params", "macs"]
    shown = rows + [{"layer": "total", "params": totals["parameters"], "macs": totals["macs"]}]
    output.emit({"model": model, "input_shape": [in_channels, size, size], "layers": rows, "totals": totals}, fmt,
                schema="featmaps.layers", rows=rows, columns=columns,
                render_table=lambda: output.print_table(shown, columns, title=(
                    f"Layers of {model} (input {in_channels}×{size}×{size}): {totals['parameters']:,} parameters "
                    f"({totals['trainable']:,} trainable), {totals['macs']:,} multiply-adds per image")))


def _the_image(lm, image, index, data, data_dir, split, download):
    """(uint8 1×C×H×W, its label or None, its name): the one --image file, or the dataset image -i."""
    if image:
        from cnntools.interpret.inputs import read_image_files

        image = options.expand_image_paths(image)
        if len(image) != 1:
            raise UsageError(f"featmaps shows one image; --image names {len(image)} ({', '.join(image[:3])}{', ...' if len(image) > 3 else ''})")
        return read_image_files(image), None, image[0]
    from cnntools.data import load_for_model
    from cnntools.interpret.inputs import check_indices, parse_int_list

    chosen = parse_int_list(index, "-i") if index is not None else [0]
    if len(chosen) != 1:
        raise UsageError(f"featmaps shows one image; -i names {len(chosen)}")
    index = chosen[0]
    imageset = load_for_model(lm.meta.data, split, lm.preprocessing, lm.classes, data=data, data_dir=data_dir,
                              download=download, name=lm.source)
    check_indices([index], len(imageset), f"{imageset.spec} {imageset.split}")
    return imageset.images[index : index + 1], int(imageset.labels[index]), f"{imageset.spec}:{imageset.split} #{index}"


def _save(path: str, acts: dict, names: list[str], lm, raw, model: str, name: str) -> None:
    """--save: the raw activations (and the preprocessed input) as safetensors."""
    from safetensors.torch import save as st_save

    from cnntools.output import files

    tensors = {n: a.contiguous() for n, a in acts.items()}
    tensors["__input__"] = lm.preprocessing(raw)[0].cpu().contiguous()
    files.write_bytes(path, st_save(tensors, metadata={"model": model, "image": name, "layers": ",".join(names)}))
    output.info(f"Wrote {path}")


def _figure(acts, layers_doc, shown, overlay, title):
    """One block per layer: the input image first, then the chosen channels on one colour scale
    (its range printed and on a colour bar); 1×1 maps as one strip of values."""
    import math

    import torch.nn.functional as F
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from cnntools.output.plots import new_figure, show_image, show_map, show_overlay

    blocks = []
    for entry in layers_doc:
        a = acts[entry["layer"]]
        if a.dim() != 3:
            continue  # linear layers have no spatial map to draw
        blocks.append((entry, a[entry["channels"]]))
    if not blocks:
        raise CnnError("none of the chosen layers has spatial feature maps to draw (pick conv layers)")
    strips = [tuple(m.shape[1:]) == (1, 1) for _, m in blocks]
    cols = min(8, max(m.shape[0] + 1 for (_, m), strip in zip(blocks, strips) if not strip) if not all(strips) else 8)
    heights = [1 if strip else math.ceil((m.shape[0] + 1) / cols) for (_, m), strip in zip(blocks, strips)]
    tile = 1.25
    block_h = [h * (tile + 0.25) + 0.6 for h in heights]
    fig = new_figure(cols * tile + 1.2, sum(block_h) + 0.5)
    subfigs = fig.subfigures(len(blocks), 1, height_ratios=block_h, squeeze=False)[:, 0]
    for number, (sub, (entry, maps), h, strip) in enumerate(zip(subfigs, blocks, heights, strips)):
        low, high = float(maps.min()), float(maps.max())
        if high <= low:
            high = low + 1e-6
        shape = "×".join(str(d) for d in entry["shape"])
        heading = (f"{entry['layer']} ({entry['type']}, {shape}): {maps.shape[0]} {entry['chosen']} channel"
                   f"{'s' if maps.shape[0] != 1 else ''}, range {low:.3g} to {high:.3g}")
        sub.suptitle(f"{title}\n{heading}" if number == 0 else heading, fontsize=9)
        if strip:
            _strip(sub, maps[:, 0, 0], entry["channels"], shown, low, high, show_image, show_map)
            continue
        axes = sub.subplots(h, cols, squeeze=False)
        flat = list(axes.flat)
        show_image(flat[0], shown, "input", fontsize=7)
        for k, ax in enumerate(flat[1:]):
            if k >= maps.shape[0]:
                ax.axis("off")
                continue
            channel = entry["channels"][k]
            if overlay:
                up = F.interpolate(maps[k][None, None], size=tuple(shown.shape[1:]), mode="bilinear", align_corners=False)[0, 0]
                show_overlay(ax, shown, ((up - low) / (high - low)).clamp(0, 1), alpha=0.55, title=f"ch {channel}", fontsize=7)
            else:
                show_map(ax, maps[k], f"ch {channel}", fontsize=7, cmap="viridis", vmin=low, vmax=high)
        mappable = ScalarMappable(Normalize(low, high), colormaps["jet" if overlay else "viridis"])
        bar = sub.colorbar(mappable, ax=flat, fraction=0.02, pad=0.02)
        bar.ax.tick_params(labelsize=7)
        bar.set_label("activation", fontsize=7)
    return fig


def _strip(sub, values, channels, shown, low, high, show_image, show_map):
    """1×1 feature maps are single numbers: one strip of values with the input beside it."""
    axes = sub.subplots(1, 2, width_ratios=[1, 7])
    show_image(axes[0], shown, "input", fontsize=7)
    artist = show_map(axes[1], values[None, :], cmap="viridis", vmin=low, vmax=high)
    axes[1].set_xticks(range(len(channels)))
    axes[1].set_xticklabels([f"ch {c}" for c in channels], fontsize=6, rotation=90 if len(channels) > 8 else 0)
    if len(channels) <= 24:
        mid = (low + high) / 2
        for k, v in enumerate(values.tolist()):
            axes[1].text(k, 0, f"{v:.2g}", ha="center", va="center", fontsize=7, color="white" if v < mid else "black")
    sub.colorbar(artist, ax=axes[1], fraction=0.03, pad=0.02).ax.tick_params(labelsize=7)
