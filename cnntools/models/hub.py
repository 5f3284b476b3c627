"""torchvision's ImageNet weights, from the local torch hub cache; fetched only with --download.

A download goes through torch hub (`download_url_to_file`: into a temporary file, moved into
place when whole) and is refused unless its SHA-256 starts with the prefix torchvision puts
in the file name (resnet18-f37072fd.pth), as torch's own `check_hash` does.

torchvision publishes its weights as `.pth` files; they are read with torch's restricted
`weights_only` loader, which accepts tensors and plain containers and refuses any other
object, so no code in them can run.
"""

from __future__ import annotations

import os
from pathlib import Path

from cnntools.core.errors import CnnError


def default_weights(name: str):
    """torchvision's DEFAULT weights enum entry for classification model `name`."""
    import torchvision.models as tvm

    from cnntools.models.torchvision_models import check_name

    check_name(name)
    weights = tvm.get_model_weights(name)
    return weights.DEFAULT


def cached_weights_path(weights) -> Path:
    """Where torch hub keeps the file of `weights` ($TORCH_HOME/hub/checkpoints/NAME)."""
    import torch.hub

    filename = os.path.basename(weights.url.split("?")[0])
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def download_weights(weights, path: Path, model_name: str) -> None:
    """Fetch `weights` into `path` with torch hub, checking the SHA-256 prefix in its file name."""
    import torch.hub

    from cnntools.output.emitter import info, is_quiet

    match = torch.hub.HASH_REGEX.search(path.name)
    info(f"torchvision:{model_name}: downloading {weights.url}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(weights.url, str(path), hash_prefix=match.group(1) if match else None,
                                       progress=not is_quiet())
    except RuntimeError as error:  # torch's own words: invalid hash value (expected ..., got ...)
        raise CnnError(f"torchvision:{model_name}: {weights.url}: {error}; nothing was kept") from None
    except OSError as error:  # no network, a refused URL, a full disk
        raise CnnError(f"torchvision:{model_name}: cannot download {weights.url} ({type(error).__name__}: {error})") from None


def load_cached_state_dict(weights, model_name: str, download: bool = False) -> dict:
    """The state dict of `weights` from the hub cache; with `download`, fetched when absent;
    else a one-line error naming the file."""
    import torch

    path = cached_weights_path(weights)
    if not path.is_file() and download:
        download_weights(weights, path, model_name)
    if not path.is_file():
        raise CnnError(
            f"torchvision:{model_name} weights are not in the local torch cache: expected {path}; "
            f"pass --download, or fetch {weights.url} on a machine with network "
            f"and copy the file there (or set TORCH_HOME)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - corrupt cache file: say which one
        raise CnnError(f"{path}: cannot read torchvision weights ({type(error).__name__}); delete it and fetch it again") from None
    if not isinstance(state, dict):
        raise CnnError(f"{path}: does not hold a state dict")
    return state


def load_pretrained(model, model_name: str) -> None:
    """Copy torchvision's DEFAULT weights into `model`, leaving out layers whose shape changed."""
    weights = default_weights(model_name)
    state = load_cached_state_dict(weights, model_name)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise CnnError(f"torchvision:{model_name} weights do not fit this model")
    model.load_state_dict(usable, strict=False)
