"""A small model for image folders: four double-conv BN blocks, global average pool, fc head."""

from __future__ import annotations

import torch.nn as nn

from cnntools.models import Architecture, register


def _block(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class CompactCNN(nn.Module):
    def __init__(self, in_channels=3, image_size=32, num_classes=10):
        super().__init__()
        widths = (24, 48, 96, 128)
        blocks = []
        channels = in_channels
        for width in widths:
            blocks.append(_block(channels, width))
            channels = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(channels, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


register(
    Architecture(
        name="compact-cnn",
        builder=CompactCNN,
        description="4 blocks of two 3x3 conv+BN+ReLU (24/48/96/128) + maxpool, global avg pool, fc 128, dropout 0.5, fc N",
        min_size=16,
        default_size=32,
    )
)
