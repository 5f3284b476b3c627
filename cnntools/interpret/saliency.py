"""Saliency maps: the Grad-CAM family (six methods computed by `cams`, the others by
pytorch-grad-cam), vanilla gradient, SmoothGrad and guided backpropagation, all computed for a
whole batch at once, and their faithfulness scores.

Every method returns a tensor N×H×W (the input's spatial size) in its own units, which
`map_quantity` names: the gradient methods give raw gradient magnitudes of the quantity `of`
names (`score`: the target class's logit, as Simonyan et al. 2014 and captum's `Saliency`;
`loss`: the cross-entropy against the target, float64, as a confident model's loss gradient
lies far below float32's range), the CAM methods pytorch-grad-cam's maps, which it scales to
[0, 1] per image by convention. `explain` runs one or more models over their own images.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cnntools.models.layers import get_layer
from cnntools.core.errors import CnnError
from cnntools.inference.hooks import Hooks


def _cam_classes() -> dict[str, type]:
    """pytorch-grad-cam's classes for the methods `cams` does not compute itself."""
    from pytorch_grad_cam import KPCA_CAM, AblationCAM, FinerCAM, FullGrad, ScoreCAM, ShapleyCAM

    return {
        "scorecam": ScoreCAM,
        "ablationcam": AblationCAM,
        "fullgrad": FullGrad,
        "shapleycam": ShapleyCAM,
        "finercam": FinerCAM,
        "kpcacam": KPCA_CAM,
    }


CAM_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "scorecam", "ablationcam",
               "fullgrad", "shapleycam", "finercam", "kpcacam")
# FullGrad reads every conv/BN bias and the input gradient, ShapleyCAM differentiates the layer's
# gradient again (a Hessian-vector product): both need the whole graph, not one cut at the layer.
_FULL_GRAPH_CAMS = ("fullgrad", "shapleycam")
GRADIENT_METHODS = ("gradient", "smoothgrad", "guided-backprop")
QUANTITIES = ("score", "loss")  # what the gradient methods differentiate
FINER_COMPARISONS = 3  # FinerCAM compares the target with its 3 most similar classes (pytorch-grad-cam's default)
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


def map_quantity(method: str, reduce: str = "max", of: str = "score") -> str:
    """What the values of `method`'s maps are, for colour bars and --save: the raw quantity, or
    for the CAM methods that they are scaled to 0-1 per map."""
    if method in CAM_METHODS:
        return f"{_CAM_NAMES.get(method, method)}, scaled to 0-1 per map"
    grad = f"∂{'logit' if of == 'score' else 'loss'}/∂input"
    grad = f"guided {grad}" if method == "guided-backprop" else grad
    over = "noisy copies and channels" if method == "smoothgrad" else "channels"
    if reduce == "mean":
        return f"|mean over {over} of {grad}|"
    copies = "mean over noisy copies of " if method == "smoothgrad" else ""
    return f"{copies}|{grad}|, {'max' if reduce == 'max' else 'mean'} over channels"


_CAM_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "xgradcam": "XGrad-CAM", "hirescam": "HiResCAM",
              "layercam": "LayerCAM", "eigencam": "EigenCAM", "scorecam": "Score-CAM", "ablationcam": "Ablation-CAM",
              "fullgrad": "FullGrad", "shapleycam": "ShapleyCAM", "finercam": "FinerCAM", "kpcacam": "KPCA-CAM"}


def uses_layer(method: str) -> bool:
    """True for the CAM methods that read one convolutional layer's activations (FullGrad
    reads every conv and BatchNorm bias instead)."""
    return method in CAM_METHODS and method != "fullgrad"


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
    Yields the list of the re-rooted outputs, one per call of the layer.
    """
    outputs = []

    def reroot(module, args, out):
        # float32: pytorch-grad-cam turns activations and gradients into NumPy (no bfloat16).
        if not isinstance(out, torch.Tensor):
            return None
        outputs.append(out.detach().float().requires_grad_(True).clone())
        return outputs[-1]

    frozen = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(False)
        with Hooks() as hooks:
            hooks.forward(layer, reroot)
            yield outputs
    finally:
        for p in frozen:
            p.requires_grad_(True)


def cam_maps(
    model: nn.Module,
    layer: str | None,
    x: torch.Tensor,
    targets: Sequence[int],
    method: str = "gradcam",
    batch_size: int = 32,
) -> torch.Tensor:
    """Class activation maps of `method` at `layer` for the batch `x` and one target class per image.

    One forward and one backward pass for the whole batch (ScoreCAM and AblationCAM add their
    own batched forward passes), in channels_last memory format (the model is left in it).
    gradcam, gradcam++, xgradcam, hirescam, layercam and eigencam are computed here
    (`cnntools.interpret.cams`, pytorch-grad-cam's maps without importing it); the others run
    pytorch-grad-cam. FullGrad ignores `layer` (it reads every bias); FinerCAM explains the
    target against its most similar classes (`finer_targets`).
    Returns N×H×W float32 on the CPU, each map scaled to [0, 1] as pytorch-grad-cam does.
    """
    from cnntools.interpret.cams import NATIVE_CAMS

    if method not in CAM_METHODS:
        raise CnnError(f"unknown CAM method '{method}': use one of {', '.join(CAM_METHODS)}")
    target_layer = get_layer(model, layer) if uses_layer(method) else None
    inputs = x.detach()
    if inputs.dim() == 4:
        # channels_last runs CNN convolutions and pooling about twice as fast on CPU; the
        # model stays converted (no result depends on the memory format).
        model.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    if method in NATIVE_CAMS:
        return _native_cam_maps(model, target_layer, layer, inputs, targets, method)
    return _grad_cam_maps(model, target_layer, layer, inputs, targets, method, batch_size)


def _no_2d_maps(method: str, layer: str | None) -> CnnError:
    return CnnError(
        f"{method} needs a layer with 2-D feature maps (N x C x H x W) and layer '{layer}' has none; "
        "pick a conv layer (see --list-layers), or use --method gradient, which needs no layer"
    )


def _no_map(method: str, layer: str | None) -> CnnError:
    return CnnError(f"{method} produced no map for layer '{layer}'; pick a convolutional layer (see --list-layers)")


def _native_cam_maps(model, target_layer, layer, inputs, targets, method) -> torch.Tensor:
    """`cam_maps` for `cams.NATIVE_CAMS`: pytorch-grad-cam's pipeline (the summed target logits,
    one backward to the layer's output, `cams.cam_maps_from`) without pytorch-grad-cam."""
    from cnntools.interpret import cams

    model.eval()  # as pytorch-grad-cam's BaseCAM does
    needs_grad = method in cams.NEEDS_GRADIENTS
    with _relu_not_inplace(model), torch.enable_grad() if needs_grad else torch.no_grad(), \
            _gradients_from(model, target_layer) as outputs:
        logits = model(inputs)
        if not outputs:  # the layer never ran, or returned no tensor
            raise _no_map(method, layer)
        acts = outputs[0]  # the first call of a layer used twice, as pytorch-grad-cam reads it
        if acts.dim() != 4:
            raise _no_2d_maps(method, layer)
        grads = None
        if needs_grad:
            # ClassifierOutputTarget per image, summed over the batch: each image's map reads
            # the gradient of its own target logit.
            index = torch.as_tensor([int(t) for t in targets], dtype=torch.long, device=logits.device)
            score = logits.float().gather(1, index[:, None]).sum()
            (grads,) = torch.autograd.grad(score, acts, allow_unused=True)
            grads = torch.zeros_like(acts) if grads is None else grads
    return cams.cam_maps_from(method, acts.detach(), grads, tuple(inputs.shape[-2:])).cpu().contiguous()


def _grad_cam_maps(model, target_layer, layer, inputs, targets, method, batch_size) -> torch.Tensor:
    """`cam_maps` by pytorch-grad-cam's own classes (the methods `cams` does not compute)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    kwargs = {"batch_size": batch_size} if method == "ablationcam" else {}
    if method == "finercam":
        cam_targets = finer_targets(model, inputs, targets)
    else:
        cam_targets = [ClassifierOutputTarget(int(t)) for t in targets]
    # _gradients_from's hook is registered before pytorch-grad-cam's, so theirs sees (and
    # records the gradient of) the re-rooted output; the full-graph methods keep the graph whole.
    cut = _gradients_from(model, target_layer) if method not in _FULL_GRAPH_CAMS else contextlib.nullcontext()
    maps = None  # pytorch-grad-cam's __exit__ swallows IndexError: notice it instead of a NameError
    with _relu_not_inplace(model), _no_tqdm(), torch.enable_grad(), cut:
        with _cam_classes()[method](model=model, target_layers=[target_layer] if target_layer is not None else [],
                                    **kwargs) as cam:
            if method == "scorecam":
                cam.batch_size = batch_size
            try:
                maps = cam(input_tensor=inputs, targets=cam_targets)
            except ValueError as error:  # pytorch-grad-cam on a layer without 2-D maps (a Linear)
                if "shape" not in str(error).lower():
                    raise
                raise _no_2d_maps(method, layer) from None
    if maps is None:
        raise _no_map(method, layer)
    return torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))


def finer_targets(model: nn.Module, x: torch.Tensor, targets: Sequence[int]) -> list:
    """FinerCAM's targets for our chosen classes: the target's logit minus the logits of the
    `FINER_COMPARISONS` classes whose logits are closest to it, weighted by their probabilities
    (pytorch-grad-cam's `FinerWeightedTarget`, alpha 1, with the target we were asked for
    rather than FinerCAM's default of the top class)."""
    from pytorch_grad_cam.utils.model_targets import FinerWeightedTarget

    with torch.no_grad():
        logits = model(x).float().cpu()
    out = []
    for row, t in zip(logits, targets):
        gap = (row - row[int(t)]).abs()
        gap[int(t)] = float("inf")
        similar = gap.argsort()[: min(FINER_COMPARISONS, row.numel() - 1)].tolist()
        out.append(FinerWeightedTarget(int(t), similar, 1.0))
    return out


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


def _output_weights(logits: torch.Tensor, target: torch.Tensor, of: str) -> tuple[torch.Tensor, torch.Tensor]:
    """∂ quantity/∂ logits as (direction, log of its positive scale): the target's one-hot for
    the class score, `_loss_gradient_weights` for the cross-entropy."""
    if of == "score":
        onehot = torch.zeros_like(logits).scatter(1, target[:, None], 1.0)
        return onehot, torch.zeros(logits.shape[0], dtype=torch.float64)
    if of == "loss":
        return _loss_gradient_weights(logits, target)
    raise CnnError(f"unknown --of '{of}': use {' or '.join(QUANTITIES)}")


def input_gradients(
    model: nn.Module, x: torch.Tensor, targets: Sequence[int], of: str = "loss"
) -> tuple[torch.Tensor, torch.Tensor]:
    """∂ quantity / ∂ input for every image of the batch: `of` = `score` (the target class's
    logit) or `loss` (cross-entropy against the target class).

    Returns (gradients, log_scale): the true gradient of image i is gradients[i] ×
    exp(log_scale[i]); the split keeps saturated (very confident) images' loss gradients from
    underflowing to zero (the score's scale is 1). Each image's gradient is its own (the
    batch's quantities are summed).
    """
    target = torch.as_tensor(list(targets), dtype=torch.long, device=x.device)
    inputs = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(inputs).float()
        weights, log_scale = _output_weights(logits, target, of)
        (grad,) = torch.autograd.grad((logits * weights).sum(), inputs)
    return grad, log_scale.cpu()


def _true_scale(maps: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Maps of scaled gradients (`input_gradients`) in the gradient's true units, in float64."""
    return maps.double().cpu() * torch.exp(log_scale.double()).reshape(-1, *([1] * (maps.dim() - 1)))


def gradient_maps(model: nn.Module, x: torch.Tensor, targets: Sequence[int], reduce: str = "max",
                  of: str = "score") -> torch.Tensor:
    """Vanilla gradient saliency: |∂ score/∂ input| reduced over channels (`reduce_channels`;
    Simonyan et al. 2014 and captum's `Saliency` with `max`), or |∂ loss/∂ input| with
    `of="loss"` (the course notebook's choice), in the gradient's own units (float64)."""
    with _relu_not_inplace(model):
        grad, log_scale = input_gradients(model, x, targets, of)
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
    of: str = "score",
) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): mean |gradient| of `of` (see `gradient_maps`) over
    noisy copies of each image.

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
            grad, log_scale = input_gradients(model, noisy, target[idx].tolist(), of)
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


def guided_backprop_maps(model: nn.Module, x: torch.Tensor, targets: Sequence[int], reduce: str = "max",
                         of: str = "score") -> torch.Tensor:
    """Guided backpropagation of `of` (the target logit, as Springenberg et al., or the loss):
    |guided gradient| reduced over channels, in its own units (float64)."""
    with _relu_not_inplace(model), _guided_relus(model):
        grad, log_scale = input_gradients(model, x, targets, of)
    return _true_scale(reduce_channels(grad, reduce), log_scale)


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
    of: str = "score",
) -> torch.Tensor:
    """Saliency maps of any supported method for the batch `x` (N×H×W, in `map_quantity`'s units).

    `reduce` and `of` (gradient methods): how the input gradient's channels become one map,
    and what is differentiated (the target's class score or the loss).
    `precision` (resolved: fp32, bf16 or fp16): see `_at_precision`."""
    if len(targets) != x.shape[0]:
        raise ValueError("one target class per image")
    with _at_precision(model, x.device, precision):
        return _maps(model, x, targets, method, layer, batch_size, seed, reduce, of)


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


def _maps(model, x, targets, method, layer, batch_size, seed, reduce, of) -> torch.Tensor:
    if method in CAM_METHODS:
        if layer is None and uses_layer(method):
            raise ValueError("CAM methods need a layer")
        return cam_maps(model, layer, x, targets, method=method, batch_size=batch_size)
    if method == "gradient":
        return gradient_maps(model, x, targets, reduce, of)
    if method == "smoothgrad":
        return smoothgrad_maps(model, x, targets, seed=seed, reduce=reduce, of=of)
    if method == "guided-backprop":
        return guided_backprop_maps(model, x, targets, reduce, of)
    raise CnnError(f"unknown saliency method '{method}': use one of {', '.join(METHODS)}")


FAITHFULNESS = ("confidence_change", "road")
ROAD_PERCENTILES = (20, 40, 60, 80)


def scaled_unit(maps: torch.Tensor) -> torch.Tensor:
    """Each map scaled to [0, 1] by its own maximum (all-zero maps stay zero), as pytorch-grad-cam
    scales CAMs and as its metrics expect: a gradient map's raw units carry no meaning there."""
    flat = maps.double().reshape(maps.shape[0], -1)
    top = flat.amax(1, keepdim=True)
    return torch.where(top > 0, flat / top.clamp_min(1e-300), torch.zeros_like(flat)).reshape(maps.shape).float()


def faithfulness(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, targets: Sequence[int],
                 seed: int = 0) -> dict[str, list[float]]:
    """How faithful each map is to the model, by pytorch-grad-cam's metrics (target class's
    softmax probability, maps scaled to 0-1 per map):

    - `confidence_change` (`CamMultImageConfidenceChange`): the change of the probability when
      the image is multiplied by its map; near 0 (or above) = the map keeps what the model uses.
    - `road` (`ROADCombined`, Rong et al. 2022, at `ROAD_PERCENTILES`): the mean drop of the
      probability when the least relevant pixels are imputed away, minus when the most relevant
      are, halved; higher = the map ranks pixels by what the model needs.

    Both are larger for a better map, so they rank methods on the same images.
    """
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    cams = scaled_unit(maps).numpy()
    inputs = x.detach().float()
    goals = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    torch.manual_seed(seed)  # ROAD's imputer adds noise
    with _relu_not_inplace(model):
        change = CamMultImageConfidenceChange()(inputs, cams, goals, model)
        road = ROADCombined(percentiles=list(ROAD_PERCENTILES))(inputs, cams, goals, model)
    return {"confidence_change": np.asarray(change, dtype=np.float64).reshape(-1).tolist(),
            "road": np.asarray(road, dtype=np.float64).reshape(-1).tolist()}


@dataclass
class Subject:
    """One model to explain and the images it explains, as its own preprocessing makes them
    from the source pixels (uint8 N×C×H×W), with their labels in its classes (-1 unknown)."""

    model: nn.Module
    preprocessing: object  # cnntools.inference.preprocessing.Preprocessing
    classes: list[str]
    images: torch.Tensor
    labels: list[int]
    layer: str | None = None  # the resolved layer of a CAM method
    name: str = ""
    batch_size: int = 64
    arch: str | None = None


@dataclass
class Column:
    """One column of the figure: one model's maps for one target choice."""

    subject: Subject
    target_spec: str
    shown: torch.Tensor  # uint8 images at the model's size, as drawn
    probs: torch.Tensor  # N×K softmax
    preds: list[int]
    targets: list[int]
    maps: torch.Tensor  # N×H×W in map_quantity's units
    scores: dict[str, list[float]] | None = None  # faithfulness, one value per image


def explain(subjects: Sequence[Subject], method: str, target_specs: Sequence[str], *, reduce: str = "max",
            of: str = "score", precision: str = "fp32", seed: int = 0, device=None,
            score: bool = False) -> list[Column]:
    """Saliency maps of `method` for every subject and every target choice (`pred`, `true`,
    an index or a name: `resolve_targets`), one `Column` each, model by model.

    Each subject's images go through its own preprocessing; the maps are computed `batch_size`
    images at a time; `score` adds the faithfulness scores of every map (`faithfulness`).
    """
    from cnntools.inference.batches import predict
    from cnntools.interpret.inputs import resolve_targets

    columns = []
    for sub in subjects:
        shown = sub.preprocessing.fit(sub.images)
        probs = torch.softmax(predict(sub.model, sub.images, sub.preprocessing, batch_size=sub.batch_size,
                                      precision=precision, arch=sub.arch).float(), dim=1)
        x = sub.preprocessing(sub.images, device)
        preds = probs.argmax(1).tolist()
        known = None if min(sub.labels, default=-1) < 0 else sub.labels
        for spec in target_specs:
            targets = resolve_targets(spec, preds, known, sub.classes)
            maps = torch.cat([
                saliency_maps(sub.model, x[i : i + sub.batch_size], targets[i : i + sub.batch_size], method=method,
                              layer=sub.layer, batch_size=sub.batch_size, seed=seed, reduce=reduce,
                              precision=precision, of=of)
                for i in range(0, x.shape[0], sub.batch_size)
            ])
            scores = faithfulness(sub.model, x, maps, targets, seed) if score else None
            columns.append(Column(sub, spec, shown, probs, preds, targets, maps, scores))
    return columns


def explanation_rows(columns: Sequence[Column], names: Sequence[str], picked=None, paths=None) -> list[dict]:
    """One row per (image, column): label, prediction, target and the map's peak (and its
    faithfulness scores where computed), image by image."""
    rows = []
    for i, image_name in enumerate(names):
        for col in columns:
            classes, label = col.subject.classes, col.subject.labels[i]
            peak, width = int(col.maps[i].argmax()), col.maps.shape[2]
            pred, target = col.preds[i], col.targets[i]
            row = {
                "image": image_name,
                "index": picked[i] if picked else None,
                "path": paths[i] if paths else None,
                "model": col.subject.name,
                "layer": col.subject.layer,
                "target_spec": col.target_spec,
                "label": label if label >= 0 else None,
                "label_name": classes[label] if 0 <= label < len(classes) else None,
                "pred": pred,
                "pred_name": classes[pred],
                "prob": col.probs[i, pred].item(),
                "target": target,
                "target_name": classes[target],
                "target_prob": col.probs[i, target].item(),
                "peak_row": peak // width,
                "peak_col": peak % width,
                "peak_value": float(col.maps[i].max()),
            }
            if col.scores is not None:
                row.update({name: col.scores[name][i] for name in FAITHFULNESS})
            rows.append(row)
    return rows


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
