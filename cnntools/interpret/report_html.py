"""The report as one self-contained HTML page: inline CSS, figures as data: URIs, no script,
nothing fetched. Every string that came from a file (class names, paths, labels) is escaped.

Tables carry ids (`comparison`, `card-N`, `metrics-N`, `per-class-N`, `most-confused-N`,
`top-losses-N`) and numbers formatted as the commands' tables format them
(`cnntools.output.emitter.format_cell`), so a reader can check one against the other.
"""

from __future__ import annotations

import base64
import datetime
import io
from html import escape

from cnntools.output.emitter import flatten, format_cell

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       color: #1b1b1b; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
h3 { margin-top: 1.5em; } .meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
.row { display: flex; flex-wrap: wrap; gap: 2em; align-items: flex-start; }
details { margin: 0.5em 0 1em; } summary { cursor: pointer; color: #335; }
.note { color: #555; font-size: 0.9em; } .wide { overflow-x: auto; max-width: 100%; }
#comparison { font-size: 0.85em; } #comparison td, #comparison th { white-space: nowrap; padding: 0.2em 0.4em; }
"""


def render(reports, comparison: list[dict], figures: dict, *, title: str, version: str) -> str:
    """The whole page. `figures`: name → PNG bytes (`curves`, and per model `curves-N`,
    `confusion-N`, `top-losses-N`)."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">Written by cnntools {escape(version)} on {now}. One file: no script, nothing fetched.</p>',
    ]
    if len(reports) > 1:
        parts.append("<h2>Side by side</h2>")
        parts.append(_table([flatten(row) for row in comparison], "comparison"))
        if "curves" in figures:
            parts.append(_img(figures["curves"], "training curves of every run"))
    for n, report in enumerate(reports):
        parts.append(_section(n, report, figures))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _section(n: int, report, figures: dict) -> str:
    doc = report.doc
    card, metrics = doc["card"], doc["metrics"]
    out = [f'<h2 id="model-{n}">{escape(doc["label"])} <span class="meta">({escape(doc["model"])})</span></h2>']
    out.append("<h3>Model card</h3>")
    out.append(_table(_card_rows(card), f"card-{n}", header=False))
    out.append(f"<details><summary>Layers ({len(card['layers'])}): output shape, parameters, multiply-adds per image</summary>"
               f"{_table(card['layers'], f'layers-{n}')}</details>")
    summary = card.get("summary")
    if summary and summary.get("train_config"):
        options = [{"option": k, "value": v} for k, v in summary["train_config"].items()]
        out.append(f"<details><summary>Every resolved training option ({len(options)})</summary>"
                   f"{_table(options, f'options-{n}')}</details>")
    out.append("<h3>Training curves</h3>")
    if f"curves-{n}" in figures:
        out.append(_img(figures[f"curves-{n}"], "training curves"))
    else:
        out.append('<p class="note">The file records no training history.</p>')
    out.append(f"<h3>Test metrics <span class=\"meta\">on {escape(doc['data'])}, {metrics['images']} images</span></h3>")
    rows = [{"metric": k, "value": v} for k, v in _flat_metrics(metrics).items()]
    out.append('<div class="row">' + _table(rows, f"metrics-{n}") + _table(metrics["per_class"], f"per-class-{n}") + "</div>")
    confusion = doc["confusion"]
    out.append(f"<h3>Confusion matrix <span class=\"meta\">{confusion['mistakes']} mistakes of {confusion['total']}</span></h3>")
    out.append('<div class="row">' + _img(figures[f"confusion-{n}"], "confusion matrix") + "<div><b>Most confused pairs</b>"
               + _table([{k: p[k] for k in ("true_name", "pred_name", "count", "share_of_true")} for p in confusion["most_confused"]],
                        f"most-confused-{n}") + "</div></div>")
    out.append("<h3>Top losses</h3>")
    mistakes = doc["top_losses"]
    if not mistakes:
        out.append('<p class="note">No mistakes on this split.</p>')
        return "\n".join(out)
    sal = doc["saliency"]
    where = f" at {escape(sal['layer'])}" if sal["layer"] else ""
    out.append(f'<p class="note">The most confident mistakes first (highest cross-entropy loss). Beside each image: '
               f"its {escape(sal['method'])} map{where} for the predicted class, scaled to 0-1 per map.</p>")
    out.append(_img(figures[f"top-losses-{n}"], "top losses with saliency maps"))
    columns = ["index", "path", "label_name", "pred_name", "prob", "prob_true", "loss"]
    if not any(m.get("path") for m in mistakes):
        columns.remove("path")
    out.append(_table([{c: m[c] for c in columns} for m in mistakes], f"top-losses-{n}"))
    return "\n".join(out)


def _card_rows(card: dict) -> list[dict]:
    rows = [
        ("architecture", card["arch"]),
        ("input", "×".join(str(d) for d in card["input_shape"])),
        ("parameters", f"{card['parameters']:,} ({card['trainable']:,} trainable)"),
        ("multiply-adds per image", f"{card['macs']:,} ({2 * card['macs']:,} FLOPs)"),
    ]
    short = card.get("short") or {}
    skip = {"arch", "parameters", "input"}
    rows += [(k, v) for k, v in short.items() if k not in skip and v is not None]
    if not short:
        classes = card["classes"]
        rows.append(("classes", f"{len(classes)}: " + " ".join(classes[:12]) + (" ..." if len(classes) > 12 else "")))
    written = card.get("written") or {}
    if written.get("modified"):
        rows.append(("file written", written["modified"]))
    return [{"field": k, "value": v} for k, v in rows]


def _flat_metrics(metrics: dict) -> dict:
    out = {}
    for key, value in metrics.items():
        if key == "per_class":
            continue
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _table(rows: list[dict], table_id: str, header: bool = True) -> str:
    if not rows:
        return f'<table id="{table_id}"><tr><td>none</td></tr></table>'
    columns = list(dict.fromkeys(k for row in rows for k in row))
    out = [f'<div class="wide"><table id="{table_id}">']
    if header:
        out.append("<tr>" + "".join(f"<th>{escape(str(c))}</th>" for c in columns) + "</tr>")
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c)
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            tag = "th" if not header and c == columns[0] else "td"
            cells.append(f'<{tag}{" class=num" if numeric else ""}>{escape(format_cell(value))}</{tag}>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table></div>")
    return "".join(out)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def png_bytes(fig, dpi: int = 100) -> bytes:
    """A matplotlib Figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def top_losses_figure(report, columns: int = 4):
    """Each mistake as two tiles: the image as the model saw it (true → predicted) and its
    saliency map over it (probability of the prediction, loss)."""
    import math

    from cnntools.output.plots import new_figure, show_image, show_overlay

    mistakes = report.doc["top_losses"]
    rows = math.ceil(len(mistakes) / columns)
    fig = new_figure(columns * 2 * 1.35, rows * 1.65)
    axes = fig.subplots(rows, columns * 2, squeeze=False)
    for k, ax in enumerate(axes.flat):
        i = k // 2
        if i >= len(mistakes):
            ax.axis("off")
            continue
        m = mistakes[i]
        if k % 2 == 0:
            show_image(ax, report.images[i], f"#{m['index']}: {m['label_name']} → {m['pred_name']}", fontsize=7)
        else:
            show_overlay(ax, report.images[i], report.maps[i], alpha=0.5, title=f"p {m['prob']:.2f}, loss {m['loss']:.2f}",
                         fontsize=7)
    fig.tight_layout(pad=0.3)
    return fig


def page(reports, comparison: list[dict], version: str) -> str:
    """The report's HTML: draws the figures (curves with `cnntools.output.plots.training_curves`,
    the confusion heatmap with `confusion_heatmap`, the top losses) and renders the page."""
    from cnntools.output.plots import confusion_heatmap, training_curves

    figures = {}
    runs = [r.run for r in reports if r.run is not None]
    if len(reports) > 1 and runs:
        figures["curves"] = png_bytes(training_curves(runs, title="Training curves", labels=[r.label for r in runs]))
    for n, report in enumerate(reports):
        doc = report.doc
        if report.run is not None:
            figures[f"curves-{n}"] = png_bytes(training_curves([report.run], title=f"Training curves: {doc['label']}"))
        accuracy = doc["metrics"]["accuracy"]
        title = f"Confusion matrix: {doc['label']} on {doc['data']}\n{doc['confusion']['total']} images, accuracy {accuracy:.1%}, counts"
        figures[f"confusion-{n}"] = png_bytes(confusion_heatmap(report.counts, doc["card"]["classes"], title=title), dpi=80)
        if doc["top_losses"]:
            figures[f"top-losses-{n}"] = png_bytes(top_losses_figure(report))
    title = f"cnntools report: {reports[0].doc['label']}" if len(reports) == 1 else f"cnntools report: {len(reports)} models"
    return render(reports, comparison, figures, title=title, version=version)
