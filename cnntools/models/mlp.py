"""The MNIST multilayer perceptron: flatten, fc 128 with sigmoid, fc N."""

from __future__ import annotations

import torch.nn as nn

from cnntools.models import Architecture, register


class MLP(nn.Module):
    def __init__(self, in_channels=1, image_size=28, num_classes=10, hidden=128):
        super().__init__()
        self.flatten = nn.Flatten()
        self.hidden = nn.Linear(in_channels * image_size * image_size, hidden)
        self.activation = nn.Sigmoid()
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.out(self.activation(self.hidden(self.flatten(x))))


register(
    Architecture(
        name="mlp",
        builder=MLP,
        description="multilayer perceptron: flatten (784 for 1x28x28), fc 128 + sigmoid, fc N",
        min_size=1,
        default_size=28,
        small_input=16,
    )
)
