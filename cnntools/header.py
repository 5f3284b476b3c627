"""The safetensors header of a cnntools checkpoint, read and validated without torch.

A safetensors file is an 8-byte little-endian header length, a JSON header (tensor names,
dtypes, shapes, data offsets, and a `__metadata__` string-to-string map), then the tensor
data. Everything a command needs to know about a checkpoint but its weights is in the
header, so `info`, shell completion and the validator read only this part and never
import torch (`checkpoint.py` loads the tensors).
"""

from __future__ import annotations

import json
import struct

from cnntools import files
from cnntools.output import CnnError

FORMAT = "cnntools-checkpoint"
FORMAT_VERSION = 1
RESUME_PREFIX = "_resume/"

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


def refuse_non_safetensors(start: bytes, name: str) -> None:
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


def header_length(start: bytes, size: int | None, name: str) -> int:
    """The header length from the first 9 bytes, checked against the limit and the file size."""
    if len(start) < 9 or start[8:9] != b"{":
        refuse_non_safetensors(start, name)
    (header_len,) = struct.unpack("<Q", start[:8])
    if header_len > MAX_HEADER_BYTES:
        raise CnnError(
            f"{name}: damaged or not a checkpoint (its safetensors header claims {header_len:,} bytes, "
            f"more than the {MAX_HEADER_BYTES // 2**20} MB limit)"
        )
    if size is not None and header_len > size - 8:
        raise CnnError(f"{name}: truncated safetensors file ({size} bytes, the header alone needs {header_len + 8}); the file was cut short — write it again")
    return header_len


def check_tensors(header: dict, body: int | None, name: str) -> int:
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


def decode_header(raw: bytes, name: str) -> dict:
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


def read_validated(path: str, data: bytes | None = None) -> tuple[bytes, dict]:
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
        header_len = header_length(start, size, name)
        raw = start[8:] + stream.read(header_len - 1)
        if len(raw) < header_len:
            raise CnnError(f"{name}: truncated safetensors file (the header needs {header_len + 8} bytes)")
        header = decode_header(raw, name)
        need = check_tensors(header, None if stdin else size - 8 - header_len, name)
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


def read_header(path: str) -> tuple[dict, int, int]:
    """(header, header bytes, file bytes) of a safetensors file, validated (`-`: stdin, read to its end).

    From a file only the header is read; the tensor entries are still checked against the
    file's size, so a truncated or padded file is refused as `read_checkpoint` refuses it.
    Header bytes count the 8-byte length prefix.
    """
    import os

    if path == files.STDIO:
        data, header = read_validated(path)
        return header, 8 + struct.unpack("<Q", data[:8])[0], len(data)
    name = files.display_name(path)
    with files.open_binary(path) as stream:
        try:
            size = os.fstat(stream.fileno()).st_size
            start = stream.read(9)
            header_len = header_length(start, size, name)
            raw = start[8:] + stream.read(header_len - 1)
        except OSError as error:
            raise CnnError(f"{name}: cannot read ({error.strerror or error})") from None
    if len(raw) < header_len:
        raise CnnError(f"{name}: truncated safetensors file (the header needs {header_len + 8} bytes)")
    header = decode_header(raw, name)
    check_tensors(header, size - 8 - header_len, name)
    return header, 8 + header_len, size


def decode_metadata(header: dict, name: str) -> dict:
    """The cnntools metadata of a header, each value JSON-decoded and validated."""
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
    return meta


def read_metadata(path: str) -> dict:
    """The validated cnntools metadata of a checkpoint file (or `-`), without reading its weights."""
    return decode_metadata(read_header(path)[0], files.display_name(path))


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
    "written_by": (lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()), "an object of version strings"),
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
