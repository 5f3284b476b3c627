"""The checkpoint file: safetensors bytes with JSON metadata, written atomically and read
back with every header field validated before the tensor data is touched.

torch is imported only by the functions that make or read tensors, so a header (and the
metadata in it) can be read without it.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from cnntools.output import files
from cnntools.checkpoint.metadata import FORMAT, FORMAT_VERSION, CheckpointMeta
from cnntools.core.errors import CnnError
from cnntools.output.emitter import to_jsonable

RESUME_PREFIX = "_resume/"
_STRIP_PREFIXES = ("module.", "_orig_mod.")


# ---------------------------------------------------------------------------- saving


def unwrap_model(model):
    """The plain module inside DistributedDataParallel / torch.compile wrappers."""
    import torch

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
    import torch

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


def checkpoint_bytes(model, meta: CheckpointMeta | dict, resume: dict | None = None) -> bytes:
    """The checkpoint as bytes: weights + JSON metadata (+ packed resume state).

    `meta` is a `CheckpointMeta`; a plain dict is written as given (key → JSON value), which
    is how tests and tools craft files no writer of ours would produce. Either way the file
    records `written_by`, the versions of the program writing it (a resumed run: its latest).
    """
    import torch
    from safetensors.torch import save

    from cnntools import __version__

    tensors = clean_state_dict(unwrap_model(model).state_dict())
    if isinstance(meta, CheckpointMeta):
        metadata = meta.to_header()
    else:
        metadata = {"format": json.dumps(FORMAT), "format_version": json.dumps(FORMAT_VERSION)}
        metadata.update({key: json.dumps(to_jsonable(value), allow_nan=False)
                         for key, value in meta.items() if key not in ("format", "format_version")})
    metadata.pop("resume", None)
    if isinstance(meta, CheckpointMeta) or "written_by" not in meta:
        metadata["written_by"] = json.dumps({"cnntools": __version__, "torch": torch.__version__})
    if resume is not None:
        resume_tensors: dict = {}
        packed = pack(resume, RESUME_PREFIX.rstrip("/"), resume_tensors)
        tensors.update(resume_tensors)
        metadata["resume"] = json.dumps(packed, allow_nan=False)
    return save(tensors, metadata=metadata)


def save_checkpoint(path: str, model, meta: CheckpointMeta | dict, resume: dict | None = None) -> None:
    """Write a checkpoint atomically (temporary file, then rename); `-` writes to stdout.

    `resume`, when given, makes the file resumable by `train --resume`.
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


def _read_validated(path: str, data: bytes | None = None, header_only: bool = False) -> tuple[bytes, dict]:
    """(bytes, header) of a safetensors file or of stdin, validated before the tensor data is read.

    `data`: the file's bytes when a caller has read them already (`path` then only names them).
    `header_only`: stop after the header of a file (the bytes returned are then empty).

    The 8-byte length and the JSON header are read and checked first, so a file that claims a
    gigantic header, or whose tensors do not add up, is refused without reading the rest.
    """
    import io
    import sys

    name = files.display_name(path)
    stdin = path == files.STDIO and data is None
    stream = io.BytesIO(data) if data is not None else sys.stdin.buffer if stdin else files.open_binary(path)
    try:
        size = None if stdin else len(data) if data is not None else _regular_size(stream.fileno())
        start = stream.read(9)
        if size is None and not start:
            raise CnnError("nothing arrived on stdin (expected a file piped into '-')" if stdin else f"{name}: empty pipe, nothing arrived")
        header_len = _header_length(start, size, name)
        raw = start[8:] + stream.read(header_len - 1)
        if len(raw) < header_len:
            raise CnnError(f"{name}: truncated safetensors file (the header needs {header_len + 8} bytes)")
        header = _decode_header(raw, name)
        need = _check_tensors(header, None if size is None else size - 8 - header_len, name)
        if header_only and size is not None:
            return b"", header
        rest = stream.read(need)
        if len(rest) < need:
            raise CnnError(f"{name}: truncated safetensors file (tensor data needs {need} bytes, {len(rest)} present); the file was cut short — write it again")
        if size is None and stream.read(1):
            raise CnnError(f"{name}: unexpected bytes after the tensor data; the input is damaged")
        return start[:8] + raw + rest, header
    except OSError as error:
        raise CnnError(f"{name}: cannot read ({error.strerror or error})") from None
    finally:
        if not stdin:
            stream.close()


def _regular_size(fd: int) -> int | None:
    """The size of a regular file; None for a pipe (`<(command)`), read like stdin."""
    import os
    import stat

    st = os.fstat(fd)
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def read_checkpoint(path: str, data: bytes | None = None) -> tuple[dict, CheckpointMeta]:
    """(tensors, metadata) of a cnntools checkpoint file or stdin, the metadata validated.

    `data`: the checkpoint's bytes when they were read already (e.g. from stdin).
    """
    from safetensors.torch import load

    name = files.display_name(path)
    data, header = _read_validated(path, data)
    meta = CheckpointMeta.from_header(header.get("__metadata__") or {}, name)
    try:
        tensors = load(data)
    except Exception as error:  # noqa: BLE001 - safetensors' own error, as one line
        raise CnnError(f"{name}: unreadable safetensors data ({error})") from None
    return tensors, meta


def read_header(path: str) -> tuple[dict, int, int]:
    """(header, header bytes, file bytes) of a safetensors file, validated, without torch
    (`-`: stdin, read to its end). Header bytes count the 8-byte length prefix.

    From a file only the header is read; the tensor entries are still checked against the
    file's size, so a truncated or padded file is refused as `read_checkpoint` refuses it.
    """
    import os

    if path == files.STDIO:
        data, header = _read_validated(path)
        return header, 8 + struct.unpack("<Q", data[:8])[0], len(data)
    name = files.display_name(path)
    with files.open_binary(path) as stream:
        try:
            size = os.fstat(stream.fileno()).st_size
            start = stream.read(9)
            header_len = _header_length(start, size, name)
            raw = start[8:] + stream.read(header_len - 1)
        except OSError as error:
            raise CnnError(f"{name}: cannot read ({error.strerror or error})") from None
    if len(raw) < header_len:
        raise CnnError(f"{name}: truncated safetensors file (the header needs {header_len + 8} bytes)")
    header = _decode_header(raw, name)
    _check_tensors(header, size - 8 - header_len, name)
    return header, 8 + header_len, size


def decode_metadata(header: dict, name: str) -> dict:
    """The cnntools metadata of a safetensors header, validated (CheckpointMeta), as its JSON
    document: key → value, unknown keys (`written_by`, a newer writer's) included."""
    return CheckpointMeta.from_header(header.get("__metadata__") or {}, name).to_json()


def read_metadata(path: str) -> CheckpointMeta:
    """The validated metadata of a checkpoint, read from its header alone (no torch, no
    tensor data read beyond what validating the header needs)."""
    _, header = _read_validated(path, header_only=True)
    return CheckpointMeta.from_header(header.get("__metadata__") or {}, files.display_name(path))


def resume_state(tensors: dict, meta: CheckpointMeta, path: str = "checkpoint") -> dict:
    """The training state stored by a resumable checkpoint (see the package docstring)."""
    if meta.resume is None:
        raise CnnError(f"{files.display_name(path)}: holds no resume state (it was written by an older cnntools or stripped); start a new run instead")
    try:
        state = unpack(meta.resume, tensors)
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
