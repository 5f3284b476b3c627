"""`cnntools export`: a trained model as ONNX (checked with onnxruntime), `.pt2` or weights-only safetensors."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cnntools.cli import options
from cnntools.cli.completion import complete_model
from cnntools.output import emitter as output
from cnntools.core.errors import CnnError, UsageError


# -o/--output in this command's --help (the shared option's help is generic).
OUTPUT_HELP = "The file to write: FILE.onnx, FILE.pt2 (torch.export) or FILE.safetensors (weights only)."

def main(
    model: Annotated[str, typer.Argument(metavar="MODEL", autocompletion=complete_model, help="Checkpoint (.safetensors, - for stdin), torchvision:NAME or timm:NAME.")],
    out: options.Output = None,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Run the exported model and PyTorch on the same dataset images and compare.")
    ] = True,
    num: options.Num = 64,
    tolerance: Annotated[
        float,
        typer.Option("--tolerance", min=0.0, help="Largest |Δlogit| the check accepts, relative to the largest |logit| (at least 1)."),
    ] = 1e-4,
    opset: Annotated[Optional[int], typer.Option("--opset", min=7, help="ONNX opset version (default: the exporter's).")] = None,
    data: options.Data = None,
    data_dir: options.DataDir = None,
    split: options.Split = "test",
    download: options.Download = False,
    trust_code: options.TrustCode = False,
    fmt: options.Format = "table",
    quiet: options.Quiet = False,
    debug: options.Debug = False,
) -> None:
    """A trained model leaves the tool: ONNX, torch.export .pt2, or weights-only safetensors.

    -n/--num images (default 64) of --data (default: the model's own dataset) are used for the check.

    .onnx and .pt2 take normalised float32 N x C x H x W inputs with a dynamic batch axis; the
    preprocessing (size, resize and crop, mean/std), the class names and the architecture are
    stored in the file's metadata (ONNX metadata_props; the .pt2 archive's extra/cnntools.json).
    Right after export the file is run (onnxruntime, or torch.export.load) on --num real
    images of the model's dataset next to the PyTorch model, and the largest |Δlogit| and the
    top-1 agreement are reported; a file that disagrees beyond --tolerance is not written.
    .safetensors keeps the model's tensors and metadata without the resume state: a smaller
    checkpoint that every command still reads.

    \b
    Examples:
      cnntools export model.safetensors -o model.onnx
      cnntools export model.safetensors -o model.pt2 --format json
      cnntools export model.safetensors -o small.safetensors
      cnntools export mynet.safetensors -o mynet.onnx --trust-code
    """
    output.configure(quiet=quiet, debug=debug)
    from cnntools.checkpoint import export as ex
    from cnntools.output import files

    if out is None or out == "-":
        raise UsageError("export writes a file: name it with -o FILE.onnx, FILE.pt2 or FILE.safetensors (weights only)")
    kind = ex.export_format(out)
    files.check_output(out)
    if kind == "safetensors":
        doc = _weights_only(model, out, trust_code, download)
    else:
        doc = _export_model(model, out, kind, verify, num, tolerance, opset, data, data_dir, split, download, trust_code)
    rows = [{"field": k, "value": v} for k, v in _flat(doc).items()]
    output.emit(doc, fmt, schema="export", rows=rows, columns=["field", "value"], title=f"Exported {doc['model']} to {out}")


def _weights_only(model: str, out: str, trust_code: bool, download: bool) -> dict:
    from cnntools.checkpoint import export as ex
    from cnntools.output import files

    if model.startswith(("torchvision:", "timm:")):
        from cnntools.checkpoint import load_model

        lm = load_model(model, "cpu", trust_code=trust_code, download=download)
        tensors, meta, before = lm.model.state_dict(), lm.meta, None
    else:
        from cnntools.checkpoint import read_checkpoint

        raw = files.read_bytes(model)
        tensors, meta = read_checkpoint(model, raw)
        before = len(raw)
    data = ex.weights_only_bytes(tensors, meta)
    files.write_bytes(out, data)
    output.info(f"Wrote {out}: {len(data):,} bytes" + (f" (was {before:,} with the resume state)" if before else ""))
    return {"model": files.display_name(model), "output": out, "format": "safetensors",
            "bytes": len(data), "source_bytes": before}


def _export_model(model, out, kind, verify, num, tolerance, opset, data, data_dir, split, download, trust_code) -> dict:
    import os

    import torch

    from cnntools.checkpoint import export as ex
    from cnntools.output import files
    from cnntools.checkpoint import load_model
    from cnntools.data import load_for_model

    lm = load_model(model, "cpu", trust_code=trust_code, download=download)  # exported on the CPU in fp32
    from cnntools.inference.memory import fit_model_batch

    fit_model_batch(lm, 1)  # tracing runs one image
    inputs = spec = None
    if verify:
        try:
            imageset = load_for_model(lm.meta.data, split, lm.preprocessing, lm.classes, data=data, data_dir=data_dir,
                                      download=download, name=lm.source)
        except CnnError as error:
            raise CnnError(f"{error} (the check of the export runs on the model's dataset; or pass --no-verify)") from None
        if len(imageset) == 0:
            raise CnnError(f"{imageset.spec} {split}: no images to check the export on; pick another --split or --no-verify")
        picked = torch.linspace(0, len(imageset) - 1, min(num, len(imageset))).round().long().unique()
        inputs = lm.preprocessing(imageset.images[picked]).float()
        spec = f"{imageset.spec} {imageset.split}"
    arch, shape = lm.meta.arch_name, lm.preprocessing.shape
    output.info(f"Exporting {arch} ({'x'.join(map(str, shape))} inputs) to {kind}")
    doc = {"model": lm.source, "output": out, "format": kind, "arch": arch,
           "input_shape": ["batch", *shape], "classes": len(lm.classes)}
    with files.atomic_path(out) as tmp:
        (ex.export_onnx(lm, tmp, opset) if kind == "onnx" else ex.export_pt2(lm, tmp))
        doc["bytes"] = os.path.getsize(tmp)
        if verify:
            reference = ex.torch_logits(lm, inputs)
            exported = ex.onnx_logits(tmp, inputs) if kind == "onnx" else ex.pt2_logits(tmp, inputs)
            check = ex.compare(reference, exported)
            limit = tolerance * max(1.0, check.max_abs_logit)
            doc["check"] = {"data": spec, "images": check.images, "max_abs_diff": check.max_abs_diff,
                            "top1_agreement": check.top1_agreement, "max_abs_logit": check.max_abs_logit,
                            "tolerance": limit, "runtime": "onnxruntime" if kind == "onnx" else "torch.export.load"}
            if check.max_abs_diff > limit:
                raise CnnError(
                    f"the exported model disagrees with PyTorch on {spec}: max |Δlogit| {check.max_abs_diff:.3g} > "
                    f"{limit:.3g}, top-1 agreement {check.top1_agreement:.1%}; {out} was not written"
                )
    if verify:
        c = doc["check"]
        output.info(f"Checked on {c['images']} images of {spec}: max |Δlogit| {c['max_abs_diff']:.3g}, "
                    f"top-1 agreement {c['top1_agreement']:.1%}")
    return doc


def _flat(doc: dict, prefix: str = "") -> dict:
    rows = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            rows.update(_flat(value, f"{prefix}{key}."))
        else:
            rows[f"{prefix}{key}"] = "x".join(map(str, value)) if isinstance(value, list) else value
    return rows
