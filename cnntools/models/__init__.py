"""Architecture registry: every course CNN by name, built by one `create_model`.

Adding an architecture is one `register(...)` call in its family's module. Each entry
knows its description, the smallest input it accepts and the size it is usually trained
at, so `train` can pick an input size and `train --list-archs` can describe it.

    from cnntools.models import create_model, ARCHITECTURES, count_parameters
    model = create_model("lenet", in_channels=3, image_size=32, num_classes=10)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from cnntools.models.user_code import is_code_reference
from cnntools.core.errors import CnnError, UsageError

TIMM_PREFIX = "timm:"
TORCHVISION_PREFIX = "torchvision:"
OUTPUT_ACTIVATIONS = ("none", "relu", "tanh")


@dataclass(frozen=True)
class Architecture:
    """One registered architecture."""

    name: str
    builder: Callable  # (in_channels, image_size, num_classes, **options) -> nn.Module
    description: str
    min_size: int  # smallest square input the layers accept
    default_size: int  # input size used when the data's own size is below min_size
    small_input: int = 0  # input size for data smaller than 16 px (0: default_size)
    options: tuple[str, ...] = ()  # extra config keys the builder takes (batchnorm, ...)
    torchvision_name: str | None = None  # where --pretrained weights come from


ARCHITECTURES: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    ARCHITECTURES[arch.name] = arch
    return arch


def count_parameters(model, trainable_only: bool = False) -> int:
    """Number of parameters (all of them, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def get_architecture(name: str) -> Architecture:
    """The registry entry for `name`, or a one-line error listing the known ones.

    The user's own code (FILE.py:NAME, package.module:NAME), timm:NAME and torchvision:NAME
    get an entry made on the spot: any input size, tiny images upsampled to 32 px.
    """
    _load_families()
    if name not in ARCHITECTURES and (is_code_reference(name) or name.startswith((TIMM_PREFIX, TORCHVISION_PREFIX))):
        what = {TIMM_PREFIX: "timm model", TORCHVISION_PREFIX: "torchvision model"}.get(name.split(":")[0] + ":", "your own model")
        return Architecture(name, builder=None, description=what, min_size=1, default_size=32)
    if name not in ARCHITECTURES:
        known = ", ".join(ARCHITECTURES)
        raise CnnError(
            f"unknown architecture '{name}': choose one of {known} (cnntools train --list-archs), "
            "timm:NAME, or your own model as FILE.py:NAME or package.module:NAME"
        )
    return ARCHITECTURES[name]


def input_size_for(name: str, native_size: int) -> int:
    """The input size to train `name` at by default.

    The data's own size when the layers accept it and it is at least 16 px; tiny images
    (digits are 8x8) are upsampled to the architecture's `small_input` size, which gives
    its convolutions room to work; otherwise the architecture's usual size.
    """
    arch = get_architecture(name)
    if native_size >= max(arch.min_size, 16):
        return native_size
    if native_size < 16:
        return max(arch.min_size, arch.small_input or arch.default_size)
    return arch.default_size


def create_model(
    name: str,
    in_channels: int = 3,
    image_size: int = 32,
    num_classes: int = 10,
    batchnorm: bool = False,
    output_activation: str = "none",
    pretrained: bool = False,
    arch_args: dict | None = None,
    code=None,
):
    """Build an architecture for `in_channels`x`image_size`² inputs and `num_classes`.

    `batchnorm` and `output_activation` apply to the architectures that offer them (lenet);
    `pretrained` loads torchvision's ImageNet weights from the local torch hub cache (the
    classifier is replaced when `num_classes` differs from 1,000), or timm's from the local
    Hugging Face cache; without it no weight file is looked for. `arch_args` are constructor
    arguments of the user's own model, of a timm or of a torchvision model. `code`: (CodeReference, source bytes) checked by `user_code.from_record` —
    how a checkpoint's code is run; without it a code reference is resolved as named on
    the command line.
    """
    arch = get_architecture(name)
    if in_channels < 1 or num_classes < 1:
        raise CnnError(f"{name}: need at least one input channel and one class")
    if arch.builder is None:
        if batchnorm or output_activation != "none":
            raise UsageError(f"{name}: --batchnorm and --output-activation are options of the registered architectures")
        if name.startswith(TIMM_PREFIX):
            from cnntools.models import timm_models

            return timm_models.create(name[len(TIMM_PREFIX):], in_channels, image_size, num_classes, pretrained, arch_args or {})
        if name.startswith(TORCHVISION_PREFIX):
            from cnntools.models import torchvision_models

            tv_name = name[len(TORCHVISION_PREFIX):]
            model = torchvision_models.build(tv_name, num_classes, in_channels, image_size, arch_args)
            if pretrained:  # only now is the weight file looked for
                from cnntools.models.hub import load_pretrained

                load_pretrained(model, tv_name)  # a resized stem or classifier is left out by its shape
            return no_inplace(model)
        from cnntools.models import user_code

        if pretrained:
            raise UsageError(f"{name}: --pretrained loads torchvision or timm weights; your own model starts from its own init")
        ref, source = code if code is not None else user_code.resolve(name)
        return user_code.build(ref, arch_args or {}, in_channels, image_size, num_classes, source)
    if arch_args:
        raise UsageError(f"{name}: --arch-args are constructor arguments of your own model or of timm:NAME; {name} takes none")
    if image_size < arch.min_size:
        raise CnnError(
            f"{name} needs inputs of at least {arch.min_size}x{arch.min_size} pixels (got {image_size}); "
            f"use --image-size {arch.default_size}"
        )
    if output_activation not in OUTPUT_ACTIVATIONS:
        raise CnnError(f"unknown output activation '{output_activation}': use none, relu or tanh")
    if "batchnorm" not in arch.options and batchnorm:
        raise UsageError(f"{name} has no --batchnorm option (it is fixed by the architecture)")
    if "output_activation" not in arch.options and output_activation != "none":
        raise UsageError(f"{name} has no --output-activation option; lenet has it")
    if pretrained and arch.torchvision_name is None:
        raise CnnError(f"{name} has no pretrained weights; --pretrained works for resnet18-imagenet, vgg16, torchvision:NAME and timm:NAME")
    kwargs = {}
    if "batchnorm" in arch.options:
        kwargs["batchnorm"] = batchnorm
    if "output_activation" in arch.options:
        kwargs["output_activation"] = output_activation
    if arch.torchvision_name is not None:
        kwargs["pretrained"] = pretrained
    return arch.builder(in_channels, image_size, num_classes, **kwargs)


def check_outputs(model, name: str, in_channels: int, image_size: int, num_classes: int) -> None:
    """Run a model that cnntools did not write on two blank images: it must take
    `in_channels`x`image_size`² inputs and give `num_classes` logits each (one clear error if not)."""
    import torch

    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            model.eval()
            out = model(torch.zeros(2, in_channels, image_size, image_size, device=device))
    except Exception as error:  # noqa: BLE001 - whatever the user's forward raises
        from cnntools.output.emitter import first_line

        raise CnnError(
            f"{name} cannot run on {in_channels}x{image_size}x{image_size} inputs ({type(error).__name__}: "
            f"{first_line(error)}); pass the size it was written for with --image-size"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CnnError(
            f"{name} must return one row of {num_classes} logits per image (N x {num_classes}); it returned {got}. "
            "Give its constructor a num_classes parameter (or set it with --arch-args)"
        )


def arch_config(name: str, in_channels: int, image_size: int, num_classes: int, **options) -> dict:
    """The plain-data config that `create_model(**config)` rebuilds the model from."""
    arch = get_architecture(name)
    config = {"arch": name, "in_channels": in_channels, "image_size": image_size, "num_classes": num_classes}
    for key in arch.options:
        if key in options:
            config[key] = options[key]
    return config


def output_layer(activation: str):
    """The module applied after the last layer: identity, ReLU or tanh (no in-place ops)."""
    import torch.nn as nn

    return {"none": nn.Identity, "relu": nn.ReLU, "tanh": nn.Tanh}[activation]()


def no_inplace(model):
    """Turn in-place activations off: forward hooks must see each layer's own output."""
    for module in model.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    return model


_loaded = False


def _load_families() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from cnntools.models import lenet, simple, resnet, compact, vgg, mlp, twoconv  # noqa: F401,I001 - registration order = listing order


def list_architectures(in_channels: int = 3, image_size: int = 32, num_classes: int = 10) -> list[dict]:
    """Every architecture with its parameter count at the given input/classes."""
    _load_families()
    rows = []
    for arch in ARCHITECTURES.values():
        size = max(image_size, arch.min_size)
        model = create_model(arch.name, in_channels, size, num_classes)
        rows.append(
            {
                "arch": arch.name,
                "parameters": count_parameters(model),
                "input": f"{in_channels}x{size}x{size}",
                "min_size": arch.min_size,
                "pretrained": arch.torchvision_name is not None,
                "description": arch.description,
            }
        )
    return rows
