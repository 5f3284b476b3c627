"""Self-describing safetensors checkpoints, and models by name (`torchvision:NAME`).

A cnntools checkpoint is a plain `.safetensors` file. Its tensors are the model's state
dict (no `module.`/`_orig_mod.` prefixes); its metadata (safetensors' string-to-string
map) holds one JSON value per key:

    format            "cnntools-checkpoint"
    format_version    1
    arch              {"arch": "lenet", "in_channels": 3, "image_size": 32, "num_classes": 10, ...}
    classes           ["airplane", ...]
    mean, std         per-channel normalisation, [0, 1] pixel scale
    image_size        input side in pixels;  in_channels
    data              {"spec": "digits", "data_dir": null, "val_split": 0.1, "seed": 0}
    train_config      the resolved training options, seed included
    metrics           final metrics (of the kept epoch)
    history           one record per epoch
    written_by        {"cnntools": VERSION, "torch": VERSION} of the program that wrote the file
    resume            (resumable files only) JSON part of the training state, see below

Resume state lives in the same file. Tensors whose names start with `_resume/` hold its
tensor part (optimizer moments as `_resume/optimizer/state/<param>/<key>`, RNG states as
`_resume/rng/...`, and under `--keep best` the last epoch's weights as `_resume/model/...`
when they differ from the kept ones); the `resume` metadata entry holds the rest (epoch,
batch position, step counts, scheduler state, best metric) with `{"__tensor__": NAME}`
standing for each tensor. `load_model` ignores all of it.

Nothing here ever unpickles a file: pickles (`torch.save`'s `.pt`/`.pth`) are recognised by
their magic bytes and refused. The one exception is torchvision's own published ImageNet
weights for `torchvision:NAME`, read from the local torch hub cache with torch's restricted
`weights_only` loader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch

from cnntools import files
from cnntools.header import FORMAT, FORMAT_VERSION, RESUME_PREFIX, decode_metadata, read_validated, validate_metadata  # noqa: F401 - re-exported
from cnntools.output import CnnError, first_line, to_jsonable

TORCHVISION_PREFIX = "torchvision:"
_STRIP_PREFIXES = ("module.", "_orig_mod.")


# ---------------------------------------------------------------------------- saving


def unwrap_model(model):
    """The plain module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def clean_state_dict(state: dict) -> dict:
    """Keys without `module.`/`_orig_mod.` prefixes; CPU, contiguous, unshared tensors."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _STRIP_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    changed = True
        out[key] = value.detach().to("cpu", copy=True).contiguous()
    return out


def pack(obj: Any, prefix: str, tensors: dict) -> Any:
    """A JSON-able copy of `obj` with each tensor moved into `tensors` under `prefix/...`.

    Dicts with non-string keys (optimizer state is keyed by parameter index) are kept as
    `{"__intkeys__": {...}}` so `unpack` restores them exactly; tuples come back as lists.
    """
    if isinstance(obj, torch.Tensor):
        name = prefix
        tensors[name] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": name}
    if isinstance(obj, dict):
        if obj and all(isinstance(k, int) for k in obj):
            return {"__intkeys__": {str(k): pack(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}}
        return {str(k): pack(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [pack(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, float) and obj != obj:
        return {"__float__": "nan"}
    if isinstance(obj, float) and obj in (float("inf"), float("-inf")):
        return {"__float__": "inf" if obj > 0 else "-inf"}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def unpack(obj: Any, tensors: dict) -> Any:
    """Inverse of `pack`."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__float__"}:
            return float(obj["__float__"])
        if set(obj) == {"__intkeys__"}:
            return {int(k): unpack(v, tensors) for k, v in obj["__intkeys__"].items()}
        return {k: unpack(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack(v, tensors) for v in obj]
    return obj


def checkpoint_bytes(model, meta: dict, resume: dict | None = None) -> bytes:
    """The checkpoint as bytes: weights + JSON metadata (+ packed resume state)."""
    from safetensors.torch import save

    tensors = clean_state_dict(unwrap_model(model).state_dict())
    from cnntools import __version__

    # The versions that wrote the file (a resumed run records its latest writer).
    metadata = {
        "format": json.dumps(FORMAT),
        "format_version": json.dumps(FORMAT_VERSION),
        "written_by": json.dumps({"cnntools": __version__, "torch": torch.__version__}),
    }
    for key, value in meta.items():
        if key in ("format", "format_version", "resume", "written_by"):
            continue
        metadata[key] = json.dumps(to_jsonable(value), allow_nan=False)
    if resume is not None:
        resume_tensors: dict = {}
        packed = pack(resume, RESUME_PREFIX.rstrip("/"), resume_tensors)
        tensors.update(resume_tensors)
        metadata["resume"] = json.dumps(packed, allow_nan=False)
    return save(tensors, metadata=metadata)


def save_checkpoint(path: str, model, meta: dict, resume: dict | None = None) -> None:
    """Write a checkpoint atomically (temporary file, then rename); `-` writes to stdout.

    `meta` holds the metadata entries listed in this module's docstring (any JSON-able
    values); `resume`, when given, makes the file resumable by `train --resume`.
    """
    files.write_bytes(path, checkpoint_bytes(model, meta, resume))


# ---------------------------------------------------------------------------- reading


def read_checkpoint(path: str, data: bytes | None = None) -> tuple[dict, dict]:
    """(tensors, metadata) of a cnntools checkpoint file or stdin, metadata JSON-decoded and validated.

    `data`: the checkpoint's bytes when they were read already (e.g. from stdin).
    """
    from safetensors.torch import load

    name = files.display_name(path)
    data, header = read_validated(path, data)
    meta = decode_metadata(header, name)
    try:
        tensors = load(data)
    except Exception as error:  # noqa: BLE001 - safetensors' own error, as one line
        raise CnnError(f"{name}: unreadable safetensors data ({error})") from None
    return tensors, meta


def resume_state(tensors: dict, meta: dict, path: str = "checkpoint") -> dict:
    """The training state stored by a resumable checkpoint (see the module docstring)."""
    if "resume" not in meta:
        raise CnnError(f"{files.display_name(path)}: holds no resume state (it was written by an older cnntools or stripped); start a new run instead")
    try:
        state = unpack(meta["resume"], tensors)
    except (KeyError, TypeError, ValueError, AttributeError):
        state = None
    types = {"epoch": int, "batch": int, "updates": int, "optimizer": dict, "scheduler": dict}
    if not isinstance(state, dict) or "epoch" not in state or not all(
        type(state[k]) is t and (t is not int or state[k] >= 0) for k, t in types.items() if k in state
    ):
        raise CnnError(f"{files.display_name(path)}: damaged resume state; the weights still load, but training cannot continue from it")
    return state


def model_state(tensors: dict) -> dict:
    """The model's own tensors (resume state left out)."""
    return {k: v for k, v in tensors.items() if not k.startswith(RESUME_PREFIX)}


def build_model(meta: dict, name: str = "checkpoint", device=None):
    """An untrained model of the architecture and config a checkpoint's metadata names.

    `device="meta"` builds it without allocating memory (to compare shapes first).
    """
    from cnntools.models import create_model

    config = dict(meta.get("arch") or {})
    arch = config.pop("arch", None)
    config.pop("pretrained", None)  # the weights come from the file, never from the hub
    if not arch:
        raise CnnError(f"{name}: cnntools metadata names no architecture")
    try:
        if device is not None:
            with torch.device(device):
                return create_model(arch, **config)
        return create_model(arch, **config)
    except CnnError as error:
        raise CnnError(f"{name}: {error}") from None
    except (TypeError, ValueError, RuntimeError) as error:
        raise CnnError(f"{name}: architecture config {config} does not fit {arch} ({error})") from None


# ---------------------------------------------------------------------------- models


@dataclass
class LoadedModel:
    """A model ready to run, with everything needed to feed it and read its outputs."""

    model: Any  # torch.nn.Module, eval mode, on `device`
    arch: str
    classes: list[str]
    mean: list[float]
    std: list[float]
    image_size: int
    in_channels: int
    meta: dict
    data: dict
    device: Any = None
    source: str = ""
    resize_size: int | None = None  # torchvision: shorter side resized to this, then centre-cropped
    state: dict = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fit_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N×C×H×W at the model's channels and size (resized, or resized + centre-cropped)."""
        from cnntools.data.imageset import convert_channels, resize_uint8

        images = _fit_channels(images, self.in_channels, convert_channels)
        if self.resize_size is not None:
            return _resize_crop(images, self.resize_size, self.image_size)
        if tuple(images.shape[2:]) != (self.image_size, self.image_size):
            images = resize_uint8(images, self.image_size)
        return images

    def prepare(self, images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """Normalised float32 inputs on the model's device from uint8 N×C×H×W images
        (in channels_last memory format when asked)."""
        from cnntools.data.loader import fold_normalization, normalize_uint8

        images = self.fit_images(images).to(self.device, non_blocking=True)
        scale, shift = fold_normalization(self.mean, self.std, images.device)
        return normalize_uint8(images, scale, shift, channels_last)

    def load_split(self, split: str, data_override: str | None = None, data_dir: str | None = None, download: bool = False):
        """The split of the model's own dataset (or `data_override`), fitted to the model.

        Labels are mapped onto the model's classes by name when the dataset names them in
        another order; a dataset whose classes the model does not know is refused unless its
        class count matches (then labels are taken as indices, with a warning).
        """
        from dataclasses import replace

        from cnntools.data import load_split
        from cnntools.output import warn

        spec = data_override or self.data.get("spec")
        if not spec:
            raise CnnError(f"{self.source}: no dataset recorded in the model; name one with --data")
        same = data_override is None or data_override == self.data.get("spec")
        data_dir = data_dir if data_dir is not None else (self.data.get("data_dir") if same else None)
        val_split = float(self.data.get("val_split") or 0.0) if same else 0.0
        seed = int(self.data.get("seed") or 0) if same else 0
        imageset = load_split(spec, split, data_dir=data_dir, download=download, val_split=val_split, seed=seed)
        if imageset.classes != self.classes:
            index = {name: i for i, name in enumerate(self.classes)}
            if all(name in index for name in imageset.classes):
                mapping = torch.tensor([index[name] for name in imageset.classes], dtype=torch.long)
                imageset = replace(imageset, labels=mapping[imageset.labels], classes=list(self.classes))
            elif len(imageset.classes) == len(self.classes):
                warn(f"{spec} names its classes differently from the model's; labels are compared by index")
                imageset = replace(imageset, classes=list(self.classes))
            else:
                raise CnnError(
                    f"{spec} has {len(imageset.classes)} classes that the model ({len(self.classes)} classes) does not know; "
                    "evaluate on the dataset the model was trained on, or one with the same class names"
                )
        return replace(imageset, images=self.fit_images(imageset.images))


def _fit_channels(images, channels, convert_channels):
    have = images.shape[1]
    if have == channels:
        return images
    if have == 4:  # RGBA: drop alpha
        images = images[:, :3]
    if have == 2:  # grey + alpha
        images = images[:, :1]
    return convert_channels(images, channels)


def _resize_crop(images: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """torchvision's ImageNet preprocessing on uint8 tensors: shorter side to `resize`, centre crop."""
    import torch.nn.functional as F

    h, w = images.shape[2:]
    if h <= w:
        nh, nw = resize, max(1, round(w * resize / h))
    else:
        nh, nw = max(1, round(h * resize / w)), resize
    out = []
    for chunk in images.split(256):
        x = F.interpolate(chunk.float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top, left = (nh - crop) // 2, (nw - crop) // 2
        out.append(x[:, :, top : top + crop, left : left + crop].round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out) if out else images.new_empty((0, images.shape[1], crop, crop))


def load_model(spec: str, device="cpu", data: bytes | None = None) -> LoadedModel:
    """A model from a cnntools checkpoint (path or `-` for stdin) or `torchvision:NAME`.

    The model comes back in eval mode on `device` (a torch.device or a string). `data`: the
    checkpoint's bytes when they were read already (`spec` then only names them).
    """
    device = torch.device(device) if not isinstance(device, torch.device) else device
    if spec.startswith(TORCHVISION_PREFIX):
        return _load_torchvision(spec[len(TORCHVISION_PREFIX):], device)
    name = files.display_name(spec)
    tensors, meta = read_checkpoint(spec, data)
    weights = model_state(tensors)
    check_weights(meta, weights, name)
    model = build_model(meta, name)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1].strip()
        raise CnnError(f"{name}: weights do not fit architecture {meta['arch'].get('arch')} ({first})") from None
    model.to(device).eval()
    config = meta["arch"]
    classes = list(meta.get("classes") or [str(i) for i in range(config.get("num_classes", 0))])
    channels = int(meta.get("in_channels", config.get("in_channels", 3)))
    return LoadedModel(
        model=model,
        arch=config.get("arch", ""),
        classes=classes,
        mean=list(meta.get("mean") or [0.0] * channels),
        std=list(meta.get("std") or [1.0] * channels),
        image_size=int(meta.get("image_size", config.get("image_size", 32))),
        in_channels=channels,
        meta=meta,
        data=dict(meta.get("data") or {}),
        device=device,
        source=name,
        state=tensors,
    )


def check_weights(meta: dict, weights: dict, name: str = "checkpoint") -> None:
    """The weights' names and shapes must be exactly those of the architecture the metadata names.

    The model is built on the meta device for this, so metadata naming a huge model
    allocates nothing.
    """
    expected = build_model(meta, name, device="meta").state_dict()
    missing, unexpected = _compare_keys(expected, weights)
    if missing or unexpected:
        raise CnnError(
            f"{name}: weights do not match architecture {meta['arch'].get('arch')} "
            f"(missing {len(missing)}, unexpected {len(unexpected)}, e.g. {(missing or unexpected)[0]})"
        )
    wrong = [k for k, v in expected.items() if tuple(v.shape) != tuple(weights[k].shape)]
    if wrong:
        raise CnnError(
            f"{name}: weights do not fit architecture {meta['arch'].get('arch')} ({wrong[0]} has shape "
            f"{tuple(weights[wrong[0]].shape)}, the architecture needs {tuple(expected[wrong[0]].shape)})"
        )


def _compare_keys(expected: dict, got: dict) -> tuple[list, list]:
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    return missing, unexpected


def _load_torchvision(name: str, device) -> LoadedModel:
    import torchvision.models as tvm

    from cnntools.models import no_inplace
    from cnntools.models.hub import default_weights, load_cached_state_dict

    weights = default_weights(name)
    state = load_cached_state_dict(weights, name)
    # What torchvision's builders set themselves when they are given weights.
    extra = {
        "googlenet": {"aux_logits": False, "transform_input": True, "init_weights": False},
        "inception_v3": {"aux_logits": False, "transform_input": True, "init_weights": False},
    }.get(name, {})
    model = tvm.get_model(name, weights=None, **extra)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CnnError(f"torchvision:{name}: the cached weights do not fit the model ({first_line(error)}); delete the file and fetch it again") from None
    no_inplace(model).to(device).eval()
    preprocess = weights.transforms()
    crop = int(preprocess.crop_size[0])
    resize = int(preprocess.resize_size[0])
    categories = list(weights.meta["categories"])
    meta = {
        "format": "torchvision",
        "arch": {"arch": f"torchvision:{name}", "in_channels": 3, "image_size": crop, "num_classes": len(categories)},
        "classes": categories,
        "mean": list(preprocess.mean),
        "std": list(preprocess.std),
        "image_size": crop,
        "in_channels": 3,
        "weights": str(weights),
        "resize_size": resize,
        "metrics": {k: v for k, v in weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).items()},
    }
    return LoadedModel(
        model=model,
        arch=f"torchvision:{name}",
        classes=categories,
        mean=list(preprocess.mean),
        std=list(preprocess.std),
        image_size=crop,
        in_channels=3,
        meta=meta,
        data={"spec": None, "data_dir": None, "val_split": 0.0, "seed": 0},
        device=device,
        source=f"torchvision:{name}",
        resize_size=resize,
    )
