"""The checkpoint's metadata entries and the checks every value passes before it is used."""

from __future__ import annotations

from cnntools.output import CnnError


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
    "steps": (lambda v: isinstance(v, list) and all(isinstance(r, dict) and _is_int(r.get("updates"), 0, 2**62) for r in v),
              "a list of objects with an integer 'updates'"),
    "label": (lambda v: isinstance(v, str), "a string"),
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
