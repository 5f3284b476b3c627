"""Saliency maps: the Grad-CAM family (pytorch-grad-cam), vanilla gradient, SmoothGrad and
guided backpropagation, all computed for a whole batch at once.

Every method returns a tensor N×H×W (the input's spatial size) in its own units, which
`map_quantity` names: the gradient methods give raw gradient magnitudes (float64 for the
loss gradient, which for a confident model lies far below float32's range), the CAM methods
pytorch-grad-cam's maps, which it scales to [0, 1] per image by convention.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from cnntools.models.layers import get_layer
from cnntools.core.errors import CnnError
from cnntools.inference.hooks import Hooks


def _cam_classes() -> dict[str, type]:
    from pytorch_grad_cam import (
        AblationCAM,
        EigenCAM,
        GradCAM,
        GradCAMPlusPlus,
        HiResCAM,
        LayerCAM,
        ScoreCAM,
        XGradCAM,
    )

    return {
        "gradcam": GradCAM,
        "gradcam++": GradCAMPlusPlus,
        "xgradcam": XGradCAM,
        "hirescam": HiResCAM,
        "layercam": LayerCAM,
        "eigencam": EigenCAM,
        "scorecam": ScoreCAM,
        "ablationcam": AblationCAM,
    }


CAM_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "scorecam", "ablationcam")
GRADIENT_METHODS = ("gradient", "smoothgrad", "guided-backprop")
REDUCTIONS = ("max", "mean", "abs-mean")


def reduce_channels(grad: torch.Tensor, reduce: str = "max") -> torch.Tensor:
    """N×C×H×W input gradients → N×H×W: `max` = max over channels of |g| (Simonyan et al.),
    `abs-mean` = mean over channels of |g|, `mean` = |mean over channels of g| (signs cancel)."""
    if reduce == "max":
        return grad.abs().amax(dim=1)
    if reduce == "abs-mean":
        return grad.abs().mean(dim=1)
    if reduce == "mean":
        return grad.mean(dim=1).abs()
    raise CnnError(f"unknown --reduce '{reduce}': use {', '.join(REDUCTIONS)}")
METHODS = CAM_METHODS + GRADIENT_METHODS


def map_quantity(method: str, reduce: str = "max") -> str:
    """What the values of `method`'s maps are, for colour bars and --save: the raw quantity, or
    for the CAM methods that they are scaled to 0-1 per map."""
    if method in CAM_METHODS:
        return f"{_CAM_NAMES.get(method, method)}, scaled to 0-1 per map"
    grad = "guided ∂logit/∂input" if method == "guided-backprop" else "∂loss/∂input"
    over = "noisy copies and channels" if method == "smoothgrad" else "channels"
    if reduce == "mean":
        return f"|mean over {over} of {grad}|"
    copies = "mean over noisy copies of " if method == "smoothgrad" else ""
    return f"{copies}|{grad}|, {'max' if reduce == 'max' else 'mean'} over channels"


_CAM_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "xgradcam": "XGrad-CAM", "hirescam": "HiResCAM",
              "layercam": "LayerCAM", "eigencam": "EigenCAM", "scorecam": "Score-CAM", "ablationcam": "Ablation-CAM"}


def uses_layer(method: str) -> bool:
    """True for the CAM methods, which read a convolutional layer's activations."""
    return method in CAM_METHODS


@contextlib.contextmanager
def _no_tqdm():
    # ScoreCAM and AblationCAM draw tqdm bars per image on stderr; our commands report progress
    # themselves, so swap the module's tqdm for a pass-through while they run.
    import pytorch_grad_cam.ablation_cam as ablation_cam
    import pytorch_grad_cam.score_cam as score_cam

    silent = types.SimpleNamespace(tqdm=lambda iterable, *a, **k: iterable)
    saved = [(m, m.tqdm) for m in (score_cam, ablation_cam)]
    try:
        for module, _ in saved:
            module.tqdm = silent
        yield
    finally:
        for module, original in saved:
            module.tqdm = original


@contextlib.contextmanager
def _relu_not_inplace(model: nn.Module):
    """Turn in-place ReLUs off while gradients or backward hooks read activations."""
    changed = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6, nn.LeakyReLU)) and m.inplace]
    try:
        for module in changed:
            module.inplace = False
        yield
    finally:
        for module in changed:
            module.inplace = True


@contextlib.contextmanager
def _gradients_from(model: nn.Module, layer: nn.Module):
    """Backward passes that stop at `layer`'s output.

    The CAM methods read the gradient of the score with respect to one layer's activations
    and nothing else; the weight gradients of every layer and the activation gradients below
    the layer are work thrown away, and for a batch they are most of the backward pass. The
    layer's output is re-rooted as a fresh tensor that requires grad (a clone, so in-place
    operations after the layer stay legal) and the parameters are frozen for the duration.
    """
    def reroot(module, args, out):
        # float32: pytorch-grad-cam turns activations and gradients into NumPy (no bfloat16).
        return out.detach().float().requires_grad_(True).clone() if isinstance(out, torch.Tensor) else None

    frozen = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(False)
        with Hooks() as hooks:
            hooks.forward(layer, reroot)
            yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def cam_maps(
    model: nn.Module,
    layer: str,
    x: torch.Tensor,
    targets: Sequence[int],
    method: str = "gradcam",
    batch_size: int = 32,
) -> torch.Tensor:
    """Class activation maps of `method` at `layer` for the batch `x` and one target class per image.

    One pytorch-grad-cam call for the whole batch: one forward and one backward pass
    (ScoreCAM and AblationCAM add their own batched forward passes), in channels_last memory
    format (the model is left in it). Returns N×H×W, each map scaled to [0, 1] by pytorch-grad-cam.
    """
    classes = _cam_classes()
    if method not in classes:
        raise CnnError(f"unknown CAM method '{method}': use one of {', '.join(CAM_METHODS)}")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    target_layer = get_layer(model, layer)
    kwargs = {"batch_size": batch_size} if method == "ablationcam" else {}
    cam_targets = [ClassifierOutputTarget(int(t)) for t in targets]
    inputs = x.detach()
    if inputs.dim() == 4:
        # channels_last runs CNN convolutions and pooling about twice as fast on CPU; the
        # model stays converted (no result depends on the memory format).
        model.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    maps = None  # pytorch-grad-cam's __exit__ swallows IndexError: notice it instead of a NameError
    # _gradients_from's hook is registered before pytorch-grad-cam's, so theirs sees (and
    # records the gradient of) the re-rooted output.
    with _relu_not_inplace(model), _no_tqdm(), torch.enable_grad(), _gradients_from(model, target_layer):
        with classes[method](model=model, target_layers=[target_layer], **kwargs) as cam:
            if method == "scorecam":
                cam.batch_size = batch_size
            try:
                maps = cam(input_tensor=inputs, targets=cam_targets)
            except ValueError as error:  # pytorch-grad-cam on a layer without 2-D maps (a Linear)
                if "shape" not in str(error).lower():
                    raise
                raise CnnError(
                    f"{method} needs a layer with 2-D feature maps (N x C x H x W) and layer '{layer}' has none; "
                    "pick a conv layer (see --list-layers), or use --method gradient, which needs no layer"
                ) from None
    if maps is None:
        raise CnnError(f"{method} produced no map for layer '{layer}'; pick a convolutional layer (see --list-layers)")
    return torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))


def _loss_gradient_weights(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """∂ CE/∂ logits for each image, as (direction, log of its positive scale).

    ∂ CE/∂ l_j = p_j − [j = target]. A confident model has p_target = 1 in float32 and the
    plain gradient is exactly zero, which would make the saliency map blank for exactly the
    images people look at first. Working in log space gives the same vector up to a positive
    factor exp(log_scale): entries p_j / max_{k≠t} p_k for j ≠ t, and minus their sum at t.
    """
    logp = torch.log_softmax(logits.detach().double(), dim=1)
    others = logp.scatter(1, target[:, None], float("-inf"))
    if others.shape[1] == 1:  # one class: the loss is constant
        return torch.zeros_like(logits), torch.zeros(logits.shape[0], dtype=torch.float64)
    log_scale = others.amax(dim=1)
    weights = torch.exp(others - log_scale[:, None])
    weights = weights.scatter(1, target[:, None], -weights.sum(dim=1, keepdim=True))
    return weights.to(logits.dtype), log_scale


def input_gradients(
    model: nn.Module, x: torch.Tensor, targets: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """∂ loss / ∂ input for every image of the batch (cross-entropy against its target class).

    Returns (gradients, log_scale): the true gradient of image i is gradients[i] ×
    exp(log_scale[i]); the split keeps saturated (very confident) images from underflowing
    to zero. Each image's gradient is its own (the batch's losses are summed).
    """
    target = torch.as_tensor(list(targets), dtype=torch.long, device=x.device)
    inputs = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(inputs).float()
        weights, log_scale = _loss_gradient_weights(logits, target)
        (grad,) = torch.autograd.grad((logits * weights).sum(), inputs)
    return grad, log_scale.cpu()


def _true_scale(maps: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Maps of scaled gradients (`input_gradients`) in the gradient's true units, in float64."""
    return maps.double().cpu() * torch.exp(log_scale.double()).reshape(-1, *([1] * (maps.dim() - 1)))


def gradient_maps(model: nn.Module, x: torch.Tensor, targets: Sequence[int], reduce: str = "max") -> torch.Tensor:
    """Vanilla gradient saliency (Simonyan et al. 2014): |∂ loss/∂ input| reduced over channels
    (`reduce_channels`), in the gradient's own units (float64)."""
    with _relu_not_inplace(model):
        grad, log_scale = input_gradients(model, x, targets)
    return _true_scale(reduce_channels(grad, reduce), log_scale)


def smoothgrad_maps(
    model: nn.Module,
    x: torch.Tensor,
    targets: Sequence[int],
    samples: int = 25,
    noise: float = 0.15,
    seed: int = 0,
    batch_size: int = 256,
    reduce: str = "max",
) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): mean |gradient| over noisy copies of each image.

    Noise is Gaussian with σ = `noise` × (max − min) of each image; the noisy copies of many
    images run through the model together, `batch_size` at a time.
    """
    n = x.shape[0]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    span = (x.reshape(n, -1).amax(1) - x.reshape(n, -1).amin(1)).reshape(n, 1, 1, 1)
    sigma = (noise * span).to(x.dtype)
    target = torch.as_tensor(list(targets), dtype=torch.long)
    # Flatten (image, sample) pairs into one stream cut into batches.
    pairs = torch.arange(n).repeat_interleave(samples)
    grads, scales = [], []
    with _relu_not_inplace(model):
        for start in range(0, pairs.numel(), batch_size):
            idx = pairs[start : start + batch_size]
            eps = torch.randn((idx.numel(),) + tuple(x.shape[1:]), generator=generator).to(x.device, x.dtype)
            noisy = x[idx.to(x.device)] + eps * sigma[idx.to(x.device)]
            grad, log_scale = input_gradients(model, noisy, target[idx].tolist())
            grads.append((grad if reduce == "mean" else grad.abs()).cpu())
            scales.append(log_scale)
    grads = torch.cat(grads).reshape((n, samples) + tuple(x.shape[1:]))
    scales = torch.cat(scales).reshape(n, samples)
    # Mean of the true |gradients|: rescale each sample relative to its image's largest scale.
    weights = torch.exp(scales - scales.amax(dim=1, keepdim=True)).to(grads.dtype)
    mean = (grads * weights.reshape(n, samples, 1, 1, 1)).sum(1) / samples
    return _true_scale(reduce_channels(mean, reduce), scales.amax(dim=1))


@contextlib.contextmanager
def _guided_relus(model: nn.Module):
    """Guided backpropagation (Springenberg et al. 2015): ReLUs pass back only positive gradients."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise CnnError("guided-backprop needs nn.ReLU modules in the model (this one has none)")

    def hook(module, grad_input, grad_output):
        return tuple(g.clamp_min(0) if g is not None else None for g in grad_input)

    with Hooks() as hooks:
        for module in relus:
            hooks.backward(module, hook)
        yield


def guided_backprop_maps(model: nn.Module, x: torch.Tensor, targets: Sequence[int], reduce: str = "max") -> torch.Tensor:
    """Guided backpropagation of the target logit: |guided gradient| reduced over channels (float32)."""
    inputs = x.detach().clone().requires_grad_(True)
    index = torch.as_tensor(list(targets), dtype=torch.long, device=x.device)
    with _relu_not_inplace(model), _guided_relus(model), torch.enable_grad():
        logits = model(inputs)
        score = logits.float().gather(1, index[:, None]).sum()
        (grad,) = torch.autograd.grad(score, inputs)
    return reduce_channels(grad, reduce).float().cpu()


def saliency_maps(
    model: nn.Module,
    x: torch.Tensor,
    targets: Sequence[int],
    method: str = "gradcam",
    layer: str | None = None,
    batch_size: int = 32,
    seed: int = 0,
    reduce: str = "max",
    precision: str = "fp32",
) -> torch.Tensor:
    """Saliency maps of any supported method for the batch `x` (N×H×W, in `map_quantity`'s units).

    `reduce` (gradient methods): how the input gradient's channels become one map.
    `precision` (resolved: fp32, bf16 or fp16): see `_at_precision`."""
    if len(targets) != x.shape[0]:
        raise ValueError("one target class per image")
    with _at_precision(model, x.device, precision):
        return _maps(model, x, targets, method, layer, batch_size, seed, reduce)


@contextlib.contextmanager
def _at_precision(model: nn.Module, device, precision: str):
    """Forward passes under autocast for bf16/fp16 (a no-op for fp32).

    The backward of an autocast forward runs in the dtypes the forward used, so gradients
    are as reduced as the forward; the input stays float32 and so does its gradient. The
    model's output is cast to float32 (pytorch-grad-cam turns scores into NumPy, which has
    no bfloat16); the CAM layer's output is too (see `_gradients_from`).
    """
    from cnntools.core import runtime

    if precision == "fp32":
        yield
        return
    with Hooks() as hooks, runtime.autocast(device, precision):
        hooks.forward(model, lambda _m, _args, out: out.float() if isinstance(out, torch.Tensor) else None)
        yield


def _maps(model, x, targets, method, layer, batch_size, seed, reduce) -> torch.Tensor:
    if method in CAM_METHODS:
        if layer is None:
            raise ValueError("CAM methods need a layer")
        return cam_maps(model, layer, x, targets, method=method, batch_size=batch_size)
    if method == "gradient":
        return gradient_maps(model, x, targets, reduce)
    if method == "smoothgrad":
        return smoothgrad_maps(model, x, targets, seed=seed, reduce=reduce)
    if method == "guided-backprop":
        return guided_backprop_maps(model, x, targets, reduce)
    raise CnnError(f"unknown saliency method '{method}': use one of {', '.join(METHODS)}")


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps (Adebayo et al.'s sanity-check similarity)."""
    import warnings

    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant map has no ranking: correlation 0
        value = spearmanr(a.reshape(-1).numpy(), b.reshape(-1).numpy()).statistic
    return float(np.nan_to_num(value))


def randomized_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of `model` with every parameter re-initialised (Adebayo et al.'s cascading test, all at once)."""
    import copy

    clone = copy.deepcopy(model)
    torch.manual_seed(seed)
    for module in clone.modules():
        if hasattr(module, "reset_parameters") and module is not clone:
            module.reset_parameters()
    return clone
