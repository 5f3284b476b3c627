"""Layers by name, their output shapes, and statistics of captured activations.

Activations themselves are captured by `cnntools.inference.batches` (`capture_activations`, and
`forward_batches(..., layers=...)`, which runs a model with it); every hook goes through
`cnntools.inference.hooks.Hooks`.
"""

from __future__ import annotations


import torch
from torch import nn

from cnntools.core.errors import CnnError, UsageError
from cnntools.inference.hooks import Hooks
from cnntools.models.counting import count_macs
from cnntools.models.layers import get_layer, named_layers


def example_input(lm) -> torch.Tensor:
    """One blank image at a loaded model's input size: what `forward_order` runs."""
    from cnntools.core.runtime import module_device

    return torch.zeros(1, *lm.preprocessing.shape, device=module_device(lm.model))


def forward_order(model: nn.Module, example: torch.Tensor | None) -> list[tuple[str, nn.Module]]:
    """The model's leaf layers in the order its forward pass first calls them.

    Registration order is not call order in models people write (timm's blocks register the
    shortcut's conv after the main path's, a user's __init__ may list layers in any order).
    Without `example`, or when the forward pass fails, registration order is used.
    """
    layers = named_layers(model)
    if example is not None:
        order: list[str] = []
        leaves = {id(m) for m in layers.values() if not any(True for _ in m.children())}

        def hook_for(name: str):
            def hook(module, inputs):
                if name not in order:
                    order.append(name)

            return hook

        try:
            with Hooks() as hooks:
                for name, module in layers.items():
                    if id(module) in leaves:
                        hooks.forward_pre(module, hook_for(name))
                with torch.no_grad():
                    model(example)
            return [(name, layers[name]) for name in order]
        except Exception:  # noqa: BLE001 - a model that cannot run the probe: registration order
            pass
    return list(layers.items())


def conv_layer_names(model: nn.Module, example: torch.Tensor | None = None) -> list[str]:
    """Names of the model's Conv2d layers in forward order (see `forward_order`)."""
    return [name for name, module in forward_order(model, example) if isinstance(module, nn.Conv2d)]


def last_conv_name(model: nn.Module, example: torch.Tensor | None = None) -> str:
    """The last Conv2d layer the forward pass calls: the usual Grad-CAM target layer."""
    names = conv_layer_names(model, example)
    if not names:
        raise CnnError(
            "the model has no Conv2d layer, so there is no default layer: name one with --layer (see --list-layers), "
            "or for saliency use --method gradient, which needs no layer"
        )
    return names[-1]


def cam_layer_name(model: nn.Module, example: torch.Tensor | None = None) -> str:
    """The usual Grad-CAM target: the rectified feature maps of the last conv layer.

    Grad-CAM keeps only the positive part of sum_k w_k A_k; on a raw (pre-ReLU) conv output
    that sum is often negative everywhere and the map comes out blank. So: the activation
    module right after the last Conv2d (skipping a BatchNorm); where there is none (a
    residual block that adds its shortcut and applies a functional or shared ReLU), the
    block that contains the conv (torchvision ResNets: layer4's last block); else the conv.
    """
    conv = last_conv_name(model, example)
    activation = activation_layer_names(model, example)[-1]
    if activation != conv and _called_once(model, activation):
        return activation
    parent = conv.rpartition(".")[0]
    if parent and not isinstance(get_layer(model, parent), (nn.Sequential, nn.ModuleList)):
        return parent
    return conv


def _called_once(model: nn.Module, name: str) -> bool:
    # A module object registered under several names (one ReLU shared by a block) is also
    # called several times per forward pass; its hooks would see more than one map.
    module = get_layer(model, name)
    return sum(1 for _, m in model.named_modules(remove_duplicate=False) if m is module) == 1


def resolve_layer_name(model: nn.Module, name: str, example: torch.Tensor | None = None) -> str:
    """`auto` → the rectified output of the last conv layer (`cam_layer_name`); otherwise the name, checked."""
    if name == "auto":
        return cam_layer_name(model, example)
    get_layer(model, name)
    return name


def layer_table(model: nn.Module, example: torch.Tensor) -> list[dict]:
    """One row per named layer: name, type, output shape (for `example`'s batch), parameters, MACs.

    A torchinfo-like summary computed with one forward pass; layers that do not run in the
    forward pass get no shape. Modules called more than once keep their first output shape.
    `macs` are the multiply-accumulates of the layer and its children for the whole batch,
    as torch's FlopCounterMode counts them (convolutions and matrix products; FLOPs = 2×MACs).
    """
    layers = named_layers(model)
    shapes: dict[str, list[int]] = {}

    def hook_for(name: str):
        def hook(module, inputs, output):
            if isinstance(output, (tuple, list)):
                output = output[0]
            if name not in shapes and isinstance(output, torch.Tensor):
                shapes[name] = list(output.shape)

        return hook

    with Hooks() as hooks:
        for name, module in layers.items():
            hooks.forward(module, hook_for(name))
        macs = count_macs(model, example)  # the one forward pass: the hooks record the shapes
    rows = []
    for name, module in layers.items():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        rows.append(
            {
                "layer": name,
                "type": type(module).__name__,
                "output_shape": shapes.get(name),
                "params": own,
                "macs": macs.get(name, 0),
                "depth": name.count("."),
            }
        )
    return rows


def activation_stats(t: torch.Tensor) -> dict:
    """Shape and summary statistics of one activation tensor (per image: C×H×W or features)."""
    t = t.float()
    return {
        "shape": list(t.shape),
        "min": t.min().item(),
        "max": t.max().item(),
        "mean": t.mean().item(),
        "std": t.std().item() if t.numel() > 1 else 0.0,
        "zero_fraction": (t == 0).float().mean().item(),
    }


def layer_rows(model: nn.Module, in_channels: int, image_size: int, device=None) -> list[dict]:
    """`layer_table` for one image of the model's input size; output shapes as [C, H, W] lists
    (None for a layer the forward pass did not reach)."""
    device = device if device is not None else next(model.parameters()).device
    example = torch.zeros(1, in_channels, image_size, image_size, device=device)
    rows = layer_table(model, example)
    for row in rows:
        shape = row["output_shape"]
        row["output_shape"] = list(shape[1:]) if shape else None
    return rows


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Tanh, nn.Sigmoid)


def activation_layer_names(model: nn.Module, example: torch.Tensor | None = None) -> list[str]:
    """For each Conv2d, the activation module right after it (skipping a BatchNorm or Identity), else the conv.

    These are the post-activation feature maps people mean by "activations"; models that call
    F.relu in forward() have no module for it, so their conv outputs are used instead. With
    `example`, "after" is in the order the forward pass calls the layers.
    """
    entries = forward_order(model, example)
    names = []
    for i, (name, module) in enumerate(entries):
        if not isinstance(module, nn.Conv2d):
            continue
        chosen = name
        for later_name, later in entries[i + 1 : i + 3]:
            if isinstance(later, _ACTIVATIONS):
                chosen = later_name
                break
            if not isinstance(later, (nn.BatchNorm2d, nn.GroupNorm, nn.Identity)):
                break
        names.append(chosen)
    return names


def feature_maps(lm, raw: torch.Tensor, layers=None, *, channels=None, max_channels: int = 16,
                 batch_size: int = 1, precision: str = "fp32") -> dict:
    """One image through the loaded model `lm` with `layers` captured (default: each conv
    layer's activation, `activation_layer_names`), in one forward pass at `precision`.

    `raw` is the uint8 1×C×H×W image. Returns {"probs": the softmax (float32, CPU), "pred":
    the predicted class, "activations": name -> float32 CPU tensor of the image, "layers": one
    entry per layer with its type, `activation_stats` and for feature maps the channels to
    draw (`channels` given, else the `max_channels` most active by mean)}.
    """
    from cnntools.inference.batches import forward_batches
    from cnntools.inference.memory import fit_model_batch

    names = list(layers) if layers else activation_layer_names(lm.model, example_input(lm))
    if not names:
        raise CnnError("the model has no Conv2d layer; name layers with --layer (see --list-layers)")
    for n in names:
        get_layer(lm.model, n)
    fit_model_batch(lm, 1, keep=tuple(names))  # every captured map is held until drawn
    # One image: one forward pass, whatever batch_size says.
    (batch,) = forward_batches(lm.model, raw, lm.preprocessing, batch_size=batch_size, precision=precision,
                               arch=lm.meta.arch_name, layers=names)
    probs = torch.softmax(batch.logits.float(), dim=1)[0].cpu()
    acts = {n: a[0].float().cpu() for n, a in batch.activations.items()}
    entries = []
    for n in names:
        a = acts[n]
        entry = {"layer": n, "type": type(get_layer(lm.model, n)).__name__, **activation_stats(a)}
        if a.dim() == 3:
            if channels is not None:
                bad = [c for c in channels if not 0 <= c < a.shape[0]]
                if bad:
                    raise UsageError(f"--channels {bad[0]}: layer {n} has {a.shape[0]} channels (0..{a.shape[0] - 1})")
                entry["channels"] = list(channels)
            else:
                order = a.flatten(1).mean(1).argsort(descending=True)
                entry["channels"] = order[:max_channels].tolist()
            entry["chosen"] = "given" if channels is not None else "most active"
        entries.append(entry)
    return {"probs": probs, "pred": int(probs.argmax()), "activations": acts, "layers": entries}
