"""`cnntools confusion`: confusion matrix from a checkpoint or from eval's predictions CSV."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from cnntools.cli import options
from cnntools.output import emitter as output
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


def _from_checkpoint(source, opts, run):
    import numpy as np

    from cnntools.checkpoint import load_model
    from cnntools.data import load_for_model
    from cnntools.inference.batches import predict
    from cnntools.inference.memory import fit_model_batch
    from cnntools.output.progress import progress_bar

    run.ready()
    if isinstance(source, bytes):  # a checkpoint that arrived on stdin
        lm = load_model("-", run.device, data=source, trust_code=opts.trust_code)
    else:
        lm = load_model(source, run.device, trust_code=opts.trust_code)
    batch_size = fit_model_batch(lm, opts.batch_size)
    imageset = load_for_model(lm.meta.data, opts.split, lm.preprocessing, lm.classes, data=opts.data,
                              data_dir=opts.data_dir, download=opts.download, name=lm.source)
    output.info(f"Running {lm.label} on {imageset.spec}:{imageset.split} ({len(imageset)} images)")
    with progress_bar(lm.source, len(imageset), elapsed=True) as bar:
        logits = predict(lm.model, imageset.images, lm.preprocessing, batch_size=batch_size, device=run.device,
                         precision=run.precision, arch=lm.meta.arch_name, progress=bar)
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


@options.model_run_options()
def main(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="Checkpoint (.safetensors, torchvision:NAME) or predictions CSV; - for stdin.")],
    normalize: Annotated[
        Literal["none", "true", "pred", "all"],
        typer.Option("--normalize", help="none (counts), true (rows sum to 1), pred (columns sum to 1), all."),
    ] = "none",
    most_confused: Annotated[int, typer.Option("--most-confused", metavar="N", min=0, help="List the N most confused (true, predicted) pairs.")] = 5,
    examples: Annotated[int, typer.Option("--examples", min=0, help="Example image indices listed per confused pair, worst first (highest loss, as saliency --mistakes).")] = 5,
    plot: options.Output = None,
    opts: options.ModelRunOptions = None,
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
    run = opts.start()
    from cnntools.interpret.confusion import confusion_report
    from cnntools.output import files

    if plot:
        files.figure_format(plot)
    labels, preds, classes, index, paths, origin, (loss, prob) = _predictions(source, opts, run)
    report = confusion_report(labels, preds, classes, source=origin, index=index, paths=paths, normalize_over=normalize,
                              top=most_confused, examples=examples, loss=loss, prob=prob)
    if plot:
        _plot(report, plot)
    _render(report, opts.fmt)


def _predictions(source, opts, run):
    """(labels, preds, classes, dataset indices, paths, origin, (loss, prob)) from a checkpoint
    (run on the split) or from a predictions CSV; `-` is sniffed to tell them apart."""
    from cnntools.output import files

    is_model = source.startswith(("torchvision:", "timm:")) or source.lower().endswith((".safetensors", ".pt", ".pth", ".pkl", ".ckpt")) or (
        source != "-" and _is_model_file(_sniff(source))
    )
    if source == "-":
        raw = files.read_bytes("-")
        if _is_model_file(raw):
            return _from_checkpoint(raw, opts, run)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise CnnError("stdin: neither a predictions CSV nor a safetensors checkpoint") from None
        return _from_predictions(text, "stdin")
    if is_model:
        return _from_checkpoint(source, opts, run)
    return _from_predictions(files.read_text(source), source)


def _plot(report: dict, path: str) -> None:
    from cnntools.output.plots import confusion_heatmap, save_figure

    normalize, total = report["normalize"], report["total"]
    title = (f"Confusion matrix: {report['source']}\n{total} images, accuracy {report['accuracy']:.1%}"
             + (f", normalised over {normalize}" if normalize != "none" else ", counts"))
    save_figure(confusion_heatmap(report["matrix"], report["classes"], title=title, normalized=normalize != "none"), path)
    output.info(f"Wrote {path}")


def _render(report: dict, fmt: str) -> None:
    classes, matrix, normalize, pairs = report["classes"], report["matrix"], report["normalize"], report["most_confused"]
    total, origin = report["total"], report["source"]
    doc = {**report, "counts": report["counts"].tolist(), "matrix": matrix.tolist()}
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
