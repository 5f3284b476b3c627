"""The notebook CNN: three conv 3x3 + ReLU + maxpool blocks (32, 64, 128), dropout, fc 256, fc N."""

from __future__ import annotations

import torch.nn as nn

from cnntools.models import Architecture, register


class SimpleCNN(nn.Module):
    def __init__(self, in_channels=3, image_size=32, num_classes=10):
        super().__init__()
        layers = []
        channels = in_channels
        for width in (32, 64, 128):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        side = image_size // 8
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Dropout(0.25),
            nn.Linear(128 * side * side, 256),
            nn.ReLU(),
            nn.Linear(256, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


register(
    Architecture(
        name="simple-cnn",
        builder=SimpleCNN,
        description="conv 32/64/128 3x3 + ReLU + maxpool, dropout 0.25, fc 256, fc N (the default)",
        min_size=8,
        default_size=32,
        small_input=16,
    )
)
