"""Six CAM methods computed in torch, as pytorch-grad-cam 1.5.7 defines them.

Importing pytorch-grad-cam costs seconds (its base class pulls in OpenCV, SciPy, scikit-learn,
matplotlib and torchvision), more than the maps of a small model; these methods need none of
it. Each function follows pytorch-grad-cam's pipeline step by step so the maps are its maps
(tests/test_saliency_native.py runs its classes as the reference): per-method channel weights
or elementwise products (`cam_image`, eps as it writes them), ReLU, `scale_cam` per image
(min-max, then bilinear resize to the input), and its aggregation over the single target
layer (ReLU, mean over one layer, `scale_cam` again). Everything is float32, as its NumPy is.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

NATIVE_CAMS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam")
NEEDS_GRADIENTS = tuple(m for m in NATIVE_CAMS if m != "eigencam")


def cam_image(method: str, activations: torch.Tensor, grads: torch.Tensor | None) -> torch.Tensor:
    """The raw N×h×w map of `method` from the layer's N×C×h×w activations and their gradients
    (`grads` is unused by eigencam), before ReLU and scaling."""
    a = activations.float()
    if method == "eigencam":
        return projection_2d(a)
    g = grads.float()
    if method == "hirescam":
        return (g * a).sum(dim=1)
    if method == "layercam":
        return (g.clamp_min(0) * a).sum(dim=1)
    weights = channel_weights(method, a, g)
    return (weights[:, :, None, None] * a).sum(dim=1)


def channel_weights(method: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """N×C weights of the channel-weighting methods (gradcam, gradcam++, xgradcam)."""
    if method == "gradcam":
        return g.mean(dim=(2, 3))
    sum_a = a.sum(dim=(2, 3), keepdim=True)
    if method == "gradcam++":  # Chattopadhyay et al. 2018, eq. 19; pytorch-grad-cam's eps 1e-6
        g2 = g * g
        aij = g2 / (2 * g2 + sum_a * (g2 * g) + 1e-6)
        aij = torch.where(g != 0, aij, torch.zeros_like(aij))
        return (g.clamp_min(0) * aij).sum(dim=(2, 3))
    if method == "xgradcam":
        return (g * a / (sum_a + 1e-7)).sum(dim=(2, 3))
    raise ValueError(f"no channel weights for '{method}'")


def projection_2d(activations: torch.Tensor) -> torch.Tensor:
    """EigenCAM's map: each image's activations (h·w points in C dimensions, centred) projected
    on their first principal direction.

    NumPy's SVD, exactly as pytorch-grad-cam's `get_2d_projection` calls it: the direction's
    sign is LAPACK's choice, and a flipped sign would turn the map into its ReLU'd negative,
    so the same routine on the same float32 matrix keeps the maps equal.
    """
    batch = activations.detach().float().cpu().numpy().copy()
    batch[np.isnan(batch)] = 0
    out = []
    for acts in batch:
        points = acts.reshape(acts.shape[0], -1).transpose()
        points = points - points.mean(axis=0)
        _, _, vt = np.linalg.svd(points, full_matrices=True)
        out.append((points @ vt[0, :]).reshape(acts.shape[1:]))
    return torch.from_numpy(np.float32(out)).to(activations.device)


def scale_cam(cams: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """pytorch-grad-cam's `scale_cam_image` for N×h×w maps: each map minus its minimum, over
    (1e-7 + its new maximum), then resized to `size` = (H, W) bilinearly with pixel centres
    aligned (OpenCV's INTER_LINEAR, which `cv2.resize` uses; equal for these sizes, tested)."""
    flat = cams.float().reshape(cams.shape[0], -1)
    flat = flat - flat.amin(dim=1, keepdim=True)
    flat = flat / (1e-7 + flat.amax(dim=1, keepdim=True))
    scaled = flat.reshape(cams.shape)
    if size is not None and tuple(scaled.shape[1:]) != tuple(size):
        scaled = F.interpolate(scaled[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return scaled


def cam_maps_from(method: str, activations: torch.Tensor, grads: torch.Tensor | None,
                  size: tuple[int, int]) -> torch.Tensor:
    """N×H×W maps in [0, 1] from one layer's activations and gradients, through pytorch-grad-cam's
    whole pipeline (`BaseCAM.compute_cam_per_layer` then `aggregate_multi_layers`)."""
    cam = scale_cam(cam_image(method, activations, grads).clamp_min(0), size)
    # Its aggregation over target layers (here one): ReLU, mean over the layers, scale again.
    return scale_cam(cam.clamp_min(0))
