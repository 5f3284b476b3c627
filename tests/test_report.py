"""`cnntools report`: the page's numbers are those eval, confusion and saliency print for the
same model, and the page opens in a real headless browser (Debian's chromium) with every
image loaded."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from cnntools.output.emitter import format_cell
from interpret_fixtures import cached_checkpoint, short_digits_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_RUN_ONLY = {"seconds", "images_per_s", "model", "label", "arch", "data", "split"}  # eval's record, not metrics


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_torch_thread):
    """A real 3-epoch train run on digits at 8×8: the file records its history and options."""
    path = tmp_path_factory.mktemp("report") / "run.safetensors"
    short_digits_run(path)
    return str(path)


def _report(cli, *args):
    result = cli("report", *args, "--device", "cpu", "--precision", "fp32", "-q")
    assert result.exit_code == 0, result.stderr
    return result


def test_report_numbers_are_evals_confusions_and_saliencys(cli, trained, tmp_path):
    doc = _report(cli, trained, "-n", "5", "--format", "json").json()
    (model,) = doc["models"]
    evaluated = cli("eval", trained, "--format", "json", "--device", "cpu", "--precision", "fp32").json()["models"][0]
    assert model["metrics"] == {k: v for k, v in evaluated.items() if k not in _RUN_ONLY}
    confusion = cli("confusion", trained, "--format", "json", "--device", "cpu", "--precision", "fp32").json()
    assert model["confusion"]["counts"] == confusion["counts"]
    assert [{k: p[k] for k in ("true", "pred", "count", "share_of_true")} for p in model["confusion"]["most_confused"]] == \
        [{k: p[k] for k in ("true", "pred", "count", "share_of_true")} for p in confusion["most_confused"]]

    # Top losses: eval's predictions CSV, mistakes only, highest loss first.
    pred_csv = tmp_path / "pred.csv"
    cli("eval", trained, "-o", pred_csv, "--device", "cpu", "--precision", "fp32", "-q")
    rows = [r for r in csv.DictReader(pred_csv.open()) if r["label"] != r["pred"]]
    rows.sort(key=lambda r: (-float(r["loss"]), int(r["index"])))
    top = model["top_losses"]
    assert len(top) == min(5, len(rows)) and model["confusion"]["mistakes"] == len(rows) > 0
    assert [m["index"] for m in top] == [int(r["index"]) for r in rows[: len(top)]]
    assert [m["loss"] for m in top] == sorted((m["loss"] for m in top), reverse=True)
    for m, r in zip(top, rows):
        assert m["loss"] == pytest.approx(float(r["loss"]), abs=1e-5) and m["pred_name"] == r["pred_name"]

    # Their maps: saliency's own for the same images, method, layer and target.
    indices = ",".join(str(m["index"]) for m in top)
    sal = cli("saliency", trained, "-i", indices, "--target", "pred", "--method", "gradcam", "--format", "json",
              "--device", "cpu", "--precision", "fp32", "-q").json()
    assert model["saliency"] == {"method": "gradcam", "layer": sal["models"][0]["layer"], "target": "pred"}
    assert [m["saliency_peak"] for m in top] == [[r["peak_row"], r["peak_col"]] for r in sal["images"]]

    # The card: info's record, the MACs featmaps counts, the kept epoch.
    info = cli("info", trained, "--format", "json").json()["checkpoints"][0]
    layers = cli("featmaps", trained, "--list-layers", "--format", "json", "--device", "cpu").json()
    card = model["card"]
    assert card["summary"] == info and card["kept_epoch"] == info["history"]["kept_epoch"]
    assert card["macs"] == layers["totals"]["macs"] > 0 and card["parameters"] == info["parameters"]
    assert card["layers"] == [{k: r[k] for k in ("layer", "type", "output_shape", "params", "macs")} for r in layers["layers"]]
    assert doc["comparison"][0]["accuracy"] == evaluated["accuracy"]


class _Page(HTMLParser):
    """Tables by id (rows of cell texts) and the img sources of an HTML page."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self.probe = ""
        self._table = None
        self._cell = None
        self._in_probe = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id", ""), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = ""
        elif tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "pre" and attrs.get("id") == "probe":
            self._in_probe = True

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._table[-1].append(self._cell.strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "pre":
            self._in_probe = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._in_probe:
            self.probe += data


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def _as_dict(table: list[list[str]]) -> dict[str, str]:
    return {row[0]: row[1] for row in table[1:]}


# Written into the page copy the browser opens: what the browser made of every image.
_PROBE = """<pre id="probe"></pre><script>
document.getElementById("probe").textContent = JSON.stringify(Array.from(document.images).map(
  i => [i.complete, i.naturalWidth, i.naturalHeight]));
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run tries)")
def test_report_opens_in_headless_chromium_with_every_image_and_evals_numbers(cli, trained, tmp_path):
    from PIL import Image

    other = cached_checkpoint("digits")  # simple-cnn at 16×16, no recorded history
    html = tmp_path / "run.html"
    _report(cli, trained, other, "-o", html, "-n", "4")
    text = html.read_text(encoding="utf-8")
    # Self-contained: nothing fetched, no script needed.
    assert "<script" not in text and "<link" not in text and not re.search(r'src="(?!data:)', text)

    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                          "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = _parse(dom.stdout)
    loaded = json.loads(page.probe)
    # Two curves figures are per model only for the run with a history, plus the overlay of both.
    assert len(loaded) == len(_parse(text).images) >= 6
    assert all(complete and width > 0 and height > 0 for complete, width, height in loaded), loaded
    for src in page.images:  # every data URI is a PNG PIL decodes, at the size the browser saw
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).load()
    assert sorted(w for _, w, _ in loaded) == sorted(
        Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).width for s in page.images)

    # The tables the browser shows hold the numbers eval and confusion print.
    for n, model in enumerate((trained, other)):
        evaluated = cli("eval", model, "--format", "json", "--device", "cpu", "--precision", "fp32").json()["models"][0]
        metrics = _as_dict(page.tables[f"metrics-{n}"])
        assert metrics["accuracy"] == format_cell(evaluated["accuracy"]) and metrics["loss"] == format_cell(evaluated["loss"])
        assert metrics["f1_macro"] == format_cell(evaluated["f1_macro"]) and metrics["top_k.5"] == format_cell(evaluated["top_k"]["5"])
        per_class = page.tables[f"per-class-{n}"]
        assert per_class[0] == ["class", "support", "accuracy", "precision", "recall", "f1"]
        assert per_class[1:] == [[c["class"], str(c["support"])] + [format_cell(c[k]) for k in ("accuracy", "precision", "recall", "f1")]
                                 for c in evaluated["per_class"]]
        confusion = cli("confusion", model, "--format", "json", "--device", "cpu", "--precision", "fp32").json()
        pairs = page.tables[f"most-confused-{n}"][1:]
        assert pairs == [[p["true_name"], p["pred_name"], str(p["count"]), format_cell(p["share_of_true"])]
                         for p in confusion["most_confused"]]
        comparison = page.tables["comparison"]
        row = dict(zip(comparison[0], comparison[n + 1]))
        assert row["accuracy"] == format_cell(evaluated["accuracy"]) and row["model"] == model
        assert row["top_k.5"] == format_cell(evaluated["top_k"]["5"]) and row["f1_macro"] == format_cell(evaluated["f1_macro"])
    listed = cli("featmaps", trained, "--list-layers", "--format", "json", "--device", "cpu").json()
    shown = page.tables["layers-0"]
    assert [row[shown[0].index("macs")] for row in shown[1:]] == [str(r["macs"]) for r in listed["layers"]]
    card = {row[0]: row[1] for row in page.tables["card-0"]}  # a card has no header row
    assert card["multiply-adds per image"] == f"{listed['totals']['macs']:,} ({2 * listed['totals']['macs']:,} FLOPs)"
    kept = cli("info", trained, "--format", "json").json()["checkpoints"][0]["history"]["kept_epoch"]
    assert card["kept epoch"].startswith(f"{kept} of 3 (--keep best")
    assert card["architecture"] == "simple-cnn" and card["parameters"].endswith("trainable)")

    shot = tmp_path / "shot.png"
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                             "--window-size=1200,3000", f"--screenshot={shot}", html.as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    picture = Image.open(shot).convert("L")
    assert picture.size == (1200, 3000)
    # Rendered, not blank: dark text and figures on the white page.
    histogram = picture.histogram()
    assert sum(histogram[:128]) > 0.01 * sum(histogram)


def test_refusals(cli, trained, tmp_path):
    result = cli("report", trained, "-o", tmp_path / "run.png")
    assert result.exit_code == 2 and "HTML" in result.stderr and not (tmp_path / "run.png").exists()
    result = cli("report", trained, "--method", "nope")
    assert result.exit_code == 2 and "unknown saliency method" in result.stderr
    result = cli("report", "-", "-", "--format", "json")
    assert result.exit_code == 1 and "stdin" in result.stderr


def test_stdin_model_and_html_on_stdout(cli, trained):
    from pathlib import Path

    result = cli("report", "-", "-o", "-", "-n", "2", "--device", "cpu", "--precision", "fp32",
                 input=Path(trained).read_bytes())
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("<!DOCTYPE html>") and "Report on the test split" in result.stderr
    page = _parse(result.stdout)
    assert page.tables["card-0"][0] == ["architecture", "simple-cnn"]


def test_a_model_without_conv_layers_gets_gradient_maps_and_its_macs(cli, tmp_path):
    """An MLP has no CAM layer: its top losses are explained by the input gradient, as
    `saliency --method gradient` computes it; MACs are those of its two linear layers."""
    import torch

    from cnntools.checkpoint import save_checkpoint
    from cnntools.models import create_model
    from test_checkpoint import _meta

    torch.manual_seed(0)
    model = create_model("mlp", 1, 8, 10).eval()  # untrained: plenty of mistakes
    path = tmp_path / "mlp.safetensors"
    save_checkpoint(str(path), model, _meta(arch="mlp", channels=1, size=8))
    (doc,) = _report(cli, path, "-n", "3", "--format", "json").json()["models"]
    assert doc["saliency"] == {"method": "gradient", "layer": None, "target": "pred"}
    assert doc["card"]["macs"] == 64 * 128 + 128 * 10 and doc["card"]["parameters"] == sum(p.numel() for p in model.parameters())
    indices = ",".join(str(m["index"]) for m in doc["top_losses"])
    sal = cli("saliency", path, "-i", indices, "--method", "gradient", "--target", "pred", "--format", "json",
              "--device", "cpu", "--precision", "fp32", "-q").json()
    assert [m["saliency_peak"] for m in doc["top_losses"]] == [[r["peak_row"], r["peak_col"]] for r in sal["images"]]


def test_names_from_files_are_escaped_in_the_page(cli, tmp_path):
    """Class names are data: a folder named like markup shows as text and adds no element."""
    import numpy as np
    from PIL import Image

    from interpret_fixtures import train_checkpoint

    names = ["<i>a&b", "c\"d'<script>"]
    rng = np.random.default_rng(0)
    for k, name in enumerate(names):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 80, (8, 8, 3), dtype=np.uint8) + (150 if k else 0)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    path = train_checkpoint(tmp_path / "m.safetensors", str(tmp_path / "data"), "simple-cnn", 8, 3, 2)
    html = tmp_path / "r.html"
    _report(cli, path, "-o", html, "--split", "train")
    text = html.read_text(encoding="utf-8")
    assert "<script" not in text and "<i>" not in text and "&lt;i&gt;a&amp;b" in text
    page = _parse(text)
    per_class = page.tables["per-class-0"]
    assert [row[0] for row in per_class[1:]] == sorted(names)
