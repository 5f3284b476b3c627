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
Download = Annotated[bool, typer.Option("--download", help="Fetch a torchvision dataset (or timm:NAME's pretrained weights) that is not on disk yet.")]
TrustCode = Annotated[
    bool,
    typer.Option(
        "--trust-code",
        envvar="CNNTOOLS_TRUST_CODE",
        show_envvar=False,
        help="Run the Python file or module a checkpoint's model is defined in (your own model); "
        "also CNNTOOLS_TRUST_CODE=1. Only for code you trust.",
    ),
]
ArchArgs = Annotated[
    Optional[str],
    typer.Option(
        "--arch-args",
        metavar="ARGS",
        help="Constructor arguments of your own model or of timm:NAME: a JSON object or key=value,... "
        "(in_channels, num_classes, image_size are passed when the signature names them).",
    ),
]

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
    moved = [p for p in positional if p.lower().endswith(IMAGE_SUFFIXES)]
    return [p for p in positional if p not in moved], list(images) + moved
