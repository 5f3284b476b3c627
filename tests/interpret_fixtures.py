"""Small trained checkpoints for the interpretation tests (confusion, saliency, featmaps, filters).

Trained here with a plain loop over ready tensors for a few seconds, then written with
`cnntools.checkpoint.save_checkpoint`, so the tests depend only on the data, models and
checkpoint layers. `short_digits_run` is the other kind: a real `Trainer` run whose file
carries its history and options (info, report).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


# The methods cnntools computes itself (cnntools.interpret.cams) and the pytorch-grad-cam class
# each is checked against.
PYTORCH_GRAD_CAM_CLASS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
                          "hirescam": "HiResCAM", "layercam": "LayerCAM", "eigencam": "EigenCAM"}


def reference_maps(model, layer: str, x: torch.Tensor, targets, method: str) -> torch.Tensor:
    """pytorch-grad-cam's maps: its class on the plain model (whole backward pass, input and
    weights requiring grad), the way its README calls it."""
    import numpy as np
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cnntools.interpret import saliency as sal

    cam_class = getattr(pytorch_grad_cam, PYTORCH_GRAD_CAM_CLASS[method])
    with sal._relu_not_inplace(model), cam_class(model=model, target_layers=[sal.get_layer(model, layer)]) as cam:
        maps = cam(input_tensor=x.clone().requires_grad_(True), targets=[ClassifierOutputTarget(t) for t in targets])
    return torch.from_numpy(np.asarray(maps, dtype=np.float32))


def train_checkpoint(path, data: str, arch: str, image_size: int, channels: int, steps: int, seed: int = 0,
                     batch_size: int = 64, lr: float = 2e-3):
    """Train `arch` on `data`'s train split for `steps` Adam steps and save it at `path`."""
    # One thread: on a shared 2-core machine, two threads of tiny convolutions mostly wait
    # on each other (measured 5x slower under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(path, data, arch, image_size, channels, steps, seed, batch_size, lr)
    finally:
        torch.set_num_threads(threads)


def _train(path, data, arch, image_size, channels, steps, seed, batch_size, lr):
    from cnntools.checkpoint import CheckpointMeta, DataRecipe, save_checkpoint
    from cnntools.data import load_split
    from cnntools.models import create_model

    torch.manual_seed(seed)
    train = load_split(data, "train").resized(image_size, channels=channels)
    classes = list(train.classes)
    model = create_model(arch, in_channels=channels, image_size=image_size, num_classes=len(classes))
    x_all = train.images.float() / 255.0
    mean = x_all.mean(dim=(0, 2, 3)).tolist()
    std = x_all.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    x_all = (x_all - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    y_all = train.labels
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y_all), (batch_size,), generator=g)
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    meta = CheckpointMeta(
        arch={"arch": arch, "in_channels": channels, "image_size": image_size, "num_classes": len(classes)},
        classes=classes, mean=mean, std=std, data=DataRecipe(data),
    )
    save_checkpoint(str(path), model, meta)
    return path


_CACHE: dict[str, str] = {}


def cached_checkpoint(kind: str) -> str:
    """One small checkpoint per kind and test process, shared by the interpretation tests.

    `patch`: simple-cnn on fake-patch 3×32×32 (the saliency localisation data), 30 Adam steps.
    `digits`: simple-cnn on digits 1×16×16, 150 Adam steps (confident, ~97% test accuracy).
    `digits-lenet`: lenet on digits 1×32×32, 60 Adam steps (another input size on the same data).
    """
    import tempfile
    from pathlib import Path

    if kind not in _CACHE:
        folder = Path(tempfile.mkdtemp(prefix="cnntools-interpret-"))
        if kind == "patch":
            path = train_checkpoint(folder / "patch.safetensors", "fake-patch:400,size=32", "simple-cnn", 32, 3, 30, batch_size=32)
        elif kind == "digits":
            path = train_checkpoint(folder / "digits.safetensors", "digits", "simple-cnn", 16, 1, 150)
        elif kind == "digits-lenet":
            path = train_checkpoint(folder / "digits-lenet.safetensors", "digits", "lenet", 32, 1, 60)
        else:
            raise ValueError(kind)
        _CACHE[kind] = str(path)
    return _CACHE[kind]


def short_digits_run(path):
    """A real 3-epoch `Trainer` run on digits at 8×8, fp32 on the CPU, written to `path` (its
    file records the history and options): returns (history, trainer)."""
    from cnntools.output import emitter as output
    from cnntools.training import TrainConfig, Trainer, load_training_data

    output.configure(quiet=True)
    try:
        cfg = TrainConfig(image_size=8, precision="fp32", device="cpu", epochs=3, lr=0.01)
        train, val, _ = load_training_data(cfg)
        trainer = Trainer(cfg, train, val, output=str(path))
        return trainer.run(), trainer
    finally:
        output.configure()
