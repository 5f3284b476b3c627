"""VGG-16 from torchvision, with a head that fits small images."""

from __future__ import annotations

import torch.nn as nn

from cnntools.models import Architecture, no_inplace, register


class SmallVGG(nn.Module):
    """torchvision's VGG-16 layout (`features`, `avgpool`, `classifier`) with a global-pool head."""

    def __init__(self, features: nn.Module, num_classes: int):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, num_classes))

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def vgg16(in_channels=3, image_size=32, num_classes=10, pretrained=False):
    """torchvision's VGG-16.

    At ImageNet sizes (≥ 224) the model is torchvision's own (7x7 pool, 4096-wide head). Below
    that the 7x7 adaptive pool would only copy a 1x1 or 2x2 map 49 times into a 120M-parameter
    head, so small inputs get a global average pool and a 512-wide head instead — the usual
    CIFAR VGG-16. The conv layers keep torchvision's names, so `--pretrained` fills them.
    """
    from torchvision.models import vgg16 as tv_vgg16
    from torchvision.models.vgg import cfgs, make_layers

    if image_size >= 224:
        model = tv_vgg16(weights=None)
        if num_classes != 1000:
            model.classifier[6] = nn.Linear(4096, num_classes)
    else:
        model = SmallVGG(make_layers(cfgs["D"], batch_norm=False), num_classes)
    if pretrained:
        from cnntools.models.hub import load_pretrained

        load_pretrained(model, "vgg16")
    if in_channels != 3:
        model.features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
    return no_inplace(model)


register(
    Architecture(
        name="vgg16",
        builder=vgg16,
        description="torchvision VGG-16 (13 conv 3x3, no BN); below 224 px a global-pool 512-wide head; --pretrained fills the convs",
        min_size=32,
        default_size=32,
        torchvision_name="vgg16",
    )
)
