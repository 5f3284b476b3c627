"""What `cnntools env` reports for a bug report: versions, the extras installed, the devices a
model could run on (CUDA, MPS, the CPU's bf16), threads, and the cache folder.

Like `hf env` and `python -m torch.utils.collect_env`: everything is read, nothing is changed,
and a missing package is reported as null rather than an error.
"""

from __future__ import annotations

import os
import platform
import sys

# The packages cnntools runs on, then each extra's (pyproject.toml's optional-dependencies,
# checked by tests/test_env_cache.py), by distribution name.
CORE_PACKAGES = ("torch", "torchvision", "numpy", "typer", "rich", "pillow", "scikit-learn", "matplotlib",
                 "grad-cam", "safetensors", "openTSNE")
EXTRAS = {"timm": ("timm",), "onnx": ("onnx", "onnxruntime", "onnxscript"), "tensorboard": ("tensorboard",)}
OTHER_PACKAGES = ("huggingface_hub",)  # timm:NAME --download fetches through it


def _version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _devices() -> dict:
    """CUDA (each GPU, its memory and bf16 support), MPS, the CPU's native bf16, and the device
    `--device auto` picks."""
    from cnntools.core.runtime import cpu_has_native_bf16

    found = {"auto": "cpu", "cuda": {"available": False, "version": None, "devices": []},
             "mps": {"available": False}, "cpu": {"native_bf16": cpu_has_native_bf16()}}
    try:
        import torch
    except ImportError:
        found["auto"] = None
        return found
    from cnntools.core.runtime import resolve_device

    cuda = found["cuda"]
    cuda["version"] = torch.version.cuda
    cuda["available"] = torch.cuda.is_available()
    if cuda["available"]:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            cuda["devices"].append({"index": index, "name": props.name, "memory_bytes": props.total_memory,
                                    "capability": f"{props.major}.{props.minor}",
                                    "bf16": props.major >= 8})  # Ampere and later compute in bf16
    mps = getattr(torch.backends, "mps", None)
    found["mps"]["available"] = bool(mps is not None and mps.is_available())
    found["auto"] = str(resolve_device("auto"))
    return found


def _threads() -> dict:
    from cnntools.core.runtime import default_threads, usable_cores

    threads = {"default": default_threads(), "usable_cores": usable_cores(), "cpu_count": os.cpu_count(), "torch": None}
    if "torch" in sys.modules or _version("torch"):
        try:
            import torch

            threads["torch"] = torch.get_num_threads()
        except ImportError:
            pass
    return threads


def describe_environment() -> dict:
    """The `cnntools.env/1` document (without its schema key)."""
    from cnntools import __version__
    from cnntools.core.variables import ENVIRONMENT
    from cnntools.data.cache import cache_summary

    names = [n.strip() for name, _ in ENVIRONMENT for n in name.split(",")]
    return {
        "cnntools": __version__,
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in (*CORE_PACKAGES, *OTHER_PACKAGES)},
        "extras": {extra: {"installed": all(_version(p) for p in packages),
                           "packages": {p: _version(p) for p in packages}} for extra, packages in EXTRAS.items()},
        "devices": _devices(),
        "threads": _threads(),
        "cache": cache_summary(),
        "variables": {name: os.environ[name] for name in names if name in os.environ},
    }
