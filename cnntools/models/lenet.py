"""LeNet-5 as the courses teach it (conv 6@5x5, pool, conv 16@5x5, pool, fc 120, 84, N)."""

from __future__ import annotations

import torch.nn as nn

from cnntools.models import Architecture, output_layer, register


class LeNet(nn.Module):
    """LeNet with optional BatchNorm after each conv and an optional output activation.

    `output_activation` other than none exists to show why logits must stay raw before
    cross-entropy: a ReLU output can never produce a negative logit.
    """

    def __init__(self, in_channels=3, image_size=32, num_classes=10, batchnorm=False, output_activation="none"):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5),
            norm(6),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            norm(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = ((image_size - 4) // 2 - 4) // 2
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(16 * side * side, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )
        self.output_activation = output_layer(output_activation)

    def forward(self, x):
        return self.output_activation(self.classifier(self.flatten(self.features(x))))


register(
    Architecture(
        name="lenet",
        builder=LeNet,
        description="LeNet-5: conv 6@5x5, pool, conv 16@5x5, pool, fc 120, 84, N; "
        "options --batchnorm, --output-activation none|relu|tanh",
        min_size=16,
        default_size=32,
        options=("batchnorm", "output_activation"),
    )
)
