"""Options shared by every command, defined once as `Annotated` aliases.

A command declares `fmt: options.Format = "table"` and gets the same flag, help and
validation as every other command. `VOCABULARY` lists them by name; `DEPRECATED` keeps the
spellings of earlier versions working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional

import typer

from cnntools.cli.completion import complete_arch, complete_data, complete_device, complete_layer
from cnntools.training import config_files

# Help headings of the shared options (cli._Command groups options under them).
PANEL_DATA = "Data"
PANEL_RUN = "Running the model"
PANEL_OUTPUT = "Output"

FormatChoice = Literal["table", "json", "csv"]
DeviceSpec = str
PrecisionChoice = Literal["auto", "fp32", "bf16", "fp16"]
SplitChoice = Literal["train", "val", "test"]

Format = Annotated[
    FormatChoice,
    typer.Option("--format", rich_help_panel=PANEL_OUTPUT, help="Output: table for people, json (one document) or csv on stdout."),
]
# Commands whose output is a stream of records (train's epochs) also offer jsonl.
StreamFormat = Annotated[
    Literal["table", "jsonl", "json", "csv"],
    typer.Option("--format", rich_help_panel=PANEL_OUTPUT, help="Records: table (as they complete), jsonl (one object per record as it completes), json or csv."),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", rich_help_panel=PANEL_OUTPUT, help="Silence progress and notes on stderr.")]
Debug = Annotated[
    bool, typer.Option("--debug", rich_help_panel=PANEL_OUTPUT, help="Show the full traceback on errors (also CNNTOOLS_DEBUG=1).")
]

# ---------------------------------------------------------------------------- running a model
Device = Annotated[
    DeviceSpec,
    typer.Option("--device", rich_help_panel=PANEL_RUN, metavar="DEVICE", autocompletion=complete_device, help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."),
]
Precision = Annotated[
    PrecisionChoice,
    typer.Option(
        "--precision", rich_help_panel=PANEL_RUN,
        help="auto: mixed precision only where the hardware runs it natively; or force fp32, bf16, fp16.",
    ),
]
Seed = Annotated[
    int, typer.Option("--seed", rich_help_panel=PANEL_RUN, metavar="N", help="Seed for Python, NumPy and torch (same seed, same device: same numbers).")
]
BatchSize = Annotated[
    int,
    typer.Option(
        "--batch-size", rich_help_panel=PANEL_RUN, metavar="N",
        help="Images per batch (train: per weight update, the global batch split among the processes of a distributed run).",
    ),
]
Threads = Annotated[
    Optional[int],
    typer.Option(
        "--threads", rich_help_panel=PANEL_RUN, metavar="N",
        help="CPU threads for torch and image decoding (default: $CNNTOOLS_THREADS, else the cores this "
        "process may use: its CPU affinity and cgroup CPU quota).",
        show_default=False,
    ),
]
Data = Annotated[
    Optional[str],
    typer.Option(
        "--data", rich_help_panel=PANEL_DATA, metavar="DATA", autocompletion=complete_data,
        help="Dataset: digits (embedded), cifar10, cifar100, mnist, fashion-mnist, fake, fake-patch, or a folder path "
        "(commands that take a model: default the model's own).",
    ),
]
DataDir = Annotated[
    Optional[str], typer.Option("--data-dir", rich_help_panel=PANEL_DATA, metavar="DIR", help="Where the dataset's files are (default ./data).")
]
Split = Annotated[SplitChoice, typer.Option("--split", rich_help_panel=PANEL_DATA, help="Which split: train, val or test.")]
Download = Annotated[bool, typer.Option("--download", rich_help_panel=PANEL_DATA, help="Fetch a torchvision dataset (or the pretrained weights of timm:NAME or torchvision:NAME) that is not on disk yet.")]
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
        help="Constructor arguments of your own model, timm:NAME or torchvision:NAME: a JSON object or key=value,... "
        "(in_channels, num_classes, image_size are passed when the signature names them).",
    ),
]

# Training options that train and lr-find share: the model, the data it sees and the optimizer.
Arch = Annotated[
    str,
    typer.Option("--arch", metavar="ARCH", autocompletion=complete_arch,
                 help="Architecture: a registered name (--list-archs), torchvision:NAME, timm:NAME, or your own model "
                 "as FILE.py:NAME or package.module:NAME (an nn.Module class or a function returning one)."),
]

Batchnorm = Annotated[bool, typer.Option("--batchnorm", help="lenet: BatchNorm after each conv.")]

OutputActivation = Annotated[
    Literal["none", "relu", "tanh"],
    typer.Option("--output-activation", help="lenet: activation on the output layer (none keeps raw logits)."),
]

Pretrained = Annotated[
    bool, typer.Option("--pretrained", help="Start from ImageNet weights: torchvision's from the local torch cache, "
                       "timm's from the Hugging Face cache.")
]

ValSplit = Annotated[
    float, typer.Option("--val-split", help="Fraction of train held out for validation when the data has no val split (0: none).")
]

ImageSize = Annotated[
    Optional[int], typer.Option("--image-size", help="Input side in pixels (default: the data's own, or the architecture's usual size).")
]

Optimizer = Annotated[Literal["sgd", "adam", "adamw"], typer.Option("--opt", help="Optimizer.")]

LearningRate = Annotated[Optional[float], typer.Option("--lr", help="Learning rate (default 0.01 for sgd, 0.001 for adam/adamw).")]

Momentum = Annotated[float, typer.Option("--momentum", help="SGD momentum.")]

WeightDecay = Annotated[float, typer.Option("--weight-decay", help="Weight decay (L2 for sgd/adam, decoupled for adamw).")]

Nesterov = Annotated[bool, typer.Option("--nesterov", help="Nesterov momentum (sgd).")]

Augment = Annotated[
    str,
    typer.Option(
        "--augment", metavar="SPEC",
        help="Batched augmentation, e.g. flip,crop:4,jitter:0.4,rotate:15,rrc:0.08; none; "
        "auto: rotate:10,crop:1 for digit-like data (digits/mnist, one channel or at most 28 px), none elsewhere; "
        "a flip warns when class names suggest an orientation (left/right, deg...).",
    ),
]

Normalize = Annotated[
    str, typer.Option("--normalize", metavar="SPEC", help="dataset (train mean/std), half (0.5/0.5), imagenet, none, or MEAN,STD.")
]

ClassWeights = Annotated[
    str, typer.Option("--class-weights", metavar="SPEC", help="Loss weights: none, auto (balanced by class counts), smooth:ALPHA "
                      "(weights ∝ (1/count)^ALPHA; 0.5 halves the imbalance's effect) or one number per class.")
]

LabelSmoothing = Annotated[float, typer.Option("--label-smoothing", help="Label smoothing of the cross-entropy (0..1).")]


# A run written down as TOML (train and lr-find read and write the same files).
ConfigFile = Annotated[
    Optional[str],
    typer.Option("--config", callback=config_files.load_config, is_eager=True, metavar="FILE",
                 help="Read the options from FILE.toml (one key per option, e.g. batch-size = 64), or replay the "
                 "options stored in a checkpoint (FILE.safetensors); options given on the command line win."),
]
PrintConfig = Annotated[
    bool, typer.Option("--print-config", help="Write the fully resolved options as TOML to stdout and exit (for --config).")
]


# ---------------------------------------------------------------------------- inputs and outputs
Output = Annotated[
    Optional[str],
    typer.Option(
        "--output", "-o", rich_help_panel=PANEL_OUTPUT, metavar="FILE",
        help="The main file the command writes: the checkpoint (train), the predictions CSV (eval), "
        "otherwise the figure (PNG, SVG or PDF by extension); - for stdout.",
    ),
]
Indices = Annotated[
    Optional[str], typer.Option("--indices", "-i", metavar="LIST", help="Dataset images by index: 0,5,7 or 0-7.")
]
Num = Annotated[
    Optional[int],
    typer.Option("--num", "-n", metavar="N", help="How many: images (saliency, the export check), points (tsne), repeated layers (rf-calc), top losses (report)."),
]
TopK = Annotated[
    int,
    typer.Option(
        "--top-k", metavar="K",
        help="Keep the K best: top-k accuracy and classes per image (eval), most activating images per filter (filters).",
    ),
]
Images = Annotated[
    Optional[list[str]],
    typer.Option(
        "--image", metavar="PATH...",
        help="Image files or folders (every image inside, sorted), several after one --image or the flag repeated.",
    ),
]
Save = Annotated[
    Optional[str],
    typer.Option("--save", rich_help_panel=PANEL_OUTPUT, metavar="FILE", help="Write the raw tensors as safetensors (- for stdout)."),
]
PerClass = Annotated[bool, typer.Option("--per-class/--no-per-class", help="Show the per-class table.")]
PerClassWorst = Annotated[bool, typer.Option("--per-class/--no-per-class", help="One image per true class: its worst mistake.")]
Layer = Annotated[
    Optional[str],
    typer.Option("--layer", "-l", metavar="LAYER", autocompletion=complete_layer,
                 help="Layer name (see --list-layers), or a keyword the command names."),
]
Layers = Annotated[
    Optional[list[str]],
    typer.Option("--layer", "-l", metavar="LAYER", autocompletion=complete_layer,
                 help="Layer name (see --list-layers), or a keyword the command names; repeatable."),
]

# ---------------------------------------------------------------------------- the run context


@dataclass
class Run:
    """What a model-running command's shared options come to (made by `start_run`).

    `device` and `precision` stay None until `ready()`: a command checks its own options
    first, so a wrong flag answers before torch is imported.
    """

    device_spec: str = "auto"
    precision_spec: str = "auto"
    seed: int = 0
    device: Any = None  # a torch.device, after ready()
    precision: Optional[str] = None  # fp32, bf16 or fp16, after ready()
    seeded: bool = False

    def seed_all(self) -> "Run":
        """Seed Python, NumPy and torch with --seed (once)."""
        if not self.seeded:
            from cnntools.core import runtime

            runtime.seed_everything(self.seed)
            self.seeded = True
        return self

    def ready(self) -> "Run":
        """Seed (see `seed_all`), then resolve --device and --precision (imports torch)."""
        from cnntools.core import runtime

        self.seed_all()
        if self.device is None:
            self.device = runtime.resolve_device(self.device_spec)
            self.precision = runtime.resolve_precision(self.precision_spec, self.device)
        return self


def start_run(*, quiet: bool, debug: bool, threads: Optional[int] = None, device: str = "auto",
              precision: str = "auto", seed: int = 0) -> Run:
    """The opening every model-running command shares: stderr chatter and tracebacks as
    --quiet/--debug say, torch's and the decoders' threads as --threads says; returns the Run
    whose `ready()` seeds and resolves the device and precision."""
    from cnntools.core import runtime
    from cnntools.output import emitter as output

    output.configure(quiet=quiet, debug=debug)
    runtime.use_threads(threads)
    return Run(device_spec=device, precision_spec=precision, seed=seed)


# ---------------------------------------------------------------------------- the "runs a model" bundle

# The options every command that runs a model over a dataset takes, in --help order, with their
# usual defaults; `model_run_options` adds them to a command (the way sqlite-utils'
# `output_options` decorator adds its options), so they are declared here once.
MODEL_RUN_OPTIONS: dict[str, tuple[Any, Any]] = {
    "data": (Data, None), "data_dir": (DataDir, None), "split": (Split, "test"), "download": (Download, False),
    "batch_size": (BatchSize, 256), "device": (Device, "auto"), "threads": (Threads, None),
    "precision": (Precision, "auto"), "seed": (Seed, 0), "fmt": (Format, "table"), "quiet": (Quiet, False),
    "trust_code": (TrustCode, False), "debug": (Debug, False),
}


@dataclass
class ModelRunOptions:
    """The values of MODEL_RUN_OPTIONS for one invocation; `start()` is the opening every such
    command shares (see `start_run`)."""

    data: Optional[str]
    data_dir: Optional[str]
    split: str
    download: bool
    batch_size: int
    device: str
    threads: Optional[int]
    precision: str
    seed: int
    fmt: str
    quiet: bool
    trust_code: bool
    debug: bool

    def start(self) -> Run:
        return start_run(quiet=self.quiet, debug=self.debug, threads=self.threads, device=self.device,
                         precision=self.precision, seed=self.seed)


def model_run_options(**defaults):
    """Decorator: the command takes MODEL_RUN_OPTIONS (after its own options; `defaults`
    overrides their defaults, e.g. batch_size=1) and receives their values as one argument
    `opts: ModelRunOptions`. Typer reads the command's signature, so the decorator gives the
    wrapper one with the shared parameters in place of `opts`."""
    import functools
    import inspect
    import typing

    unknown = set(defaults) - set(MODEL_RUN_OPTIONS)
    if unknown:
        raise TypeError(f"not a model-run option: {sorted(unknown)}")

    def decorate(func):
        hints = typing.get_type_hints(func, include_extras=True)
        own = [p.replace(annotation=hints.get(p.name, p.annotation))
               for p in inspect.signature(func).parameters.values() if p.name != "opts"]
        shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=alias,
                                    default=defaults.get(name, default))
                  for name, (alias, default) in MODEL_RUN_OPTIONS.items()]

        @functools.wraps(func)
        def command(*args, **kwargs):
            values = {name: kwargs.pop(name, defaults.get(name, default)) for name, (_, default) in MODEL_RUN_OPTIONS.items()}
            return func(*args, opts=ModelRunOptions(**values), **kwargs)

        command.__signature__ = inspect.Signature(own + shared, return_annotation=None)
        command.__annotations__ = {p.name: p.annotation for p in own + shared} | {"return": None}
        return command

    return decorate


# Every shared option by its long name: the one vocabulary (README "Options"). A test walks
# the command tree and checks each command's option against these definitions.
VOCABULARY = {
    "--format": [Format, StreamFormat], "--quiet": [Quiet], "--debug": [Debug],
    "--device": [Device], "--precision": [Precision], "--threads": [Threads], "--seed": [Seed], "--batch-size": [BatchSize],
    "--data": [Data], "--data-dir": [DataDir], "--split": [Split], "--download": [Download],
    "--output": [Output], "--indices": [Indices], "--num": [Num], "--top-k": [TopK], "--image": [Images],
    "--save": [Save], "--per-class": [PerClass, PerClassWorst], "--layer": [Layer, Layers],
}

# Spellings earlier versions (and their README) taught, per command: old → current. They keep
# working, with a one-line note on stderr (see `rewrite_deprecated`), and are in no help text.
DEPRECATED = {
    "tsne": {"--n": "--num", "--plot": "--output"},
    "eval": {"--predictions": "--output"},
    "confusion": {"-k": "--most-confused", "--plot": "--output"},
    "saliency": {"--save-maps": "--save"},
    "featmaps": {"--index": "--indices"},
    "filters": {"-k": "--top-k"},
    "rf-calc": {"--num-layers": "--num", "-l": "--layers"},
    "conv-calc": {"-i": "--input", "-l": "--layers"},
    "dataset-stats": {"--per-class": "--grid-per-class"},
    "curves": {"-l": "--label"},
}

Channels = Annotated[
    Optional[str],
    typer.Option("--channels", metavar="LIST", help="Exactly these channels, in this order: 0-7 or 3,0,5 (default: the most active)."),
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def split_image_files(positional: list[str], images: list[str] | None) -> tuple[list[str], list[str] | None]:
    """Let `--image a.png b.png` name several files after one flag.

    Click gives an option one value, so `b.png` lands among the positional MODEL arguments;
    when --image is used, positional arguments that are image files or folders move back to it.
    """
    import os

    if not images:
        return positional, images
    moved = [p for p in positional if p.lower().endswith(IMAGE_SUFFIXES) or os.path.isdir(p)]
    return [p for p in positional if p not in moved], list(images) + moved


def expand_image_paths(paths: list[str]) -> list[str]:
    """Image files as given, and for each folder every image file inside it (recursive,
    sorted, hidden names left out; files that cannot be read are skipped with a warning)."""
    from cnntools.data.images import image_paths
    from cnntools.output.emitter import warn

    return [path for path, _ in image_paths(paths, lambda where, message: warn(f"skipped {message}"))]


def rewrite_deprecated(command: str, args: list[str], takes_value: set[str], notes: bool = True) -> list[str]:
    """`args` with this command's deprecated spellings replaced by the current ones, and a
    one-line note on stderr for each one used (none under -q/--quiet).

    `takes_value`: the command's options that take a value, so a value that happens to look
    like an old flag (`--layer -k`) is left alone; `--` ends the options.
    """
    import sys

    renames = DEPRECATED.get(command)
    if not renames:
        return args
    quiet = not notes or "-q" in args or "--quiet" in args
    out: list[str] = []
    expect_value = False
    for i, arg in enumerate(args):
        if expect_value:
            out.append(arg)
            expect_value = False
            continue
        if arg == "--":
            out.extend(args[i:])
            break
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        new = renames.get(name)
        if new is None and not arg.startswith("--") and len(arg) > 2 and arg[:2] in renames:
            name, eq, value, new = arg[:2], "=", arg[2:], renames[arg[:2]]  # an attached value: -k8
        if new is not None:
            if not quiet:
                print(f"Note: {name} is deprecated; use {new} ({command}).", file=sys.stderr)
            arg = f"{new}={value}" if eq else new
            name = new
        out.append(arg)
        expect_value = not eq and name in takes_value
    return out
# ---------------------------------------------------------------------------- numeric ranges

# The valid range of numeric options, by flag: (lowest, highest, lowest excluded). cli.py checks
# every command's numbers against it before the command starts, so `--lr nan` or `--seed -1`
# stops with the range in the message instead of failing (or allocating) halfway through.
# Every float option, listed or not, must be finite.
NUMBER_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "--seed": (0, 2**32 - 1, False),  # NumPy's seed range (torch's is wider)
    "--image-size": (1, 4096, False),  # 4096² RGB is 48 MiB an image before a batch is formed
    "--batch-size": (1, 2**20, False),
    "--threads": (1, 4096, False),
    "--epochs": (1, 10**6, False),
    "--lr": (0, None, True),
    "--momentum": (0, 1, False),
    "--weight-decay": (0, None, False),
    "--warmup": (0, None, False),
    "--gamma": (0, None, True),
    "--step-size": (0, None, False),
    "--val-split": (0, 1, False),
    "--perplexity": (0, None, True),
    "--start-lr": (0, None, True),  # lr-find
    "--end-lr": (0, None, True),
    "--steps": (10, 10**6, False),  # lr-find: fewer steps cannot show a curve
    "--diverge": (1, None, True),
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
