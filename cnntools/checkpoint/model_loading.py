"""A ready-to-run model from a checkpoint (or from torchvision's published weights):
architecture rebuilt from the metadata, weights checked against it, then loaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cnntools.output import files
from cnntools.checkpoint.file_format import model_state, read_checkpoint
from cnntools.checkpoint.metadata import CheckpointMeta
from cnntools.inference.preprocessing import Preprocessing
from cnntools.core.errors import CnnError
from cnntools.output.emitter import first_line

TORCHVISION_PREFIX = "torchvision:"


def build_model(meta: CheckpointMeta, name: str = "checkpoint", device=None, trust_code: bool = False, code=None):
    """An untrained model of the architecture and config a checkpoint's metadata names.

    `device="meta"` builds it without allocating memory (to compare shapes first). A model
    defined by the user's code runs that code only with `trust_code` (see
    `cnntools.models.user_code`); `code` is the result of `model_code` when the caller has it.
    """
    from cnntools.models import create_model

    config = dict(meta.arch)
    arch = config.pop("arch", None)
    config.pop("pretrained", None)  # the weights come from the file, never from the hub
    if not arch:
        raise CnnError(f"{name}: cnntools metadata names no architecture")
    if code is None:
        code = model_code(meta, name, trust_code)
    try:
        if device is not None:
            with torch.device(device):
                return create_model(arch, **config, arch_args=meta.arch_args, code=code)
        return create_model(arch, **config, arch_args=meta.arch_args, code=code)
    except CnnError as error:
        raise CnnError(f"{name}: {error}") from None
    except (TypeError, ValueError, RuntimeError) as error:
        raise CnnError(f"{name}: architecture config {config} does not fit {arch} ({error})") from None


def model_code(meta: CheckpointMeta, name: str = "checkpoint", trust_code: bool = False):
    """(CodeReference, source) of a model defined by the user's code, checked; None for the others.

    Without `trust_code` such a checkpoint is refused with one line naming the file and the
    flag; a code reference without its `code` record is refused outright, so metadata alone
    can never name a file to run.
    """
    from cnntools.models import user_code

    arch = meta.arch_name
    if not user_code.is_code_reference(arch):
        return None
    record = meta.code
    if not isinstance(record, dict) or record.get("reference") != arch:
        raise CnnError(f"{name}: the architecture {arch} refers to code but the checkpoint holds no matching code record")
    return user_code.from_record(record, trust_code, name)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to run: the module (eval mode, on the device it was loaded to), how
    images become its input, what its outputs are, and the name it is shown under; `meta`
    and `source` say where it came from (architecture, data recipe, training record; the file).

    Running it is `cnntools.inference.batches.predict(lm.model, images, lm.preprocessing, ...)` (or
    `forward_batches` for captured layers); its data is
    `cnntools.data.load_for_model(lm.meta.data, split, lm.preprocessing, lm.classes, ...)`.
    """

    model: Any  # torch.nn.Module
    preprocessing: Preprocessing
    classes: list[str]
    label: str  # the run's name in figures and tables (see `cnntools.checkpoint.runs.model_label`)
    meta: CheckpointMeta
    source: str = ""  # the file (or torchvision:NAME, timm:NAME) as messages name it

    @classmethod
    def from_meta(cls, model, meta: CheckpointMeta, source: str, resize: int | None = None,
                  interpolation: str = "bilinear") -> LoadedModel:
        """The loaded `model` described by its metadata: the preprocessing from its mean, std,
        channels and size (`resize`, `interpolation`: a published model's resize rule, which
        a checkpoint never carries)."""
        from cnntools.checkpoint.runs import model_label

        preprocessing = Preprocessing(tuple(meta.mean), tuple(meta.std), meta.image_size, meta.in_channels,
                                      resize, interpolation)
        return cls(model, preprocessing, list(meta.classes), model_label(meta.to_json(), source), meta, source)


def load_model(spec: str, device="cpu", data: bytes | None = None, trust_code: bool = False,
               download: bool = False) -> LoadedModel:
    """A model from a cnntools checkpoint (path or `-` for stdin), `torchvision:NAME` or `timm:NAME`.

    The model comes back in eval mode on `device` (a torch.device or a string). `data`: the
    checkpoint's bytes when they were read already (`spec` then only names them).
    `trust_code`: run the user's code a checkpoint refers to (--trust-code). `download`:
    timm and torchvision may fetch their pretrained weights from the network.
    """
    device = torch.device(device) if not isinstance(device, torch.device) else device
    if spec.startswith(TORCHVISION_PREFIX):
        return _load_torchvision(spec[len(TORCHVISION_PREFIX):], device, download)
    if spec.startswith("timm:"):
        return _load_timm(spec[len("timm:"):], device, download)
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
        raise CnnError(f"{name}: weights do not fit architecture {meta.arch_name} ({first})") from None
    model.to(device).eval()
    return LoadedModel.from_meta(model, meta, name)


def check_weights(meta: CheckpointMeta, weights: dict, name: str = "checkpoint", trust_code: bool = False, code=None) -> None:
    """The weights' names and shapes must be exactly those of the architecture the metadata names.

    The model is built on the meta device for this, so metadata naming a huge model
    allocates nothing.
    """
    expected = build_model(meta, name, device="meta", trust_code=trust_code, code=code).state_dict()
    missing, unexpected = _compare_keys(expected, weights)
    if missing or unexpected:
        raise CnnError(
            f"{name}: weights do not match architecture {meta.arch_name} "
            f"(missing {len(missing)}, unexpected {len(unexpected)}, e.g. {(missing or unexpected)[0]})"
        )
    wrong = [k for k, v in expected.items() if tuple(v.shape) != tuple(weights[k].shape)]
    if wrong:
        raise CnnError(
            f"{name}: weights do not fit architecture {meta.arch_name} ({wrong[0]} has shape "
            f"{tuple(weights[wrong[0]].shape)}, the architecture needs {tuple(expected[wrong[0]].shape)})"
        )


def _compare_keys(expected: dict, got: dict) -> tuple[list, list]:
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    return missing, unexpected


def _load_torchvision(name: str, device, download: bool = False) -> LoadedModel:
    from cnntools.models import no_inplace, torchvision_models
    from cnntools.models.hub import default_weights, load_cached_state_dict

    weights = default_weights(name)
    state = load_cached_state_dict(weights, name, download)
    model = torchvision_models.build(name, num_classes=len(weights.meta["categories"]), imagenet_weights=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CnnError(f"torchvision:{name}: the cached weights do not fit the model ({first_line(error)}); delete the file and fetch it again") from None
    no_inplace(model).to(device).eval()
    preprocess = weights.transforms()
    crop = int(preprocess.crop_size[0])
    resize = int(preprocess.resize_size[0])
    categories = list(weights.meta["categories"])
    meta = CheckpointMeta(
        format="torchvision",
        arch={"arch": f"torchvision:{name}", "in_channels": 3, "image_size": crop, "num_classes": len(categories)},
        classes=categories,
        mean=list(preprocess.mean),
        std=list(preprocess.std),
        metrics=dict(weights.meta.get("_metrics", {}).get("ImageNet-1K", {})),
        extra={"weights": str(weights), "resize_size": resize},
    )
    return LoadedModel.from_meta(model, meta, f"torchvision:{name}", resize=resize)


def _load_timm(name: str, device, download: bool) -> LoadedModel:
    """`timm:NAME` as a ready model (like `torchvision:NAME`): its pretrained weights from the
    local cache, its class names, and the preprocessing of timm's data config."""
    from cnntools.models.timm_models import pretrained_model

    model, about = pretrained_model(name, device, download)
    arch = f"timm:{name}"
    meta = CheckpointMeta(
        format="timm",
        arch={"arch": arch, "in_channels": about["in_channels"], "image_size": about["image_size"],
              "num_classes": about["num_classes"]},
        classes=about["classes"], mean=about["mean"], std=about["std"],
        extra={"resize_size": about["resize"], "interpolation": about["interpolation"], "weights": about["weights"]},
    )
    return LoadedModel.from_meta(model, meta, arch, resize=about["resize"], interpolation=about["interpolation"])


def load_architecture(spec: str, device="cpu", trust_code: bool = False) -> tuple[Any, int, int]:
    """(untrained model in eval mode, input channels, input size) of a checkpoint or
    `torchvision:NAME`, for questions about the architecture alone (`--list-layers`):
    torchvision's weight file is never needed, and a checkpoint's weights are not loaded."""
    device = torch.device(device) if not isinstance(device, torch.device) else device
    if spec.startswith(TORCHVISION_PREFIX):
        from cnntools.models import no_inplace, torchvision_models

        name = spec[len(TORCHVISION_PREFIX):]
        model = torchvision_models.build(name)  # no weights: nothing is read from the torch cache
        return no_inplace(model).to(device).eval(), 3, torchvision_models.default_size(name)
    if spec.startswith("timm:"):
        from cnntools.models.timm_models import architecture

        return architecture(spec[len("timm:"):], device)
    _, meta = read_checkpoint(spec)
    from cnntools.inference.memory import check_weights as check_weight_bytes

    name = files.display_name(spec)
    # No weights are read here, so nothing bounds the architecture's size but its metadata.
    check_weight_bytes(build_model(meta, name, device="meta", trust_code=trust_code), name)
    model = build_model(meta, name, trust_code=trust_code).to(device).eval()
    return model, meta.in_channels, meta.image_size
