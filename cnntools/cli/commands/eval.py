"""`cnntools eval`: metrics of one or more models on a dataset split, or their top classes for image files."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from cnntools.cli import options
from cnntools.output import emitter as output
from cnntools.cli.completion import complete_model
from cnntools.checkpoint.runs import distinct_labels, shown_labels

LOGITS_PLOT_IMAGES = 16  # --logits-plot panels at most (a folder could hold thousands)


# -o/--output in this command's --help (the shared option's help is generic).
OUTPUT_HELP = "Write the predictions CSV, one row per image; - for stdout."


@options.model_run_options()
def main(
    models: Annotated[List[str], typer.Argument(help="Checkpoints (FILE.safetensors, - for stdin) or torchvision:NAME.", show_default=False, metavar="MODEL", autocompletion=complete_model)],
    top_k: options.TopK = 5,
    per_class: options.PerClass = True,
    predictions: options.Output = None,
    logits: Annotated[
        bool, typer.Option("--logits", rich_help_panel=options.PANEL_OUTPUT, help="Add the raw outputs to the -o predictions CSV: one column logit_CLASS per class.")
    ] = False,
    logits_hist: Annotated[Optional[str], typer.Option("--logits-hist", rich_help_panel=options.PANEL_OUTPUT, metavar="FILE", help="Histogram of the raw outputs (PNG, SVG or PDF).")] = None,
    log_count: Annotated[
        bool, typer.Option("--log-count", rich_help_panel=options.PANEL_OUTPUT, help="--logits-hist: counts on a logarithmic axis (a ReLU output's spike at 0 "
                           "hides the rest otherwise).")
    ] = False,
    logits_plot: Annotated[
        Optional[str],
        typer.Option("--logits-plot", rich_help_panel=options.PANEL_OUTPUT, metavar="FILE", help="Per-class bars of every model's raw outputs for the same images: the --image "
                     "files, or --indices of the split (PNG, SVG or PDF)."),
    ] = None,
    indices: options.Indices = None,
    image: options.Images = None,
    opts: options.ModelRunOptions = None,
) -> None:
    """Metrics of one or more models on a dataset split, or their top classes for image files.

    Each MODEL is a cnntools checkpoint (FILE.safetensors, or - for stdin) or torchvision:NAME
    (ImageNet weights from the local torch cache). The dataset is the one stored in the
    checkpoint unless --data names another. Reports accuracy, loss, top-k accuracy,
    precision/recall/F1 (scikit-learn's definitions, macro and weighted), per-class accuracy
    and statistics of the raw outputs (min, max, mean, share negative); several models are
    compared side by side. -o writes the predictions CSV, one row per image (for `cnntools
    confusion`; - for stdout, the tables then go to stderr); --image prints the top-k classes
    of image files, or of every image in a folder (recursively, in batches; unreadable files
    are listed and skipped), instead of dataset metrics, and -o then writes those rows (CSV,
    or JSON for FILE.json).

    \b
    Examples:
      cnntools eval model.safetensors
      cnntools eval lenet.safetensors simple.safetensors --split test
      cnntools eval model.safetensors -o - | cnntools confusion -
      cnntools eval model.safetensors -o pred.csv --logits
      cnntools eval none.safetensors relu.safetensors -i 0,1 --logits-plot logits.png
      cnntools eval torchvision:vgg16 --image bird.jpg dog.jpg --top-k 3
      cnntools eval model.safetensors --image photos/ -o predictions.csv   # a folder, recursively
    """
    run = opts.start()
    models, image = options.split_image_files(models, image)
    _check(models, opts.batch_size, top_k, (logits_hist, logits_plot), logits, predictions, indices, image)
    from cnntools.checkpoint import load_model
    from cnntools.inference.evaluation import PREDICTION_COLUMNS, logit_columns
    from cnntools.inference.memory import fit_model_batch
    from cnntools.output import files

    run.ready()
    loaded = [load_model(m, run.device, trust_code=opts.trust_code, download=opts.download) for m in models]
    labels = distinct_labels([lm.label for lm in loaded], [lm.source for lm in loaded])
    # Before the first forward pass: a batch the memory cannot hold is made smaller, an image it cannot hold refused.
    batches = [fit_model_batch(lm, 1 if image else opts.batch_size) for lm in loaded]
    # Figures and tables name the models without what all their labels share (said once).
    short = shown_labels([lm.label for lm in loaded], [lm.source for lm in loaded])

    if image:
        shown = _images(loaded, labels, image, top_k, opts.fmt, predictions, opts.batch_size, run.precision)
        if logits_plot:
            _logits_plot(loaded, short, shown, logits_plot, run.precision)
        return

    results, all_rows, hist = [], [], {}
    for lm, label, batch in zip(loaded, labels, batches):
        results.append(_evaluate(lm, label, opts.data, opts.data_dir, opts.split, opts.download, batch, top_k, run.precision,
                                 all_rows if predictions else None, hist, logits))
    if predictions:
        columns = PREDICTION_COLUMNS + (logit_columns(loaded[0].classes) if logits else [])
        files.write_text(predictions, output.csv_text(all_rows, columns))
    if logits_hist:
        _logits_hist(results, hist, short, labels, logits_hist, log_count)
    if logits_plot:
        shown = _dataset_images(loaded[0], indices or "0-2", opts.data, opts.data_dir, opts.split, opts.download)
        _logits_plot(loaded, short, shown, logits_plot, run.precision)
    _report(results, opts.fmt, per_class, short)


def _check(models, batch_size, top_k, figures, logits, predictions, indices, image) -> None:
    """The option checks that need no model (and no torch)."""
    from cnntools.output import files

    if not models:
        raise output.CnnError("name a model: a checkpoint (FILE.safetensors) or torchvision:NAME, before --image")
    if batch_size < 1 or top_k < 1:
        raise output.CnnError("--batch-size and --top-k must be at least 1")
    if sum(1 for m in models if m == "-") > 1:
        raise output.CnnError("only one model can come from stdin (-)")
    for figure in figures:
        if figure:
            files.figure_format(figure)
    if logits and not predictions:
        raise output.CnnError("--logits adds columns to the predictions CSV: name it with -o FILE")
    if indices and image:
        raise output.CnnError("choose images one way: --indices (dataset) or --image (files)")
    files.check_output(predictions)
    if predictions == "-":
        output.claim_stdout()


def _evaluate(lm, label, data, data_dir, split, download, batch_size, top_k, precision, pred_rows, hist, with_logits) -> dict:
    from cnntools.data import load_for_model
    from cnntools.inference.evaluation import evaluate, prediction_rows
    from cnntools.output.progress import progress_bar

    if not data and not lm.meta.data.spec:
        raise output.CnnError(f"{lm.source} records no dataset; name one with --data, or use --image FILE")
    imageset = load_for_model(lm.meta.data, split, lm.preprocessing, lm.classes, data=data, data_dir=data_dir,
                              download=download, name=lm.source)
    if len(imageset) == 0:
        raise output.CnnError(f"the {split} split of {imageset.spec} is empty")
    with progress_bar(lm.source, len(imageset), elapsed=True) as bar:
        result = evaluate(lm, imageset, batch_size=batch_size, top_k=top_k, precision=precision, progress=bar)
    hist[label] = result.logits.flatten().numpy()
    if pred_rows is not None:
        pred_rows.extend(prediction_rows(label, f"{imageset.spec}:{split}", result.logits, imageset.labels, lm.classes,
                                         imageset.paths, with_logits))
    return {
        "model": lm.source,
        "label": label,
        "arch": lm.meta.arch_name,
        "data": data or lm.meta.data.spec or imageset.spec,
        "split": split,
        "images": result.images,
        "seconds": round(result.seconds, 3),
        "images_per_s": round(result.images / max(result.seconds, 1e-9), 1),
        **result.metrics,
    }


def _logits_hist(results, hist, short, labels, path, log_count) -> None:
    from cnntools.output.plots import logits_histogram, save_figure

    first = results[0]
    title = f"Raw outputs on {first['data']}:{first['split']} ({first['images']} images)"
    if short.shared:
        title += f"\n{short.note('all models: ')}"
    hist = {name: hist[label] for name, label in zip(short.labels, labels)}
    save_figure(logits_histogram(hist, title=title, log_count=log_count), path)


def _summary_row(result: dict) -> dict:
    """A model's JSON record as one table/CSV row: nested values under dotted names
    (`top_k.5`, `logits.min`), the per-class list left to its own table."""
    return output.flatten({k: v for k, v in result.items() if k != "per_class"})


def _report(results: list[dict], fmt: str, per_class: bool, short=None) -> None:
    rows = [_summary_row(r) for r in results]
    doc = {"models": results}

    def render() -> None:
        if len(results) == 1:
            row = rows[0]
            title = f"{row['label']} ({row['model']}) on {row['data']}:{row['split']}, {row['images']} images"
            skip = {"model", "label", "arch", "data", "split"}
            output.print_table([{"metric": k, "value": v} for k, v in row.items() if k not in skip], ["metric", "value"], title=title)
        else:
            # One column per model (as in the single-model view): a row per model would be
            # seventeen columns wide.
            metrics = [c for c in rows[0] if c not in ("model", "label", "arch", "data", "split")]
            names = short.labels if short else [r["label"] for r in rows]
            table = [{"metric": m, **{name: r[m] for name, r in zip(names, rows)}} for m in metrics]
            first = rows[0]
            shared = f"; {short.note('all models: ')}" if short and short.shared else ""
            output.print_table(table, ["metric"] + names, title=f"Models side by side on {first['data']}:{first['split']}, "
                               f"{first['images']} images{shared}")
        if per_class:
            classes = [c["class"] for c in results[0]["per_class"]]
            if len(results) == 1:
                output.print_table(results[0]["per_class"], ["class", "support", "accuracy", "precision", "recall", "f1"], title="Per class")
            elif all([c["class"] for c in r["per_class"]] == classes for r in results):
                table = []
                names = short.labels if short else [r["label"] for r in results]
                for i, name in enumerate(classes):
                    line = {"class": name}
                    for r, shown in zip(results, names):
                        line[shown] = r["per_class"][i]["accuracy"]
                    table.append(line)
                output.print_table(table, title="Per-class accuracy")

    output.emit(doc, fmt, schema="eval", rows=rows, render_table=render)


def _images(loaded, labels, paths: list[str], top_k: int, fmt: str, predictions: str | None, batch_size: int, precision: str):
    """Top-k classes of image files and folders, batch by batch; CSV streams as it is computed.
    Returns the first images as --logits-plot draws them."""
    import contextlib
    import json
    import sys

    from cnntools.output import files
    from cnntools.inference.images import PREDICTION_COLUMNS, predict_images

    several = len(loaded) > 1
    columns = (["model"] if several else []) + PREDICTION_COLUMNS
    pred_json = predictions is not None and predictions.endswith(".json")
    stream_stdout = fmt == "csv" and predictions is None
    keep = not stream_stdout  # the table and JSON views need every row (small: no pixels)
    rows_all: list[dict] = []
    skipped: list[dict] = []

    raw: dict = {}  # the first images, for --logits-plot (a folder would make thousands of panels)

    def on_image(path: str, images) -> None:
        if len(raw) < LOGITS_PLOT_IMAGES:
            raw.setdefault(path, images)

    def on_skip(path: str, reason: str) -> None:
        skipped.append({"image": path, "reason": reason})
        output.warn(f"skipped: {reason}")

    with contextlib.ExitStack() as stack:
        sinks = []
        if stream_stdout:
            sinks.append(_CsvSink(sys.stdout, columns))
        if predictions is not None and not pred_json:
            if predictions == "-":
                sinks.append(_CsvSink(sys.stdout, columns))
            else:
                tmp = stack.enter_context(files.atomic_path(predictions))
                sinks.append(_CsvSink(stack.enter_context(open(tmp, "w", encoding="utf-8", newline="")), columns))
        for lm, label in zip(loaded, labels):
            for rows in predict_images(lm, paths, batch_size, top_k, precision, on_skip, on_image if lm is loaded[0] else None):
                rows = [{"model": label, **row} for row in rows]  # JSON names the model; one model's table and CSV leave it out
                for sink in sinks:
                    sink.write(rows)
                if keep:
                    rows_all.extend(rows)
    if skipped:
        count = len({s["image"] for s in skipped})
        output.warn(f"{count} unreadable image file{'s' if count != 1 else ''} skipped")
    doc = {"predictions": rows_all, "skipped": skipped}
    if pred_json:
        files.write_text(predictions, json.dumps(output.to_jsonable(output.stamped(doc, "eval.images")), indent=2) + "\n")
    if not stream_stdout:
        output.emit(doc, fmt, schema="eval.images", rows=rows_all, columns=columns, title="Top class" if top_k == 1 else f"Top {top_k} classes")
    return [(files.display_name(path), None, images) for path, images in raw.items()]


def _dataset_images(lm, indices: str, data, data_dir, split, download):
    """(name, label, uint8 1×C×H×W) of the split's images at `indices`, for --logits-plot."""
    from cnntools.data import load_for_model
    from cnntools.interpret.inputs import check_indices, parse_int_list

    imageset = load_for_model(lm.meta.data, split, lm.preprocessing, lm.classes, data=data, data_dir=data_dir,
                              download=download, name=lm.source)
    picked = parse_int_list(indices)
    check_indices(picked, len(imageset), f"{imageset.spec} {split}")
    return [(f"{imageset.spec}:{split} #{i}", int(imageset.labels[i]), imageset.images[i : i + 1]) for i in picked]


def _logits_plot(loaded, short, shown, path: str, precision: str) -> None:
    """Per-class logit bars of every model for the same images (one panel per image)."""
    from cnntools.inference.batches import predict
    from cnntools.output.plots import logit_bars, save_figure

    classes = loaded[0].classes
    if any(lm.classes != classes for lm in loaded[1:]):
        raise output.CnnError("--logits-plot compares models over the same classes; these models name different classes")
    panels = []
    for name, label, images in shown:
        values = []
        for lm in loaded:
            values.append(predict(lm.model, images, lm.preprocessing, precision=precision, arch=lm.meta.arch_name)[0].tolist())
        panels.append({"name": name, "label": classes[label] if label is not None else None, "image": images[0],
                       "logits": values})
    save_figure(logit_bars(panels, short.labels, classes, shared=short.note("all models: ")), path)
    output.info(f"Wrote {path}")


class _CsvSink:
    """CSV rows written as they come, the header once."""

    def __init__(self, stream, columns: list[str]):
        self.stream, self.columns, self.started = stream, columns, False

    def write(self, rows: list[dict]) -> None:
        text = output.csv_text(rows, self.columns)
        self.stream.write(text if not self.started else text.split("\n", 1)[1])
        self.stream.flush()
        self.started = True
