"""`cnntools confusion`: confusion matrix from a checkpoint or from eval's predictions CSV."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from cnntools.cli import options
from cnntools.output import emitter as output
from cnntools.core import runtime
from cnntools.core.errors import CnnError


def _is_model_file(data: bytes) -> bool:
    # A safetensors file starts with an 8-byte little-endian header length, then '{'; a pickle
    # (zip archive or protocol 2+) is sent to the checkpoint loader too, which refuses it clearly.
    safetensors = len(data) > 9 and data[8:9] == b"{" and int.from_bytes(data[:8], "little") < len(data)
    return safetensors or data[:4] == b"PK\x03\x04" or (len(data) > 1 and data[0] == 0x80 and 2 <= data[1] <= 5)


def _sniff(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(16)
    except OSError:
        return b""  # the CSV reader reports what is wrong with the file


def _from_checkpoint(source, data, data_dir, split, download, batch_size, device, precision, seed, trust_code=False):
    import numpy as np

    from cnntools.checkpoint import load_model
    from cnntools.data import load_for_model
    from cnntools.inference.batches import predict
    from cnntools.core.runtime import resolve_device, resolve_precision, seed_everything

    seed_everything(seed)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if isinstance(source, bytes):  # a checkpoint that arrived on stdin
        lm = load_model("-", dev, data=source, trust_code=trust_code)
    else:
        lm = load_model(source, dev, trust_code=trust_code)
    from cnntools.inference.memory import fit_model_batch

    batch_size = fit_model_batch(lm, batch_size)
    imageset = load_for_model(lm.meta.data, split, lm.preprocessing, lm.classes, data=data, data_dir=data_dir,
                              download=download, name=lm.source)
    output.info(f"Running {lm.label} on {imageset.spec}:{imageset.split} ({len(imageset)} images)")
    logits = predict(lm.model, imageset.images, lm.preprocessing, batch_size=batch_size, device=dev, precision=prec, arch=lm.meta.arch_name)
    labels = imageset.labels
    preds = logits.argmax(1).numpy().astype(np.int64)
    # The loss and probability `eval` writes: examples are listed worst first (cmath.top_losses).
    import torch

    loss = torch.nn.functional.cross_entropy(logits.float(), torch.as_tensor(labels).long(), reduction="none")
    prob = torch.softmax(logits.float(), dim=1).amax(1)
    return (
        np.asarray(labels, dtype=np.int64),
        preds,
        list(lm.classes),
        list(range(len(imageset))),
        imageset.paths,
        f"{lm.label} on {imageset.spec}:{imageset.split}",
        (loss.double().numpy(), prob.double().numpy()),
    )


def _from_predictions(text, source):
    from cnntools.interpret.confusion import read_predictions

    table = read_predictions(text, source)
    # Name what the predictions are of: the model's label and the data the eval ran on.
    origin = " on ".join(x for x in (table.model, table.data) if x) or source
    return table.label, table.pred, table.classes, table.index, table.paths, origin, (table.loss, table.prob)


# -o/--output in this command's --help (the shared option's help is generic).
OUTPUT_HELP = "Write the confusion-matrix heatmap (PNG, SVG or PDF by extension); - for stdout."

def main(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="Checkpoint (.safetensors, torchvision:NAME) or predictions CSV; - for stdin.")],
    normalize: Annotated[
        Literal["none", "true", "pred", "all"],
        typer.Option("--normalize", help="none (counts), true (rows sum to 1), pred (columns sum to 1), all."),
    ] = "none",
    most_confused: Annotated[int, typer.Option("--most-confused", metavar="N", min=0, help="List the N most confused (true, predicted) pairs.")] = 5,
    examples: Annotated[int, typer.Option("--examples", min=0, help="Example image indices listed per confused pair, worst first (highest loss, as saliency --mistakes).")] = 5,
    plot: options.Output = None,
    data: options.Data = None,
    data_dir: options.DataDir = None,
    split: options.Split = "test",
    download: options.Download = False,
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
    """Confusion matrix of a checkpoint on a split, or of a predictions CSV, with the most confused pairs.

    SOURCE is a checkpoint (runs the model on --split) or the predictions CSV that `cnntools eval
    -o FILE` writes (`-` reads either from stdin; no model is run again). Rows are true
    classes, columns predicted classes; --normalize follows scikit-learn (true: rows sum to 1,
    pred: columns sum to 1, all: the whole matrix sums to 1). -o writes the labelled heatmap.

    \b
    Examples:
      cnntools confusion model.safetensors -o confusion.png
      cnntools eval model.safetensors -o - | cnntools confusion - --normalize true
      cnntools confusion predictions.csv --most-confused 10 --format json
    """
    output.configure(quiet=quiet, debug=debug)
    runtime.use_threads(threads)
    import numpy as np

    from cnntools.output import files
    from cnntools.interpret import confusion as cmath

    if plot:
        files.figure_format(plot)
    is_model = source.startswith(("torchvision:", "timm:")) or source.lower().endswith((".safetensors", ".pt", ".pth", ".pkl", ".ckpt")) or (
        source != "-" and _is_model_file(_sniff(source))
    )
    if source == "-":
        raw = files.read_bytes("-")
        if _is_model_file(raw):
            labels, preds, classes, index, paths, origin, (loss, prob) = _from_checkpoint(
                raw, data, data_dir, split, download, batch_size, device, precision, seed, trust_code
            )
        else:
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError:
                raise CnnError("stdin: neither a predictions CSV nor a safetensors checkpoint") from None
            labels, preds, classes, index, paths, origin, (loss, prob) = _from_predictions(text, "stdin")
    elif is_model:
        labels, preds, classes, index, paths, origin, (loss, prob) = _from_checkpoint(
            source, data, data_dir, split, download, batch_size, device, precision, seed, trust_code
        )
    else:
        labels, preds, classes, index, paths, origin, (loss, prob) = _from_predictions(files.read_text(source), source)

    k = len(classes)
    counts = cmath.confusion_counts(labels, preds, k)
    matrix = cmath.normalize(counts, normalize)
    total = int(counts.sum())
    row_totals = counts.sum(axis=1)
    pairs = []
    for t, p, count in cmath.most_confused(counts, most_confused):
        where = cmath.pair_examples(labels, preds, t, p, examples, loss, prob)
        pair = {
            "true": t,
            "true_name": classes[t],
            "pred": p,
            "pred_name": classes[p],
            "count": count,
            "share_of_true": count / row_totals[t] if row_totals[t] else 0.0,
            "examples": [int(index[i]) for i in where],
        }
        if paths:
            pair["paths"] = [paths[i] for i in where]
        pairs.append(pair)

    if plot:
        from cnntools.output.plots import confusion_heatmap, save_figure

        accuracy = float(np.trace(counts) / total) if total else 0.0
        title = (f"Confusion matrix: {origin}\n{total} images, accuracy {accuracy:.1%}"
                 + (f", normalised over {normalize}" if normalize != "none" else ", counts"))
        save_figure(confusion_heatmap(matrix, classes, title=title, normalized=normalize != "none"), plot)
        output.info(f"Wrote {plot}")

    doc = {
        "source": origin,
        "classes": classes,
        "normalize": normalize,
        "total": total,
        "accuracy": float(np.trace(counts) / total) if total else 0.0,
        "counts": counts.tolist(),
        "matrix": matrix.tolist(),
        "most_confused": pairs,
    }
    rows = []
    for i, name in enumerate(classes):
        row = {"true": name}
        for j, other in enumerate(classes):
            row[other] = matrix[i, j].item() if normalize != "none" else int(matrix[i, j])
        rows.append(row)
    columns = ["true"] + list(classes)

    def render() -> None:
        label = "counts" if normalize == "none" else f"normalised over {normalize}"
        output.print_table(
            rows,
            columns,
            title=f"Confusion matrix of {origin}, {label} (rows: true class, columns: predicted) — {total} images, "
                  f"accuracy {doc['accuracy']:.4f}",
        )
        if pairs:
            stream = output.data_stream()
            stream.write("\n")
            output.print_table(
                [
                    {
                        "true_name": p["true_name"],
                        "pred_name": p["pred_name"],
                        "count": p["count"],
                        "share_of_true": p["share_of_true"],
                        "examples": p["examples"],
                    }
                    for p in pairs
                ],
                title="Most confused pairs",
            )

    output.emit(doc, fmt, schema="confusion", rows=rows, columns=columns, render_table=render)
