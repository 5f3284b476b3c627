"""The registered architectures as `train --list-archs` shows them, stored so that listing them
imports no torch (the counts need every model built: seconds, torchvision and torch._dynamo
included). Parameters at a 3x32x32 input (the architecture's min_size when larger) and 10
classes. tests/test_models.py checks these rows against `list_architectures()`, which builds the
real models; after registering or changing an architecture, write them again with
`python -m cnntools.models.catalog`.
"""

from __future__ import annotations

ROWS: list[dict] = [{'arch': 'lenet',
  'parameters': 62006,
  'input': '3x32x32',
  'min_size': 16,
  'pretrained': False,
  'description': 'LeNet-5: conv 6@5x5, pool, conv 16@5x5, pool, fc 120, 84, N; options --batchnorm, '
                 '--output-activation none|relu|tanh'},
 {'arch': 'simple-cnn',
  'parameters': 620362,
  'input': '3x32x32',
  'min_size': 8,
  'pretrained': False,
  'description': 'conv 32/64/128 3x3 + ReLU + maxpool, dropout 0.25, fc 256, fc N (the default)'},
 {'arch': 'resnet18',
  'parameters': 11173962,
  'input': '3x32x32',
  'min_size': 8,
  'pretrained': False,
  'description': 'ResNet-18 for 32x32 inputs: 3x3 stride-1 stem, no stem maxpool'},
 {'arch': 'resnet18-imagenet',
  'parameters': 11181642,
  'input': '3x32x32',
  'min_size': 32,
  'pretrained': True,
  'description': 'torchvision ResNet-18 (7x7 stride-2 stem + maxpool); --pretrained: ImageNet weights from '
                 'the torch cache'},
 {'arch': 'compact-cnn',
  'parameters': 438386,
  'input': '3x32x32',
  'min_size': 16,
  'pretrained': False,
  'description': '4 blocks of two 3x3 conv+BN+ReLU (24/48/96/128) + maxpool, global avg pool, fc 128, '
                 'dropout 0.5, fc N'},
 {'arch': 'vgg16',
  'parameters': 14982474,
  'input': '3x32x32',
  'min_size': 32,
  'pretrained': True,
  'description': 'torchvision VGG-16 (13 conv 3x3, no BN); below 224 px a global-pool 512-wide head; '
                 '--pretrained fills the convs'},
 {'arch': 'mlp',
  'parameters': 394634,
  'input': '3x32x32',
  'min_size': 1,
  'pretrained': False,
  'description': 'multilayer perceptron: flatten (784 for 1x28x28), fc 128 + sigmoid, fc N'},
 {'arch': 'twoconv-bn',
  'parameters': 282346,
  'input': '3x32x32',
  'min_size': 4,
  'pretrained': False,
  'description': 'conv 32/64 3x3 + BatchNorm + ReLU + maxpool, fc 64, fc N (220,330 parameters at 1x28x28: '
                 'the MNIST recipe)'}]


def _write() -> None:
    """Rewrite this file's ROWS from the real models."""
    import pprint
    import re
    from pathlib import Path

    from cnntools.models import list_architectures

    path = Path(__file__)
    rows = pprint.pformat(list_architectures(), width=110, sort_dicts=False)
    text = path.read_text()
    path.write_text(re.sub(r"ROWS: list\[dict\] = \[.*?\]\n\n\n", lambda _m: f"ROWS: list[dict] = {rows}\n\n\n", text, flags=re.S))


if __name__ == "__main__":
    _write()
