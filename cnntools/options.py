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


# ---------------------------------------------------------------------------- numeric ranges

# The valid range of numeric options, by flag: (lowest, highest, lowest excluded). cli.py checks
# every command's numbers against it before the command starts, so `--lr nan` or `--seed -1`
# stops with the range in the message instead of failing (or allocating) halfway through.
# Every float option, listed or not, must be finite.
NUMBER_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "--seed": (0, 2**32 - 1, False),  # NumPy's seed range (torch's is wider)
    "--image-size": (1, 4096, False),  # 4096² RGB is 48 MiB an image before a batch is formed
    "--batch-size": (1, 2**20, False),
    "--epochs": (1, 10**6, False),
    "--lr": (0, None, True),
    "--momentum": (0, 1, False),
    "--weight-decay": (0, None, False),
    "--warmup": (0, None, False),
    "--gamma": (0, None, True),
    "--step-size": (0, None, False),
    "--val-split": (0, 1, False),
    "--perplexity": (0, None, True),
}


def _range_text(low, high, open_low: bool) -> str:
    def num(v):
        return f"{v:,}" if isinstance(v, int) and abs(v) >= 10**5 else f"{v:g}" if isinstance(v, float) else str(v)

    if low is not None and high is not None:
        return f"from {num(low)} to {num(high)}" if not open_low else f"> {num(low)} and <= {num(high)}"
    if low is not None:
        return f"{'>' if open_low else '>='} {num(low)}"
    return f"<= {num(high)}"


def check_number(flag: str, value) -> None:
    """Raise typer.BadParameter (usage error, exit 2) when `value` is not finite or out of `flag`'s range."""
    import math

    if isinstance(value, (list, tuple)):
        for item in value:
            check_number(flag, item)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    low, high, open_low = NUMBER_RANGES.get(flag, (None, None, False))
    wanted = _range_text(low, high, open_low) if (low, high) != (None, None) else ""
    if isinstance(value, float) and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number; expected {'a number ' + wanted if wanted else 'a finite number'}",
                                 param_hint=f"'{flag}'")
    if (low is not None and (value < low or (open_low and value == low))) or (high is not None and value > high):
        raise typer.BadParameter(f"{value} is out of range; expected a number {wanted}", param_hint=f"'{flag}'")


def with_checked_numbers(func):
    """Wrap a command so that every numeric option is checked (check_number) before it runs."""
    import functools
    import typing

    flags = {}
    for name, hint in typing.get_type_hints(func, include_extras=True).items():
        for info in getattr(hint, "__metadata__", ()):
            decls = [info.default] if isinstance(getattr(info, "default", None), str) else []
            decls += list(getattr(info, "param_decls", None) or ())
            long = [d for d in decls if isinstance(d, str) and d.startswith("--")]
            if long:
                flags[name] = long[0]

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        for name, value in kwargs.items():
            if name in flags:
                check_number(flags[name], value)
        return func(*args, **kwargs)

    return wrapper
