"""Options shared by every command, defined once as `Annotated` aliases.

A command declares `fmt: options.Format = "table"` and gets the same flag, help and
validation as every other command.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

FormatChoice = Literal["table", "json", "csv"]
DeviceSpec = str
PrecisionChoice = Literal["auto", "fp32", "bf16", "fp16"]
SplitChoice = Literal["train", "val", "test"]

Format = Annotated[
    FormatChoice,
    typer.Option("--format", help="Output: table for people, json (one document) or csv on stdout."),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Silence progress and notes on stderr.")]
Debug = Annotated[
    bool, typer.Option("--debug", help="Show the full traceback on errors (also CNNTOOLS_DEBUG=1).")
]
Device = Annotated[
    DeviceSpec,
    typer.Option("--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."),
]
Precision = Annotated[
    PrecisionChoice,
    typer.Option(
        "--precision",
        help="auto: mixed precision only where the hardware runs it natively; or force fp32, bf16, fp16.",
    ),
]
Threads = Annotated[
    Optional[int],
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads for torch and image decoding (default: $CNNTOOLS_THREADS, else the cores this "
        "process may use: its CPU affinity and cgroup CPU quota).",
        show_default=False,
    ),
]
Seed = Annotated[int, typer.Option("--seed", help="Seed for Python, NumPy and torch (same seed, same device: same numbers).")]
Output = Annotated[
    Optional[str], typer.Option("--output", "-o", help="Write the figure or result here (PNG, SVG or PDF by extension; - for stdout).")
]
Data = Annotated[
    str,
    typer.Option(
        "--data",
        help="Dataset: digits (embedded), cifar10, cifar100, mnist, fashion-mnist, fake, fake-patch, or a folder path.",
    ),
]
DataDir = Annotated[
    Optional[str], typer.Option("--data-dir", help="Where the dataset's files are (default ./data).")
]
Split = Annotated[SplitChoice, typer.Option("--split", help="Which split: train, val or test.")]
Download = Annotated[bool, typer.Option("--download", help="Fetch a torchvision dataset that is not on disk yet.")]

# Training options that train and lr-find share: the model, the data it sees and the optimizer.
Arch = Annotated[str, typer.Option("--arch", help="Architecture (see --list-archs, or --arch help).")]

Batchnorm = Annotated[bool, typer.Option("--batchnorm", help="lenet: BatchNorm after each conv.")]

OutputActivation = Annotated[
    Literal["none", "relu", "tanh"],
    typer.Option("--output-activation", help="lenet: activation on the output layer (none keeps raw logits)."),
]

Pretrained = Annotated[
    bool, typer.Option("--pretrained", help="Start from torchvision's ImageNet weights (local torch cache only).")
]

ValSplit = Annotated[
    float, typer.Option("--val-split", help="Fraction of train held out for validation when the data has no val split (0: none).")
]

ImageSize = Annotated[
    Optional[int], typer.Option("--image-size", help="Input side in pixels (default: the data's own, or the architecture's usual size).")
]

TrainBatchSize = Annotated[
    int,
    typer.Option("--batch-size", help="Images per weight update: the global batch, split evenly among the processes of a "
                 "distributed run (the learning rate is not rescaled)."),
]

Optimizer = Annotated[Literal["sgd", "adam", "adamw"], typer.Option("--opt", help="Optimizer.")]

LearningRate = Annotated[Optional[float], typer.Option("--lr", help="Learning rate (default 0.01 for sgd, 0.001 for adam/adamw).")]

Momentum = Annotated[float, typer.Option("--momentum", help="SGD momentum.")]

WeightDecay = Annotated[float, typer.Option("--weight-decay", help="Weight decay (L2 for sgd/adam, decoupled for adamw).")]

Nesterov = Annotated[bool, typer.Option("--nesterov", help="Nesterov momentum (sgd).")]

Augment = Annotated[
    str,
    typer.Option(
        "--augment",
        help="Batched augmentation, e.g. flip,crop:4,jitter:0.4,rotate:15,rrc:0.08; none; "
        "auto: rotate:10,crop:1 for digits/mnist, none elsewhere.",
    ),
]

Normalize = Annotated[
    str, typer.Option("--normalize", help="dataset (train mean/std), half (0.5/0.5), imagenet, none, or MEAN,STD.")
]

ClassWeights = Annotated[
    str, typer.Option("--class-weights", help="Loss weights: none, auto (balanced by class counts), smooth:ALPHA "
                      "(weights ∝ (1/count)^ALPHA; 0.5 halves the imbalance's effect) or one number per class.")
]

LabelSmoothing = Annotated[float, typer.Option("--label-smoothing", help="Label smoothing of the cross-entropy (0..1).")]

Indices = Annotated[Optional[str], typer.Option("--indices", "-i", help="Dataset images by index: 0,5,7 or 0-7.")]

Channels = Annotated[
    Optional[str],
    typer.Option("--channels", help="Exactly these channels, in this order: 0-7 or 3,0,5 (default: the most active)."),
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def split_image_files(positional: list[str], images: list[str] | None) -> tuple[list[str], list[str] | None]:
    """Let `--image a.png b.png` name several files after one flag.

    Click gives an option one value, so `b.png` lands among the positional MODEL arguments;
    when --image is used, positional arguments that are image files move back to it.
    """
    if not images:
        return positional, images
    import os

    moved = [p for p in positional if p.lower().endswith(IMAGE_SUFFIXES) or os.path.isdir(p)]  # folders of images too
    return [p for p in positional if p not in moved], list(images) + moved
