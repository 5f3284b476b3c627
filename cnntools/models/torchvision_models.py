"""`torchvision:NAME`: torchvision's classification architectures, built without weights.

This is the one place that builds them: `train --arch torchvision:NAME` from scratch,
`--list-layers`, `rf-calc --arch` and the ImageNet model that `eval torchvision:NAME`
loads all come through `build`, which never looks for a weight file. Weights are read
only when asked for (`train --pretrained`, a `torchvision:NAME` model argument), from the
local torch cache (models/hub.py).
"""

from __future__ import annotations

from cnntools.core.errors import CnnError
from cnntools.models.arch_args import check_arch_args

PREFIX = "torchvision:"


def check_name(name: str) -> None:
    """One clear line unless `name` is one of torchvision's image classification models."""
    import torchvision.models as tvm

    if name not in tvm.list_models(module=tvm):
        other = name in tvm.list_models()
        raise CnnError(
            f"torchvision model '{name}' is not an ImageNet classification model" if other else
            f"torchvision has no model '{name}': use a classification model such as resnet18, vgg16, "
            "resnet50, mobilenet_v3_small (torchvision.models.list_models(torchvision.models))"
        )


def build(name: str, num_classes: int = 1000, in_channels: int = 3, image_size: int | None = None,
          args: dict | None = None, imagenet_weights: bool = False):
    """torchvision's `name` with `num_classes` outputs for `in_channels` inputs, randomly initialised.

    `image_size` is passed to the models built for one input size (ViT). GoogLeNet and
    Inception v3 come without their auxiliary heads (the training loop wants one tensor of
    logits). `imagenet_weights`: the caller loads torchvision's weights next, so the model is
    set up as torchvision's own builder sets it up for them (input transform on, no random
    init to waste time on). A first conv for other than 3 channels replaces the stem's.
    """
    import warnings

    import torchvision.models as tvm

    check_name(name)
    kwargs = {**check_arch_args(args, f"torchvision:{name}"), "num_classes": num_classes}  # never `weights`
    if name.startswith("vit_") and image_size is not None:
        kwargs.setdefault("image_size", image_size)
    if name in ("googlenet", "inception_v3"):
        kwargs = {"aux_logits": False, "transform_input": imagenet_weights, "init_weights": not imagenet_weights, **kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's notes about defaults that may change
        try:
            model = tvm.get_model(name, weights=None, **kwargs)
        except TypeError as error:
            raise CnnError(f"torchvision:{name}: {error}; check --arch-args") from None
    if in_channels != 3:
        _replace_stem(model, in_channels)
    return model


def _replace_stem(model, in_channels: int) -> None:
    """The first conv (the stem in every torchvision classifier) remade for `in_channels` inputs."""
    import torch.nn as nn

    path, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                    conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                                    device=conv.weight.device, dtype=conv.weight.dtype))


def default_size(name: str) -> int:
    """The crop size of the model's default weights' transforms (299 for inception_v3), read from
    torchvision's metadata: no weight file is needed."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return 224
    crop = getattr(weights.transforms(), "crop_size", None) or [224]
    return int(crop[0])
