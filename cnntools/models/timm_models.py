"""`timm:NAME`: any timm architecture, trained from scratch or with its pretrained weights.

timm is an optional extra (`pip install 'cnntools[timm]'`). Pretrained weights are read
from the local Hugging Face cache (or, for timm's older URL-hosted weights, the torch hub
cache) and never fetched unless the user passes --download. Safetensors files are read as
such; a `.bin`/`.pth` file only with torch's restricted `weights_only` loader. The
preprocessing of a pretrained model (input size, resize/crop, interpolation, mean/std)
is timm's own data config for it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from cnntools.core.errors import CnnError
from cnntools.models.arch_args import check_arch_args

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def require_timm():
    """The timm module, or one clear line saying how to install it."""
    try:
        import timm
    except ImportError:
        raise CnnError("timm:NAME needs the timm package: pip install 'cnntools[timm]' (or pip install timm)") from None
    return timm


def _check_name(timm, name: str) -> None:
    if not name or not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:20]}*")[:8] if name else []
        hint = f" (close: {', '.join(close)})" if close else " (python -c \"import timm; print(timm.list_models())\")"
        raise CnnError(f"timm has no model '{name}'{hint}")


def create(name: str, in_channels: int, image_size: int, num_classes: int, pretrained: bool = False,
           args: dict | None = None, download: bool = False):
    """timm's `name` for `in_channels` inputs and `num_classes` outputs; `args` go to its constructor.

    With `pretrained`, the weights come from the local cache (see `cached_state_dict`);
    timm adapts the first conv to `in_channels` and drops the classifier when the class
    count differs, as its own `pretrained=True` does.
    """
    timm = require_timm()
    from timm.models import get_pretrained_cfg

    from cnntools.models import no_inplace

    _check_name(timm, name)
    # Only architecture options: timm's own checkpoint_path/pretrained_cfg would read files.
    kwargs = {**check_arch_args(args, f"timm:{name}"), "num_classes": num_classes, "in_chans": in_channels}
    cfg = get_pretrained_cfg(name)
    if cfg is not None and cfg.fixed_input_size and "img_size" not in kwargs:
        kwargs["img_size"] = image_size  # ViT-style models are built for one input size
    overlay = {}
    if pretrained:
        overlay = {"pretrained_cfg_overlay": {"state_dict": cached_state_dict(name, download)}}
    try:
        model = timm.create_model(name, pretrained=pretrained, **overlay, **kwargs)
    except TypeError as error:
        raise CnnError(f"timm:{name}: {error}; check --arch-args") from None
    except (RuntimeError, ValueError, AssertionError) as error:
        raise CnnError(f"timm:{name} cannot be built with {kwargs} ({type(error).__name__}: {error})") from None
    return no_inplace(model)


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub resolves it (HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def weights_location(name: str) -> tuple[str, str]:
    """(kind, where) of `name`'s pretrained weights: ("hf", repo id) or ("url", URL)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise CnnError(f"timm:{name} has no pretrained weights")
    return ("hf", cfg.hf_hub_id) if cfg.hf_hub_id else ("url", cfg.url)


def cached_state_dict(name: str, download: bool = False) -> dict:
    """`name`'s pretrained state dict from the local cache; with `download`, fetched when absent.

    Without the file, one error line names where to place it and how to fetch it.
    """
    kind, where = weights_location(name)
    path = None
    if kind == "hf":
        from huggingface_hub import try_to_load_from_cache

        for filename in _WEIGHT_FILES:
            found = try_to_load_from_cache(where, filename, cache_dir=str(_hf_cache_dir()))
            if isinstance(found, str):
                path = found
                break
        if path is None and download:
            path = _download_hf(where, name)
        if path is None:
            target = _hf_cache_dir() / f"models--{where.replace('/', '--')}" / "snapshots" / "REVISION" / _WEIGHT_FILES[0]
            raise CnnError(
                f"timm:{name} weights are not in the local Hugging Face cache: expected {target} (from {where}); "
                f"pass --download, or fetch them once on a machine with network with "
                f"hf download {where} {_WEIGHT_FILES[0]} and copy the cache (or set HF_HUB_CACHE)"
            )
    else:
        import torch.hub

        path = str(Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(where.split("?")[0]))
        if not os.path.isfile(path):
            if not download:
                raise CnnError(f"timm:{name} weights are not in the local torch cache: expected {path}; "
                               f"pass --download, or fetch {where} and place it there (or set TORCH_HOME)")
            torch.hub.download_url_to_file(where, path)
    return _read_state_dict(path, name)


def _download_hf(repo: str, name: str) -> str:
    from huggingface_hub import hf_hub_download

    last = None
    for filename in _WEIGHT_FILES:
        try:
            return hf_hub_download(repo, filename, cache_dir=str(_hf_cache_dir()))
        except Exception as error:  # noqa: BLE001 - missing file, no network: try the next, then report
            last = error
    raise CnnError(f"timm:{name}: cannot download the weights from {repo} ({type(last).__name__}: {last})")


def _read_state_dict(path: str, name: str) -> dict:
    import torch

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, no code
    except Exception as error:  # noqa: BLE001 - a damaged cache file: name it
        raise CnnError(f"{path}: cannot read timm:{name} weights ({type(error).__name__}); delete it and fetch it again") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CnnError(f"{path}: does not hold a state dict")
    return state


def data_config(model) -> dict:
    """timm's preprocessing for `model`: input size, interpolation, mean, std, crop_pct, crop_mode."""
    from timm.data import resolve_data_config

    return resolve_data_config({}, model=model)


def class_names(model, num_classes: int) -> list[str]:
    """ImageNet class names when timm knows the model's label set; else the indices."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset:
            names = [d.split(",")[0].strip() for d in ImageNetInfo(subset).label_descriptions()]
            if len(names) == num_classes:
                return names
    except Exception:  # noqa: BLE001 - older timm without label info: fall back to indices
        pass
    return [str(i) for i in range(num_classes)]


def architecture(name: str, device="cpu"):
    """(untrained model in eval mode, input channels, input size) of timm's `name` at its
    pretrained config's input size: `--list-layers` without any weight file."""
    timm = require_timm()
    from timm.models import get_pretrained_cfg

    _check_name(timm, name)
    cfg = get_pretrained_cfg(name)
    channels, size = (int(cfg.input_size[0]), int(cfg.input_size[-1])) if cfg is not None else (3, 224)
    classes = int(cfg.num_classes or 1000) if cfg is not None else 1000
    return create(name, channels, size, classes).to(device).eval(), channels, size


def pretrained_model(name: str, device, download: bool = False) -> tuple:
    """(model in eval mode on `device`, description) of `timm:NAME` with its pretrained weights
    from the local cache. The description is plain data for `cnntools.checkpoint` to describe
    the model with: in_channels, image_size (timm's crop), num_classes, classes, mean, std,
    resize (the shorter side before the crop), interpolation and weights (where they are)."""
    timm = require_timm()
    from timm.models import get_pretrained_cfg

    _check_name(timm, name)
    cfg = get_pretrained_cfg(name)
    num_classes = int(cfg.num_classes or 1000) if cfg is not None else 1000
    in_channels = int(cfg.input_size[0]) if cfg is not None else 3
    size = int(cfg.input_size[-1]) if cfg is not None else 224
    model = create(name, in_channels, size, num_classes, pretrained=True, download=download).to(device).eval()
    config = data_config(model)
    crop = int(config["input_size"][-1])
    crop_pct = float(config.get("crop_pct") or 1.0)
    return model, {
        "in_channels": in_channels,
        "image_size": crop,
        "num_classes": num_classes,
        "classes": class_names(model, num_classes),
        "mean": [float(v) for v in config["mean"]],
        "std": [float(v) for v in config["std"]],
        "resize": int(math.floor(crop / crop_pct)),  # timm's eval transform: resize to crop / crop_pct, centre crop
        "interpolation": config.get("interpolation", "bilinear"),
        "weights": weights_location(name)[1],
    }
