"""ResNet-18: the CIFAR variant (3x3 stride-1 stem, no stem maxpool) and torchvision's ImageNet one."""

from __future__ import annotations

import torch.nn as nn

from cnntools.models import Architecture, no_inplace, register


def _torchvision_resnet18(in_channels, num_classes):
    from cnntools.models.torchvision_models import build

    return build("resnet18", num_classes, in_channels)


def resnet18_cifar(in_channels=3, image_size=32, num_classes=10, pretrained=False):
    """ResNet-18 for small images: the stem keeps full resolution (3x3 stride 1, no maxpool)."""
    model = _torchvision_resnet18(in_channels, num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return no_inplace(model)


def resnet18_imagenet(in_channels=3, image_size=224, num_classes=1000, pretrained=False):
    """torchvision's ResNet-18 (7x7 stride-2 stem and maxpool), optionally with ImageNet weights."""
    model = _torchvision_resnet18(in_channels, num_classes)
    if pretrained:
        from cnntools.models.hub import load_pretrained

        load_pretrained(model, "resnet18")  # a resized fc head is left out by its shape
    return no_inplace(model)


register(
    Architecture(
        name="resnet18",
        builder=resnet18_cifar,
        description="ResNet-18 for 32x32 inputs: 3x3 stride-1 stem, no stem maxpool",
        min_size=8,
        default_size=32,
    )
)
register(
    Architecture(
        name="resnet18-imagenet",
        builder=resnet18_imagenet,
        description="torchvision ResNet-18 (7x7 stride-2 stem + maxpool); --pretrained: ImageNet weights from the torch cache",
        min_size=32,
        default_size=224,
        torchvision_name="resnet18",
    )
)
