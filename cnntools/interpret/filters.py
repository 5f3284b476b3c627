"""Filters: kernel tiles, the images that activate a filter most, and receptive-field boxes."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from cnntools.inference.batches import capture_activations
from cnntools.models.layers import get_layer
from cnntools.core.errors import CnnError


def kernel_tiles(weight: torch.Tensor, scale: str = "shared") -> tuple[torch.Tensor, bool]:
    """Kernels of a conv layer as displayable tiles in [0, 1].

    `weight` is out×in×kh×kw. A 3-channel input gives one RGB tile per filter (out×kh×kw×3,
    `rgb` True); otherwise one grey tile per (filter, input channel) (out×in×kh×kw). `shared`
    scales all tiles with one symmetric range (0.5 = zero weight) so filters compare; `per-filter`
    stretches each filter on its own.
    """
    w = weight.detach().float().cpu()
    if w.dim() != 4:
        raise CnnError("filters are drawn for Conv2d layers (4-D weights); pick a conv layer")
    rgb = w.shape[1] == 3
    if scale == "shared":
        bound = w.abs().max().clamp_min(1e-12)
        tiles = 0.5 + 0.5 * w / bound
    elif scale == "per-filter":
        bound = w.reshape(w.shape[0], -1).abs().amax(1).clamp_min(1e-12).reshape(-1, 1, 1, 1)
        tiles = 0.5 + 0.5 * w / bound
    else:
        raise CnnError(f"unknown scale '{scale}': use shared or per-filter")
    if rgb:
        tiles = tiles.permute(0, 2, 3, 1)
    return tiles.clamp(0, 1), rgb


def filter_scores(rectified: torch.Tensor, score: str = "mean") -> torch.Tensor:
    """Score of each image for each filter from the post-ReLU feature maps N×F×H×W of the
    chosen filters: their mean or max. Returns N×F."""
    if rectified.dim() == 2:  # a linear layer: one number per unit
        return rectified
    flat = rectified.flatten(2)
    if score == "mean":
        return flat.mean(2)
    if score == "max":
        return flat.amax(2)
    raise CnnError(f"unknown score '{score}': use mean or max")


def top_activating(
    layer: str,
    activations: Iterable[torch.Tensor],
    filters: Sequence[int],
    k: int = 9,
    score: str = "mean",
) -> dict:
    """Rank a dataset's images by each filter's post-ReLU activation.

    `activations` yields the layer's output batch by batch in dataset order (as
    `inference.forward_batches(..., layers=[layer])` captures it); only the scores and peaks
    are kept, so memory does not grow with the feature maps. Returns {"scores": N×F,
    "top": F×k indices, "top_scores": F×k, "argmax": F×k×2 (row, column) of the strongest
    unit in each top image's feature map, or None for linear layers, "map_size": (H, W)}.
    """
    channels = None
    all_scores, peaks = [], []
    with torch.inference_mode():
        for act in activations:
            if channels is None:
                channels = act.shape[1]
                bad = [f for f in filters if not 0 <= f < channels]
                if bad:
                    raise CnnError(f"layer '{layer}' has {channels} filters (0..{channels - 1}); got {bad}")
            rectified = torch.relu(act[:, list(filters)].float())
            all_scores.append(filter_scores(rectified, score).cpu())
            if act.dim() == 4:
                peaks.append(rectified.flatten(2).argmax(2).cpu())
            map_size = tuple(act.shape[2:]) if act.dim() == 4 else None
    if not all_scores:
        raise CnnError("no images to rank")
    scores = torch.cat(all_scores)
    k = min(k, scores.shape[0])
    # Stable ordering: highest score first, ties by dataset index.
    order = torch.stack([_stable_desc(scores[:, j])[:k] for j in range(scores.shape[1])])
    top_scores = torch.gather(scores.t(), 1, order)
    argmax = None
    if peaks and map_size is not None:
        flat_peaks = torch.cat(peaks)  # N×F
        chosen = torch.gather(flat_peaks.t(), 1, order)  # F×k flat positions
        argmax = torch.stack([chosen // map_size[1], chosen % map_size[1]], dim=-1)
    return {"scores": scores, "top": order, "top_scores": top_scores, "argmax": argmax, "map_size": map_size}


def _stable_desc(values: torch.Tensor) -> torch.Tensor:
    return torch.sort(-values, stable=True).indices


def _rf_probe(model: nn.Module) -> nn.Module:
    """A copy of the model whose gradient support equals the theoretical receptive field:
    all conv/linear weights 1, biases 0, normalisation layers identity, max pooling → average
    pooling (max pooling sends gradient to one input only), in-place ops off."""
    probe = copy.deepcopy(model).float().cpu().eval()

    def swap(parent: nn.Module):
        for name, child in parent.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(
                    parent,
                    name,
                    nn.AvgPool2d(child.kernel_size, child.stride, child.padding, ceil_mode=child.ceil_mode),
                )
            elif isinstance(child, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm, nn.LayerNorm, nn.Dropout, nn.Dropout2d)):
                setattr(parent, name, nn.Identity())
            else:
                if hasattr(child, "inplace"):
                    child.inplace = False
                swap(child)

    swap(probe)
    with torch.no_grad():
        for module in probe.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.fill_(1.0)
                if module.bias is not None:
                    module.bias.zero_()
    return probe


def receptive_field_boxes(
    model: nn.Module, layer: str, input_shape: Sequence[int], units: torch.Tensor
) -> torch.Tensor:
    """Receptive-field box (top, left, bottom, right; exclusive end) in input pixels of each unit.

    Measured by gradient: the input pixels whose value can change the unit's activation
    (on a probe copy of the model with positive weights, so no path cancels). `units` is
    M×2 (row, column) in the layer's feature map; `input_shape` is C×H×W.
    """
    probe = _rf_probe(model)
    get_layer(probe, layer)
    boxes = []
    cache: dict[tuple[int, int], list[int]] = {}
    x = torch.ones((1,) + tuple(input_shape), requires_grad=True)
    for row, col in units.tolist():
        if (row, col) not in cache:
            with capture_activations(probe, [layer], clone=False) as store, torch.enable_grad():
                probe(x)
                act = store[layer]
                (grad,) = torch.autograd.grad(act[0, :, row, col].sum(), x)
            support = grad[0].abs().sum(0) > 0
            rows = torch.nonzero(support.any(1)).flatten()
            cols = torch.nonzero(support.any(0)).flatten()
            if rows.numel() == 0:
                cache[(row, col)] = [0, 0, input_shape[1], input_shape[2]]
            else:
                cache[(row, col)] = [rows.min().item(), cols.min().item(), rows.max().item() + 1, cols.max().item() + 1]
        boxes.append(cache[(row, col)])
    return torch.tensor(boxes, dtype=torch.long).reshape(-1, 4)


def pick_conv_layer(model: nn.Module, layer: str, example: torch.Tensor | None = None) -> tuple[str, nn.Conv2d]:
    """`first` or `last` (the first or last Conv2d the forward pass calls) or a layer name,
    checked to be a Conv2d: (its name, the module)."""
    from cnntools.interpret.activations import conv_layer_names

    convs = conv_layer_names(model, example)
    if layer in ("first", "last"):
        if not convs:
            raise CnnError("the model has no Conv2d layer")
        layer = convs[0] if layer == "first" else convs[-1]
    module = get_layer(model, layer)
    if not isinstance(module, nn.Conv2d):
        raise CnnError(f"layer '{layer}' is a {type(module).__name__}, not a Conv2d; conv layers: {', '.join(convs)}")
    return layer, module


def kernel_stats(weight: torch.Tensor) -> list[dict]:
    """One row per filter of a conv weight F×C×kH×kW: its L2 norm, mean, min and max."""
    return [
        {"filter": f, "norm": weight[f].norm().item(), "mean": weight[f].mean().item(),
         "min": weight[f].min().item(), "max": weight[f].max().item()}
        for f in range(weight.shape[0])
    ]


def top_images(lm, imageset, layer: str, filters: Sequence[int], *, k: int = 9, score: str = "mean",
               crop_rf: bool = False, batch_size: int = 256, precision: str = "fp32", progress=None) -> tuple[list[dict], torch.Tensor | None]:
    """The `k` images of `imageset` that activate each of `filters` of the loaded model `lm`'s
    `layer` most (`top_activating` over one `forward_batches` pass; `progress(n)` after each
    batch). Returns one entry per filter (dataset indices, scores, class names, paths where the
    images have them, the strongest unit's position, with `crop_rf` its receptive-field box)
    and the boxes (F×k×4, or None)."""
    from cnntools.inference.batches import forward_batches

    def activations():
        for batch in forward_batches(lm.model, imageset.images, lm.preprocessing, batch_size=batch_size,
                                     precision=precision, arch=lm.meta.arch_name, layers=[layer]):
            yield batch.activations[layer]
            if progress is not None:
                progress(batch.start + batch.size)

    ranked = top_activating(layer, activations(), filters, k=k, score=score)
    top = []
    for j, f in enumerate(filters):
        entry = {"filter": f, "indices": ranked["top"][j].tolist(), "scores": ranked["top_scores"][j].tolist(),
                 "labels": [imageset.classes[int(imageset.labels[i])] for i in ranked["top"][j]]}
        if imageset.paths:
            entry["paths"] = [imageset.paths[i] for i in ranked["top"][j]]
        if ranked["argmax"] is not None:
            entry["peak_units"] = ranked["argmax"][j].tolist()
        top.append(entry)
    boxes = None
    if crop_rf and ranked["argmax"] is not None:
        units = ranked["argmax"].reshape(-1, 2)
        boxes = receptive_field_boxes(lm.model, layer, lm.preprocessing.shape, units).reshape(len(filters), -1, 4)
        for j, entry in enumerate(top):
            entry["rf_boxes"] = boxes[j].tolist()
    return top, boxes
