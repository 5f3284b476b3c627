"""A fast two-conv net for MNIST-sized digits: conv 32 and 64 (3x3, BatchNorm, ReLU, maxpool),
fc 64, fc N — about 220k parameters at 28 px, the network of the MNIST time-to-accuracy
recipe (examples/mnist-fast.toml, docs/performance.md)."""

from __future__ import annotations

import torch.nn as nn

from cnntools.models import Architecture, register


class TwoConvBN(nn.Module):
    def __init__(self, in_channels=1, image_size=28, num_classes=10):
        super().__init__()
        layers, channels = [], in_channels
        for width in (32, 64):
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        side = image_size // 4
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(nn.Linear(64 * side * side, 64), nn.ReLU(inplace=True), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


register(
    Architecture(
        name="twoconv-bn",
        builder=TwoConvBN,
        description="conv 32/64 3x3 + BatchNorm + ReLU + maxpool, fc 64, fc N (220,330 parameters at 1x28x28: the MNIST recipe)",
        min_size=4,
        default_size=28,
        small_input=28,
    )
)
