"""A small CNN as a course notebook writes it: three conv blocks and a linear classifier.

Train it with cnntools (see the README, "Your own model"):

    cnntools train --arch examples/mynet.py:MyNet --arch-args width=16 --epochs 3
"""

import torch
from torch import nn


class MyNet(nn.Module):
    """conv-relu-pool x3 (width, 2*width, 4*width channels), global average pool, linear."""

    def __init__(self, in_channels=3, num_classes=10, width=32, dropout=0.25):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(),
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = self.features(x)
        x = torch.flatten(x.mean(dim=(2, 3)), 1)  # a functional global average pool
        return self.classifier(self.dropout(x))


def tiny_mlp(in_channels=1, image_size=28, num_classes=10, hidden=64):
    """A factory function: an MLP with no convolution at all."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, hidden), nn.Sigmoid(),
                         nn.Linear(hidden, num_classes))
