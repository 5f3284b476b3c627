"""Shell completion of option values, without torch.

The shell runs `cnntools` on every Tab press, so these functions read names from static
lists (kept equal to the registries by a test) and checkpoints from their safetensors header
only. Each takes Typer's (ctx, incomplete) and returns the candidates.
"""

from __future__ import annotations

import os

# Kept in step with the architecture and dataset registries (tests/test_completion.py checks
# it); spelled out here so a Tab press imports neither torch nor the registries.
ARCH_NAMES = ("lenet", "simple-cnn", "resnet18", "resnet18-imagenet", "compact-cnn", "vgg16", "mlp", "twoconv-bn")
MODEL_PREFIXES = ("torchvision:", "timm:")
DATA_NAMES = ("digits", "cifar10", "cifar100", "mnist", "fashion-mnist", "fake", "fake-patch")
DEVICES = ("auto", "cpu", "cuda", "mps")
CHECKPOINT_SUFFIX = ".safetensors"
# Layer keywords per command, offered before the checkpoint's own layer names.
LAYER_KEYWORDS = {"saliency": ("auto",), "filters": ("first", "last")}
# The parameters that name a model, by command (the first one given is read).
MODEL_PARAMS = ("models", "model", "checkpoint", "source", "resume")


def _starting(candidates, incomplete: str) -> list[str]:
    return [c for c in candidates if c.startswith(incomplete)]


def _paths(incomplete: str, want_file=lambda name: False) -> list[str]:
    """Folders (with a trailing /) and wanted files under the folder `incomplete` points into."""
    folder, _, stem = incomplete.rpartition("/")
    where = folder or "."
    try:
        entries = sorted(os.scandir(where), key=lambda e: e.name)
    except OSError:
        return []
    out = []
    for entry in entries:
        if not entry.name.startswith(stem) or (entry.name.startswith(".") and not stem.startswith(".")):
            continue
        name = f"{folder}/{entry.name}" if folder else entry.name
        if entry.is_dir():
            out.append(name + "/")
        elif want_file(entry.name):
            out.append(name)
    return out


def complete_arch(incomplete: str) -> list[str]:
    """--arch: registered architectures and the torchvision: and timm: prefixes."""
    return _starting((*ARCH_NAMES, *MODEL_PREFIXES), incomplete)


def complete_data(incomplete: str) -> list[str]:
    """--data: dataset names, then folders."""
    return _starting(DATA_NAMES, incomplete) + _paths(incomplete)


def complete_device(incomplete: str) -> list[str]:
    """--device: auto, cpu, cuda, cuda:N for each visible GPU index hint, mps."""
    count = len([d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",") if d.strip()]) or 1
    return _starting((*DEVICES, *(f"cuda:{i}" for i in range(count))), incomplete)


def complete_model(incomplete: str) -> list[str]:
    """A model argument: .safetensors files (and folders to reach them), torchvision:NAME or timm:NAME."""
    return _paths(incomplete, lambda name: name.endswith(CHECKPOINT_SUFFIX)) + _starting(MODEL_PREFIXES, incomplete)


def _typed_words() -> list[str]:
    """The words of the command line being completed, as the shell hands them over (bash:
    COMP_WORDS; zsh, fish and PowerShell: _TYPER_COMPLETE_ARGS)."""
    import shlex

    text = os.environ.get("COMP_WORDS") or os.environ.get("_TYPER_COMPLETE_ARGS", "")
    try:
        return shlex.split(text)
    except ValueError:  # an unfinished quote
        return text.split()


def _checkpoint_metadata(ctx) -> tuple[dict, dict] | None:
    """(header, metadata) of the first checkpoint already on the command line, or None.

    The words typed so far are read as well as the parsed parameters: while an option still
    waits for its value, the parser leaves the parameters unset (and Typer hands completion
    functions no words)."""
    from cnntools.checkpoint.file_format import decode_metadata, read_header
    from cnntools.core.errors import CnnError

    candidates = []
    for name in MODEL_PARAMS:
        value = ctx.params.get(name)
        candidates += value if isinstance(value, (list, tuple)) else [value]
    for path in [*candidates, *_typed_words()]:
        if isinstance(path, str) and path.endswith(CHECKPOINT_SUFFIX) and os.path.isfile(path):
            try:
                header = read_header(path)[0]
                return header, decode_metadata(header, path)
            except CnnError:
                return None
    return None


def layer_names(header: dict) -> list[str]:
    """Module names of a checkpoint's model, parents first, from its tensor names."""
    from cnntools.checkpoint.file_format import RESUME_PREFIX

    names: dict[str, None] = {}
    for key in header:
        if key == "__metadata__" or key.startswith(RESUME_PREFIX):
            continue
        parts = key.split(".")[:-1]  # the last part names the tensor (weight, bias, running_mean)
        for i in range(1, len(parts) + 1):
            names.setdefault(".".join(parts[:i]), None)
    return list(names)


def complete_layer(ctx, incomplete: str) -> list[str]:
    """--layer: the command's keywords, then the layers of the checkpoint on the command line."""
    keywords = LAYER_KEYWORDS.get(ctx.info_name or "", ())
    found = _checkpoint_metadata(ctx)
    return _starting((*keywords, *(layer_names(found[0]) if found else ())), incomplete)


def complete_target(ctx, incomplete: str) -> list[str]:
    """--target: pred, true, then the class names of the checkpoint on the command line."""
    found = _checkpoint_metadata(ctx)
    classes = found[1].get("classes", []) if found else []
    return _starting(("pred", "true", *classes), incomplete)
