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
    resume            (resumable files only) JSON part of the training state, see below
    arch_args         (your own model, timm) constructor arguments given with --arch-args
    code              (your own model) {"reference", "kind", "name", "path", "path_given",
                      "module", "sha256", "args"}: where the code is, never the code itself

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
import struct
from dataclasses import dataclass, field
from typing import Any

import torch

from cnntools import files
from cnntools.output import CnnError, first_line, to_jsonable

FORMAT = "cnntools-checkpoint"
FORMAT_VERSION = 1
RESUME_PREFIX = "_resume/"
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
    metadata = {"format": json.dumps(FORMAT), "format_version": json.dumps(FORMAT_VERSION)}
    for key, value in meta.items():
        if key in ("format", "format_version", "resume"):
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


# A safetensors header is JSON; safetensors itself refuses headers above 100 MB. Our metadata
# (history included) is a few hundred kB even for long runs.
MAX_HEADER_BYTES = 100 * 2**20
MAX_METADATA_BYTES = 16 * 2**20
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar")
_NOT_PICKLE = (
    "cnntools never unpickles files because loading a pickle can run arbitrary code — use a .safetensors "
    "checkpoint written by cnntools train (a state dict you trust can be converted in Python with "
    "torch.load(path, weights_only=True) and safetensors.torch.save_file)"
)


def _refuse_non_safetensors(start: bytes, name: str) -> None:
    """A clear error for a file whose first bytes are no safetensors header (pickles named as such)."""
    if start[:4] == b"PK\x03\x04":
        raise CnnError(f"{name}: this is a PyTorch pickle (torch.save zip archive, .pt/.pth); {_NOT_PICKLE}")
    if len(start) >= 2 and start[0] == 0x80 and 2 <= start[1] <= 5:
        raise CnnError(f"{name}: this is a pickle (legacy torch.save / Python pickle); {_NOT_PICKLE}")
    if name.lower().endswith(_PICKLE_SUFFIXES):
        raise CnnError(f"{name}: not a safetensors file (a {name.rsplit('.', 1)[-1]} file is usually a pickle); {_NOT_PICKLE}")
    if len(start) < 9:
        raise CnnError(f"{name}: not a safetensors checkpoint (only {len(start)} bytes)")
    raise CnnError(f"{name}: not a safetensors checkpoint (no safetensors header); cnntools reads .safetensors files written by cnntools train")


def _header_length(start: bytes, size: int | None, name: str) -> int:
    """The header length from the first 9 bytes, checked against the limit and the file size."""
    if len(start) < 9 or start[8:9] != b"{":
        _refuse_non_safetensors(start, name)
    (header_len,) = struct.unpack("<Q", start[:8])
    if header_len > MAX_HEADER_BYTES:
        raise CnnError(
            f"{name}: damaged or not a checkpoint (its safetensors header claims {header_len:,} bytes, "
            f"more than the {MAX_HEADER_BYTES // 2**20} MB limit)"
        )
    if size is not None and header_len > size - 8:
        raise CnnError(f"{name}: truncated safetensors file ({size} bytes, the header alone needs {header_len + 8}); the file was cut short — write it again")
    return header_len


def _check_tensors(header: dict, body: int | None, name: str) -> int:
    """Validate every tensor entry; returns the bytes of tensor data the header describes."""
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CnnError(f"{name}: malformed safetensors header (entry '{key[:80]}')")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_BYTES:
            raise CnnError(f"{name}: tensor '{key[:80]}' has unknown dtype {str(dtype)[:20]!r}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise CnnError(f"{name}: tensor '{key[:80]}' has an invalid shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise CnnError(f"{name}: tensor '{key[:80]}' has invalid data offsets")
        count = 1
        for d in shape:
            count *= d
        if count * DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
            raise CnnError(
                f"{name}: tensor '{key[:80]}' of shape {shape} ({dtype}) needs {count * DTYPE_BYTES[dtype]:,} bytes "
                f"but its data offsets span {offsets[1] - offsets[0]:,}"
            )
        spans.append((offsets[0], offsets[1], key))
    spans.sort()
    end = 0
    for begin, stop, key in spans:
        if begin < end:
            raise CnnError(f"{name}: tensor '{key[:80]}' overlaps another tensor's data; the file is damaged")
        if begin > end:
            raise CnnError(f"{name}: gap before tensor '{key[:80]}' in the data; the file is damaged")
        end = stop
    if body is not None and end > body:
        raise CnnError(f"{name}: truncated safetensors file (tensor data needs {end} bytes, {body} present); the file was cut short — write it again")
    if body is not None and end < body:
        raise CnnError(f"{name}: {body - end:,} unexpected bytes after the tensor data; the file is damaged")
    return end


def _decode_header(raw: bytes, name: str) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CnnError(f"{name}: not a safetensors checkpoint (its header is not valid JSON)") from None
    if not isinstance(header, dict):
        raise CnnError(f"{name}: not a safetensors checkpoint (unexpected header)")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CnnError(f"{name}: malformed safetensors metadata (it must map strings to strings)")
    if sum(len(k) + len(v) for k, v in metadata.items()) > MAX_METADATA_BYTES:
        raise CnnError(f"{name}: metadata larger than {MAX_METADATA_BYTES // 2**20} MB; not a cnntools checkpoint")
    return header


def _read_validated(path: str, data: bytes | None = None) -> tuple[bytes, dict]:
    """(bytes, header) of a safetensors file or of stdin, validated before the tensor data is read.

    `data`: the file's bytes when a caller has read them already (`path` then only names them).

    The 8-byte length and the JSON header are read and checked first, so a file that claims a
    gigantic header, or whose tensors do not add up, is refused without reading the rest.
    """
    import io
    import os
    import sys

    name = files.display_name(path)
    stdin = path == files.STDIO and data is None
    stream = io.BytesIO(data) if data is not None else sys.stdin.buffer if stdin else files.open_binary(path)
    try:
        size = None if stdin else len(data) if data is not None else os.fstat(stream.fileno()).st_size
        start = stream.read(9)
        if stdin and not start:
            raise CnnError("nothing arrived on stdin (expected a file piped into '-')")
        header_len = _header_length(start, size, name)
        raw = start[8:] + stream.read(header_len - 1)
        if len(raw) < header_len:
            raise CnnError(f"{name}: truncated safetensors file (the header needs {header_len + 8} bytes)")
        header = _decode_header(raw, name)
        need = _check_tensors(header, None if stdin else size - 8 - header_len, name)
        rest = stream.read(need)
        if len(rest) < need:
            raise CnnError(f"{name}: truncated safetensors file (tensor data needs {need} bytes, {len(rest)} present); the file was cut short — write it again")
        if stdin and stream.read(1):
            raise CnnError(f"{name}: unexpected bytes after the tensor data; the input is damaged")
        return start[:8] + raw + rest, header
    except OSError as error:
        raise CnnError(f"{name}: cannot read ({error.strerror or error})") from None
    finally:
        if not stdin:
            stream.close()


def read_checkpoint(path: str, data: bytes | None = None) -> tuple[dict, dict]:
    """(tensors, metadata) of a cnntools checkpoint file or stdin, metadata JSON-decoded and validated.

    `data`: the checkpoint's bytes when they were read already (e.g. from stdin).
    """
    from safetensors.torch import load

    name = files.display_name(path)
    data, header = _read_validated(path, data)
    raw = header.get("__metadata__") or {}
    if raw.get("format") != json.dumps(FORMAT):
        raise CnnError(
            f"{name}: a safetensors file but not a cnntools checkpoint (no cnntools metadata); "
            "cnntools needs the architecture and classes that cnntools train stores — for torchvision models use torchvision:NAME"
        )
    meta = {}
    for key, value in raw.items():
        try:
            meta[key] = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            raise CnnError(f"{name}: corrupt cnntools metadata entry '{key[:80]}'") from None
    validate_metadata(meta, name)
    try:
        tensors = load(data)
    except Exception as error:  # noqa: BLE001 - safetensors' own error, as one line
        raise CnnError(f"{name}: unreadable safetensors data ({error})") from None
    return tensors, meta


def _is_int(value, low: int = 0, high: int = 2**31) -> bool:
    return type(value) is int and low <= value <= high


def _is_number(value) -> bool:
    return type(value) in (int, float) and value == value and value not in (float("inf"), float("-inf"))


# key → (check, what it must be). Keys not listed are kept as they are (forward compatibility).
_METADATA_SCHEMA = {
    "format_version": (lambda v: _is_int(v, 1), "a positive integer"),
    "arch": (
        lambda v: isinstance(v, dict) and isinstance(v.get("arch"), str) and _is_int(v.get("in_channels"), 1, 4096)
        and _is_int(v.get("image_size"), 1, 65536) and _is_int(v.get("num_classes"), 1, 10**6)
        and all(isinstance(x, (str, bool, int, float)) or x is None for x in v.values()),
        "an object with arch (name), in_channels, image_size and num_classes",
    ),
    "classes": (lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v), "a list of class names"),
    "mean": (lambda v: isinstance(v, list) and all(_is_number(x) for x in v), "a list of numbers"),
    "std": (lambda v: isinstance(v, list) and all(_is_number(x) and x > 0 for x in v), "a list of positive numbers"),
    "image_size": (lambda v: _is_int(v, 1, 65536), "a positive integer"),
    "in_channels": (lambda v: _is_int(v, 1, 4096), "a positive integer"),
    "data": (lambda v: isinstance(v, dict), "an object"),
    "train_config": (lambda v: isinstance(v, dict), "an object"),
    "metrics": (lambda v: isinstance(v, dict), "an object"),
    "history": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v), "a list of objects"),
    "resume": (lambda v: isinstance(v, dict), "an object"),
    "arch_args": (lambda v: isinstance(v, dict), "an object (constructor arguments)"),
    "code": (lambda v: isinstance(v, dict) and isinstance(v.get("reference"), str), "an object with the code reference"),
}


def validate_metadata(meta: dict, name: str = "checkpoint") -> None:
    """Check decoded cnntools metadata against its schema (types, ranges, agreeing sizes).

    Every value a command later relies on is checked here, so a damaged or hostile file
    ends in one clear error instead of a crash deep inside a command.
    """
    for key, (check, what) in _METADATA_SCHEMA.items():
        if key in meta and not check(meta[key]):
            raise CnnError(f"{name}: malformed cnntools metadata: '{key}' must be {what}")
    if "arch" not in meta:
        raise CnnError(f"{name}: cnntools metadata names no architecture")
    arch = meta["arch"]
    channels = meta.get("in_channels", arch["in_channels"])
    if "classes" in meta and len(meta["classes"]) != arch["num_classes"]:
        raise CnnError(f"{name}: malformed cnntools metadata: {len(meta['classes'])} class names for {arch['num_classes']} classes")
    for key in ("mean", "std"):
        if key in meta and len(meta[key]) != channels:
            raise CnnError(f"{name}: malformed cnntools metadata: '{key}' has {len(meta[key])} values for {channels} channels")


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


def build_model(meta: dict, name: str = "checkpoint", device=None, trust_code: bool = False, code=None):
    """An untrained model of the architecture and config a checkpoint's metadata names.

    `device="meta"` builds it without allocating memory (to compare shapes first). A model
    defined by the user's code runs that code only with `trust_code` (see
    `cnntools.models.user_code`); `code` is the result of `model_code` when the caller has it.
    """
    from cnntools.models import create_model

    config = dict(meta.get("arch") or {})
    arch = config.pop("arch", None)
    config.pop("pretrained", None)  # the weights come from the file, never from the hub
    if not arch:
        raise CnnError(f"{name}: cnntools metadata names no architecture")
    if code is None:
        code = model_code(meta, name, trust_code)
    try:
        if device is not None:
            with torch.device(device):
                return create_model(arch, **config, arch_args=meta.get("arch_args"), code=code)
        return create_model(arch, **config, arch_args=meta.get("arch_args"), code=code)
    except CnnError as error:
        raise CnnError(f"{name}: {error}") from None
    except (TypeError, ValueError, RuntimeError) as error:
        raise CnnError(f"{name}: architecture config {config} does not fit {arch} ({error})") from None


def model_code(meta: dict, name: str = "checkpoint", trust_code: bool = False):
    """(CodeReference, source) of a model defined by the user's code, checked; None for the others.

    Without `trust_code` such a checkpoint is refused with one line naming the file and the
    flag; a code reference without its `code` record is refused outright, so metadata alone
    can never name a file to run.
    """
    from cnntools.models import user_code

    arch = (meta.get("arch") or {}).get("arch")
    if not user_code.is_code_reference(arch):
        return None
    record = meta.get("code")
    if not isinstance(record, dict) or record.get("reference") != arch:
        raise CnnError(f"{name}: the architecture {arch} refers to code but the checkpoint holds no matching code record")
    return user_code.from_record(record, trust_code, name)


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
    interpolation: str = "bilinear"  # of that resize (timm's data config may say bicubic)
    state: dict = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fit_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N×C×H×W at the model's channels and size (resized, or resized + centre-cropped)."""
        from cnntools.data.imageset import convert_channels, resize_uint8

        images = _fit_channels(images, self.in_channels, convert_channels)
        if self.resize_size is not None:
            return _resize_crop(images, self.resize_size, self.image_size, self.interpolation)
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


def _resize_crop(images: torch.Tensor, resize: int, crop: int, interpolation: str = "bilinear") -> torch.Tensor:
    """torchvision's ImageNet preprocessing on uint8 tensors: shorter side to `resize`, centre crop."""
    import torch.nn.functional as F

    h, w = images.shape[2:]
    if h <= w:
        nh, nw = resize, max(1, round(w * resize / h))
    else:
        nh, nw = max(1, round(h * resize / w)), resize
    out = []
    for chunk in images.split(256):
        mode = interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"
        x = F.interpolate(chunk.float(), size=(nh, nw), mode=mode, align_corners=False, antialias=True)
        top, left = (nh - crop) // 2, (nw - crop) // 2
        out.append(x[:, :, top : top + crop, left : left + crop].round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out) if out else images.new_empty((0, images.shape[1], crop, crop))


def load_model(spec: str, device="cpu", data: bytes | None = None, trust_code: bool = False,
               download: bool = False) -> LoadedModel:
    """A model from a cnntools checkpoint (path or `-` for stdin), `torchvision:NAME` or `timm:NAME`.

    The model comes back in eval mode on `device` (a torch.device or a string). `data`: the
    checkpoint's bytes when they were read already (`spec` then only names them).
    `trust_code`: run the user's code a checkpoint refers to (--trust-code). `download`:
    timm may fetch its pretrained weights from the network.
    """
    device = torch.device(device) if not isinstance(device, torch.device) else device
    if spec.startswith(TORCHVISION_PREFIX):
        return _load_torchvision(spec[len(TORCHVISION_PREFIX):], device)
    if spec.startswith("timm:"):
        from cnntools.models.timm_models import load_pretrained_model

        return load_pretrained_model(spec[len("timm:"):], device, download)
    name = files.display_name(spec)
    tensors, meta = read_checkpoint(spec, data)
    weights = model_state(tensors)
    code = model_code(meta, name, trust_code)
    check_weights(meta, weights, name, code=code)
    model = build_model(meta, name, code=code)
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


def check_weights(meta: dict, weights: dict, name: str = "checkpoint", trust_code: bool = False, code=None) -> None:
    """The weights' names and shapes must be exactly those of the architecture the metadata names.

    The model is built on the meta device for this, so metadata naming a huge model
    allocates nothing.
    """
    expected = build_model(meta, name, device="meta", trust_code=trust_code, code=code).state_dict()
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
