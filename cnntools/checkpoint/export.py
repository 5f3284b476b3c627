"""A trained model leaves the tool: ONNX (checked with onnxruntime), torch.export `.pt2`, or
weights-only safetensors.

Exported models take normalised float32 N×C×H×W inputs, exactly what the PyTorch model
takes inside cnntools; the preprocessing that produces them from images (size, resize and
crop, mean/std on a [0, 1] pixel scale, channel order) and the class names travel in the
file's metadata, so a consumer needs nothing else. The batch axis is dynamic.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from dataclasses import dataclass

from cnntools.core.errors import CnnError, UsageError

FORMATS = {".onnx": "onnx", ".pt2": "pt2", ".safetensors": "safetensors"}
EXAMPLE_BATCH = 2  # traced with 2 images, checked with another count: the batch axis must really be dynamic


def export_format(path: str) -> str:
    """onnx, pt2 or safetensors, from the output file's extension (one clear error otherwise)."""
    for suffix, kind in FORMATS.items():
        if path.lower().endswith(suffix):
            return kind
    raise UsageError(f"{path}: export writes .onnx, .pt2 or .safetensors (weights only); name the file with one of them")


def preprocessing(lm) -> dict:
    """How images become the exported model's input, as plain data."""
    pre = lm.preprocessing
    doc = {
        "input": "float32 N x C x H x W, normalised: (pixel / 255 - mean) / std per channel",
        "channels": pre.channels,
        "channel_order": "RGB" if pre.channels == 3 else "grey" if pre.channels == 1 else f"{pre.channels} channels",
        "image_size": pre.size,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "resize": (f"shorter side to {pre.resize} ({pre.interpolation}, antialiased), centre crop {pre.size}"
                   if pre.resize else f"to {pre.size}x{pre.size} (bilinear, antialiased)"),
    }
    return doc


def model_card(lm) -> dict[str, str]:
    """The metadata stored with an exported model (string values, JSON where structured)."""
    return {
        "producer": "cnntools",
        "arch": lm.meta.arch_name,
        "classes": json.dumps(lm.classes),
        "preprocessing": json.dumps(preprocessing(lm)),
        "source": lm.source,
        "data": json.dumps(lm.meta.data.to_json()),
        "metrics": json.dumps({k: v for k, v in lm.meta.metrics.items()
                               if isinstance(v, (int, float, str, bool)) or v is None}),
    }


def _example(lm, batch: int = EXAMPLE_BATCH):
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, *lm.preprocessing.shape, generator=generator)


@contextlib.contextmanager
def _exporter_chatter_to_stderr():
    # torch.onnx prints its progress on stdout, which carries data only.
    with contextlib.redirect_stdout(sys.stderr):
        yield


def export_onnx(lm, path: str, opset: int | None = None) -> None:
    """The model as ONNX with a dynamic batch axis (torch.export-based exporter), metadata
    holding the preprocessing and class names."""
    import warnings

    import torch

    model = lm.model.float().eval()
    kwargs = {"opset_version": opset} if opset else {}
    batch = torch.export.Dim("batch", min=1, max=2**16)
    try:
        with _exporter_chatter_to_stderr(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (_example(lm),), dynamo=True, input_names=["input"], output_names=["logits"],
                dynamic_shapes=({0: batch},), verbose=False, **kwargs,
            )
    except ImportError as error:
        raise CnnError(f"ONNX export needs onnx and onnxscript: pip install 'cnntools[onnx]' ({error})") from None
    except Exception as error:  # noqa: BLE001 - the exporter's many failure kinds, as one line
        raise CnnError(f"{lm.source}: torch.onnx.export failed ({type(error).__name__}: {_first(error)})") from None
    program.model.metadata_props.update(model_card(lm))
    program.model.doc_string = f"{lm.meta.arch_name} exported by cnntools; preprocessing and classes in metadata_props"
    program.save(path, external_data=False)


def export_pt2(lm, path: str) -> None:
    """The model as a torch.export ExportedProgram (`.pt2`) with a dynamic batch axis; the
    metadata goes in the archive as `extra/cnntools.json`."""
    import torch

    model = lm.model.float().eval()
    batch = torch.export.Dim("batch", min=1, max=2**16)
    try:
        program = torch.export.export(model, (_example(lm),), dynamic_shapes=({0: batch},))
    except Exception as error:  # noqa: BLE001
        raise CnnError(f"{lm.source}: torch.export failed ({type(error).__name__}: {_first(error)})") from None
    # torch's C++ archive writer aborts the whole process (std::terminate, exit 134) when the
    # disk fills under it: the archive is built in memory, and written by Python, whose
    # OSError the caller turns into one line (and removes the partial file).
    archive = io.BytesIO()
    torch.export.save(program, archive, extra_files={"cnntools.json": json.dumps(model_card(lm))})
    _write_all(path, archive.getbuffer())


def _write_all(path: str, data) -> None:
    """`data` into the (temporary) file `path`; a full disk or an I/O error is an OSError."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())  # ENOSPC and EIO surface here at the latest, not after the rename


def weights_only_bytes(tensors: dict, meta) -> bytes:
    """A cnntools checkpoint without the resume state: the model's tensors and the metadata
    (`CheckpointMeta`) that describes them (still loadable by every command, not resumable).
    A torchvision/timm model's record becomes a cnntools checkpoint's."""
    import dataclasses

    from safetensors.torch import save

    from cnntools.checkpoint import model_state
    from cnntools.checkpoint.metadata import FORMAT

    return save(model_state(tensors), metadata=dataclasses.replace(meta, resume=None, format=FORMAT).to_header())


@dataclass
class Check:
    """PyTorch against the exported model on the same images."""

    images: int
    max_abs_diff: float  # max |Δlogit|
    top1_agreement: float  # share of images whose top class is the same
    max_abs_logit: float


def compare(reference, exported) -> Check:
    """`Check` of two N×K logit tensors."""
    import torch

    reference, exported = reference.float(), torch.as_tensor(exported).float()
    if reference.shape != exported.shape:
        raise CnnError(f"the exported model gives logits of shape {tuple(exported.shape)}, PyTorch {tuple(reference.shape)}")
    return Check(
        images=int(reference.shape[0]),
        max_abs_diff=float((reference - exported).abs().max()) if reference.numel() else 0.0,
        top1_agreement=float((reference.argmax(1) == exported.argmax(1)).float().mean()) if len(reference) else 1.0,
        max_abs_logit=float(reference.abs().max()) if reference.numel() else 0.0,
    )


def torch_logits(lm, inputs):
    import torch

    with torch.no_grad():
        return lm.model.float().eval()(inputs).float()


def onnx_logits(path: str, inputs, batch_size: int = 64):
    """Logits of an ONNX file under onnxruntime (CPU), in batches."""
    import numpy as np

    try:
        import onnxruntime as ort
    except ImportError:
        raise CnnError("checking the ONNX file needs onnxruntime: pip install 'cnntools[onnx]' (or pass --no-verify)") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    array = inputs.numpy().astype(np.float32)
    return np.concatenate([session.run(None, {name: array[i:i + batch_size]})[0] for i in range(0, len(array), batch_size)])


def pt2_logits(path: str, inputs):
    import torch

    program = torch.export.load(path)
    with torch.no_grad():
        return program.module()(inputs).float()


def _first(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__
