"""Output sizes of convolution, pooling and transposed-convolution layers (PyTorch's rules).

Pure Python: no torch import, so `cnntools conv-calc` answers instantly. Each size is
computed per spatial dimension exactly as `torch.nn.Conv2d`, `MaxPool2d`, `AvgPool2d` and
`ConvTranspose2d` compute it, including `ceil_mode`'s rule that a last pooling window
starting inside the right padding is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cnntools.core.errors import UsageError

KINDS = ("conv", "maxpool", "avgpool", "convtranspose")

# Spellings accepted in a --layers spec, mapped to the canonical kind.
_KIND_ALIASES = {
    "conv": "conv",
    "c": "conv",
    "maxpool": "maxpool",
    "max": "maxpool",
    "pool": "maxpool",
    "mp": "maxpool",
    "avgpool": "avgpool",
    "avg": "avgpool",
    "ap": "avgpool",
    "convt": "convtranspose",
    "convtranspose": "convtranspose",
    "deconv": "convtranspose",
    "upconv": "convtranspose",
}

LAYER_SPEC_HELP = (
    "Layers separated by commas: KIND[K] then dash-separated options. KIND is conv, maxpool "
    "(pool), avgpool or convT; K the kernel size; options sN stride, pN padding, dN dilation, "
    "cN output channels, opN output padding (convT), ceil (ceil_mode for pools). Pools default "
    "to stride = kernel. Example: 'conv5-c6,maxpool2,conv5-c16,maxpool2'."
)


@dataclass(frozen=True)
class Layer:
    """One layer's geometry, as the arguments of its PyTorch module."""

    kind: str = "conv"
    kernel: int = 3
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    output_padding: int = 0
    ceil_mode: bool = False
    out_channels: int | None = None

    @property
    def effective_kernel(self) -> int:
        """Span of a dilated kernel: d*(k-1)+1."""
        return self.dilation * (self.kernel - 1) + 1

    def describe(self) -> str:
        """A short label such as `conv 5x5 s1 p0` for tables."""
        name = {"convtranspose": "convT"}.get(self.kind, self.kind)
        parts = [f"{name} {self.kernel}x{self.kernel}", f"s{self.stride}", f"p{self.padding}"]
        if self.dilation != 1:
            parts.append(f"d{self.dilation}")
        if self.output_padding:
            parts.append(f"op{self.output_padding}")
        if self.ceil_mode:
            parts.append("ceil")
        return " ".join(parts)


@dataclass
class SizeStep:
    """The output size along one dimension, the formula that gave it and what it dropped."""

    size: int
    formula: str
    dropped: int = 0  # input pixels (not padding) that no window covers at the far edge
    notes: list[str] = field(default_factory=list)


def validate(layer: Layer) -> None:
    """Raise UsageError for parameters PyTorch would reject."""
    if layer.kind not in KINDS:
        raise UsageError(f"unknown layer type '{layer.kind}' (use one of: {', '.join(KINDS)})")
    if layer.kernel < 1:
        raise UsageError(f"kernel size must be at least 1 (got {layer.kernel})")
    if layer.stride < 1:
        raise UsageError(f"stride must be at least 1 (got {layer.stride})")
    if layer.padding < 0:
        raise UsageError(f"padding cannot be negative (got {layer.padding})")
    if layer.dilation < 1:
        raise UsageError(f"dilation must be at least 1 (got {layer.dilation})")
    if layer.out_channels is not None and layer.out_channels < 1:
        raise UsageError(f"channels must be at least 1 (got {layer.out_channels})")
    if layer.kind == "avgpool" and layer.dilation != 1:
        raise UsageError("avgpool has no dilation (PyTorch's AvgPool2d); drop the dilation")
    if layer.kind in ("maxpool", "avgpool") and layer.padding > layer.kernel // 2:
        raise UsageError(
            f"{layer.kind} padding {layer.padding} is more than half the kernel {layer.kernel}; "
            f"PyTorch allows at most {layer.kernel // 2}"
        )
    if layer.kind == "convtranspose":
        if layer.output_padding < 0 or layer.output_padding >= max(layer.stride, layer.dilation):
            raise UsageError(
                f"output padding must be smaller than stride or dilation "
                f"(got {layer.output_padding} with stride {layer.stride}, dilation {layer.dilation})"
            )
    elif layer.output_padding:
        raise UsageError("output padding applies to transposed convolutions (convT) only")
    if layer.ceil_mode and layer.kind not in ("maxpool", "avgpool"):
        raise UsageError("ceil mode applies to pooling layers only")


def output_length(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Floor-mode output length along one dimension: floor((size + 2p - d(k-1) - 1) / s) + 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _kernel_term(layer: Layer) -> str:
    if layer.dilation == 1:
        return str(layer.kernel)
    return f"({layer.dilation}*({layer.kernel}-1)+1)"


def output_size(size: int, layer: Layer) -> SizeStep:
    """Output length of `layer` along one dimension of length `size` (PyTorch's arithmetic)."""
    validate(layer)
    k_eff = layer.effective_kernel
    s, p = layer.stride, layer.padding
    if layer.kind == "convtranspose":
        out = (size - 1) * s - 2 * p + k_eff + layer.output_padding
        formula = f"({size} - 1)*{s} - 2*{p} + {_kernel_term(layer)} + {layer.output_padding} = {out}"
        return SizeStep(out, formula)
    span = size + 2 * p - k_eff
    if layer.ceil_mode and span >= 0:
        out = -(-span // s) + 1
        formula = f"ceil(({size} - {_kernel_term(layer)} + 2*{p}) / {s}) + 1 = {out}"
        notes = []
        # PyTorch drops a last window that would start inside the right padding.
        if (out - 1) * s >= size + p:
            out -= 1
            formula += f" - 1 = {out}"
            notes.append("last window would start in the right padding: dropped (PyTorch's ceil_mode rule)")
        return SizeStep(out, formula, 0, notes)
    out = span // s + 1
    formula = f"floor(({size} - {_kernel_term(layer)} + 2*{p}) / {s}) + 1 = {out}"
    # Input pixels after the last window (none to count when not even one window fits).
    dropped = max(0, span - (out - 1) * s - p) if span >= 0 else 0
    return SizeStep(out, formula, dropped)


def parameter_count(layer: Layer, in_channels: int | None) -> int | None:
    """Weights plus biases of a conv/convT layer (PyTorch's default bias=True); 0 for pools."""
    if layer.kind in ("maxpool", "avgpool"):
        return 0
    if in_channels is None or layer.out_channels is None:
        return None
    return in_channels * layer.out_channels * layer.kernel * layer.kernel + layer.out_channels


@dataclass
class ChainRow:
    index: int
    layer: Layer
    in_shape: tuple[int | None, int, int]
    out_shape: tuple[int | None, int, int]
    params: int | None
    steps: tuple[SizeStep, SizeStep]


def run_chain(height: int, width: int, layers: list[Layer], in_channels: int | None = None) -> list[ChainRow]:
    """Shapes after every layer of a chain; UsageError when a size stops being positive."""
    if height < 1 or width < 1:
        raise UsageError(f"input size must be positive (got {height}x{width})")
    if in_channels is not None and in_channels < 1:
        raise UsageError(f"input channels must be at least 1 (got {in_channels})")
    rows = []
    channels = in_channels
    h, w = height, width
    for i, layer in enumerate(layers, 1):
        sh, sw = output_size(h, layer), output_size(w, layer)
        if sh.size < 1 or sw.size < 1:
            bad = sh if sh.size < 1 else sw
            raise UsageError(
                f"layer {i} ({layer.describe()}) turns {h}x{w} into a non-positive size: {bad.formula}; "
                "use a smaller kernel, more padding or a larger input"
            )
        out_channels = channels if layer.kind in ("maxpool", "avgpool") else layer.out_channels
        rows.append(
            ChainRow(i, layer, (channels, h, w), (out_channels, sh.size, sw.size),
                     parameter_count(layer, channels), (sh, sw))
        )
        channels, h, w = out_channels, sh.size, sw.size
    return rows


_TOKEN = re.compile(r"^(?P<key>op|s|p|d|c|k)(?P<value>\d+)$")


def parse_layers(spec: str) -> list[Layer]:
    """Parse a chain such as `conv3-c64-p1,maxpool2,convT4-s2-p1` (see LAYER_SPEC_HELP)."""
    layers = []
    items = [item.strip() for item in re.split(r"[,;]", spec) if item.strip()]
    if not items:
        raise UsageError("the layer list is empty (example: 'conv3-c16-p1,maxpool2')")
    for item in items:
        head, *options = [part.strip() for part in item.split("-")]
        match = re.fullmatch(r"([A-Za-z]+)(\d*)", head)
        if not match or match.group(1).lower() not in _KIND_ALIASES:
            raise UsageError(
                f"cannot read layer '{item}': it must start with conv, maxpool, avgpool or convT and the "
                "kernel size (example: 'conv3-s2-p1')"
            )
        kind = _KIND_ALIASES[match.group(1).lower()]
        values: dict[str, int] = {}
        if match.group(2):
            values["k"] = int(match.group(2))
        ceil = False
        for option in options:
            token = option.lower()
            if token == "ceil":
                ceil = True
                continue
            found = _TOKEN.match(token)
            if not found:
                raise UsageError(
                    f"cannot read '{option}' in layer '{item}' (options: sN stride, pN padding, dN dilation, "
                    "cN channels, opN output padding, ceil)"
                )
            values[found.group("key")] = int(found.group("value"))
        if "k" not in values:
            raise UsageError(f"layer '{item}' has no kernel size (write e.g. '{match.group(1)}3')")
        kernel = values["k"]
        pool = kind in ("maxpool", "avgpool")
        layer = Layer(
            kind=kind,
            kernel=kernel,
            stride=values.get("s", kernel if pool else 1),
            padding=values.get("p", 0),
            dilation=values.get("d", 1),
            output_padding=values.get("op", 0),
            ceil_mode=ceil,
            out_channels=values.get("c"),
        )
        validate(layer)
        layers.append(layer)
    return layers


def parse_size(text: str) -> tuple[int, int]:
    """`32` or `28x32` (height x width) → (height, width)."""
    parts = re.split(r"[x×,]", text.strip().lower())
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"cannot read input size '{text}' (write e.g. 32 or 28x32)") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise UsageError(f"cannot read input size '{text}' (write e.g. 32 or 28x32)")
    if min(values) < 1:
        raise UsageError(f"input size must be positive (got {text})")
    return values[0], values[1]
