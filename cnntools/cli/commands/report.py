"""`cnntools report`: one self-contained HTML page per run (or comparing several runs)."""

from __future__ import annotations

from typing import Annotated

import typer

from cnntools.cli import options
from cnntools.cli.completion import complete_model
from cnntools.core.errors import UsageError
from cnntools.output import emitter as output

OUTPUT_HELP = "Write the HTML page (inline images and styles, no script); - for stdout."
COLUMNS = ["label", "arch", "parameters", "macs", "data", "images", "accuracy", "loss", "f1_macro", "kept_epoch", "mistakes"]


@options.model_run_options()
def main(
    models: Annotated[
        list[str], typer.Argument(metavar="MODEL", autocompletion=complete_model, show_default=False,
                                  help="Checkpoints (.safetensors, - for stdin), torchvision:NAME or timm:NAME.")
    ],
    out: options.Output = None,
    num: options.Num = None,
    method: Annotated[str, typer.Option("--method", "-m", help="Saliency method of the top losses (any of `saliency --method`).")] = "gradcam",
    most_confused: Annotated[int, typer.Option("--most-confused", metavar="N", min=0, help="Most confused (true, predicted) pairs listed.")] = 5,
    top_k: options.TopK = 5,
    opts: options.ModelRunOptions = None,
) -> None:
    """One page per run: model card, curves, metrics, confusion, top losses with saliency.

    Writes one self-contained HTML file (-o; inline CSS, figures as data: URIs, no script,
    nothing fetched: it opens offline and can be mailed): the model card (architecture,
    parameters, multiply-adds, classes, data recipe, every resolved training option, label,
    when and with what it was written), the training curves, the split's metrics and per-class
    table, the confusion heatmap with the most confused pairs, and the top losses (the most
    confident mistakes first; -n of them, default 12) with their saliency maps for the
    predicted class. -o - writes the page to stdout (the table then goes to stderr). With several
    models the page opens with a side-by-side table and their curves overlaid. Each model runs
    on its own recorded dataset unless --data names one. The numbers are those of `info`,
    `eval`, `confusion` and `saliency`; --format json prints them as one document, the table
    the side-by-side rows.

    \b
    Examples:
      cnntools report model.safetensors -o run.html
      cnntools report lenet.safetensors simple.safetensors -o compare.html
      cnntools report model.safetensors -n 24 --method gradient -o run.html
      cnntools report model.safetensors --format json | jq .models[0].top_losses[0]
    """
    run = opts.start()
    from cnntools.output import files

    files.check_output(out)
    if out and out != files.STDIO and not out.lower().endswith((".html", ".htm")):
        raise UsageError(f"-o {out}: the report is an HTML page; name it FILE.html")
    if out == files.STDIO:
        output.claim_stdout()
    if top_k < 1 or opts.batch_size < 1 or (num is not None and num < 0):
        raise UsageError("--top-k and --batch-size must be at least 1, --num at least 0")
    from cnntools.interpret.saliency import METHODS

    if method not in METHODS:
        raise UsageError(f"unknown saliency method '{method}': use one of {', '.join(METHODS)}")
    from cnntools.interpret.report import build_report, comparison_rows

    run.ready()
    reports = build_report(models, run.device, run.precision, split=opts.split, data=opts.data, data_dir=opts.data_dir,
                           download=opts.download, batch_size=opts.batch_size, top_k=top_k,
                           top_losses=12 if num is None else num, most_confused=most_confused, method=method,
                           trust_code=opts.trust_code)
    rows = comparison_rows(reports)
    if out:
        from cnntools import __version__
        from cnntools.interpret.report_html import page

        files.write_text(out, page(reports, rows, __version__))
        output.info(f"Wrote {out}")
    doc = {"split": opts.split, "output": out, "models": [r.doc for r in reports], "comparison": rows}
    flat = [output.flatten(r) for r in rows]
    output.emit(doc, opts.fmt, schema="report", rows=flat, columns=COLUMNS + [c for c in flat[0] if c.startswith("top_k.")],
                title=f"Report on the {opts.split} split")
