"""Layers of a model by their dotted names (`features.3`, `layer4.1.conv2`): how every
command that takes `--layer` finds one."""

from __future__ import annotations

from torch import nn

from cnntools.core.errors import CnnError


def named_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every sub-module by its dotted name (the root model itself left out)."""
    return {name: module for name, module in model.named_modules() if name}



def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module called `name`, or a one-line error listing a few valid names."""
    layers = named_layers(model)
    if name not in layers:
        some = ", ".join(list(layers)[:12])
        raise CnnError(f"no layer named '{name}' in the model (some names: {some}; see --list-layers)")
    return layers[name]
