"""Receptive field, jump (effective stride) and start of a stack of layers.

Araujo, Norris and Sim, "Computing Receptive Fields of Convolutional Neural Networks"
(Distill, 2019). With k_eff = d*(k-1)+1, after layer l:

    receptive_field_l = receptive_field_{l-1} + (k_eff - 1) * jump_{l-1}
    jump_l            = jump_{l-1} * s
    start_l           = start_{l-1} - p * jump_{l-1}

`start` is the input coordinate of the left (top) edge of the first output unit's receptive
field (negative when it reaches into the padding); `center` is that field's centre,
start + (receptive_field - 1) / 2. Unit i of layer l covers
[start + i*jump, start + i*jump + receptive_field - 1]. Pure Python, no torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cnntools.calc.conv import output_length
from cnntools.calc.kernel import plain_number
from cnntools.core.errors import UsageError


@dataclass(frozen=True)
class RF:
    """Receptive field of the units of one feature map, in input pixels."""

    receptive_field: int = 1
    jump: int = 1
    start: float = 0

    @property
    def center(self) -> float:
        return self.start + (self.receptive_field - 1) / 2

    def after(self, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> "RF":
        """The field after one more conv/pool layer with these parameters."""
        if kernel < 1 or stride < 1 or dilation < 1 or padding < 0:
            raise UsageError(
                f"impossible layer: kernel {kernel}, stride {stride}, padding {padding}, dilation {dilation} "
                "(kernel, stride and dilation must be at least 1, padding at least 0)"
            )
        k_eff = dilation * (kernel - 1) + 1
        return RF(
            self.receptive_field + (k_eff - 1) * self.jump,
            self.jump * stride,
            self.start - padding * self.jump,
        )

    def union(self, other: "RF") -> "RF":
        """Where two branches meet (residual add, concatenation): the field covering both."""
        left = min(self.start, other.start)
        right = max(self.start + self.receptive_field, other.start + other.receptive_field)
        return RF(int(right - left), max(self.jump, other.jump), left)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["start"] = plain_number(self.start)
        d["center"] = plain_number(self.center)
        return d


def _expand(name: str, text: str | None, default: int | None) -> list[int | None]:
    if text is None or text.strip() == "":
        return [default]
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise UsageError(f"{name}: '{text}' must be an integer or a comma list of integers") from None
    if not values:
        raise UsageError(f"{name}: no value given")
    return values


MAX_LAYERS = 100_000  # bounds the work and memory of one call


def expand_layers(
    kernel: str,
    stride: str | None = None,
    padding: str | None = None,
    dilation: str | None = None,
    types: str | None = None,
    n: int | None = None,
) -> list[dict]:
    """Per-layer parameters from options that take one value (repeated n times) or a comma list.

    Pools default to stride = kernel (PyTorch's default), convs to stride 1.
    """
    if n is not None and n < 1:
        raise UsageError(f"-n must be at least 1 (got {n})")
    if n is not None and n > MAX_LAYERS:
        raise UsageError(f"-n {n}: at most {MAX_LAYERS:,} layers")
    if kernel is None or not kernel.strip():
        raise UsageError("-k/--kernel: give the kernel size, e.g. -k 3 or -k 3,3,2")
    lists = {
        "kernel": _expand("--kernel", kernel, None),
        "stride": _expand("--stride", stride, None),
        "padding": _expand("--padding", padding, 0),
        "dilation": _expand("--dilation", dilation, 1),
    }
    kinds = [t.strip().lower() for t in (types or "conv").split(",") if t.strip()] or ["conv"]
    for t in kinds:
        if t not in ("conv", "pool", "maxpool", "avgpool"):
            raise UsageError(f"--type: unknown layer type '{t}' (use conv or pool, e.g. --type conv,conv,pool)")
    lengths = {len(v) for v in list(lists.values()) + [kinds] if len(v) > 1}
    if len(lengths) > 1:
        raise UsageError(
            "comma lists must all have the same length, one value per layer "
            f"(got lengths {', '.join(str(x) for x in sorted(lengths))})"
        )
    list_length = lengths.pop() if lengths else None
    if n is not None and list_length is not None and list_length != n:
        raise UsageError(f"-n {n} does not match the {list_length} values of the comma lists")
    count = list_length or n or 1

    def pick(values: list, i: int):
        return values[i] if len(values) > 1 else values[0]

    layers = []
    for i in range(count):
        kind = pick(kinds, i)
        kind = "conv" if kind == "conv" else "pool"
        k = pick(lists["kernel"], i)
        s = pick(lists["stride"], i)
        if s is None:
            s = k if kind == "pool" else 1
        layers.append(
            {"type": kind, "kernel": k, "stride": s, "padding": pick(lists["padding"], i),
             "dilation": pick(lists["dilation"], i)}
        )
    return layers


def receptive_fields(layers: list[dict], input_size: int | None = None) -> list[dict]:
    """RF, jump, start and centre after each layer (and the feature-map size if input_size)."""
    rf = RF()
    size = input_size
    rows = []
    for i, layer in enumerate(layers, 1):
        rf = rf.after(layer["kernel"], layer["stride"], layer["padding"], layer["dilation"])
        row = {"layer": i, **layer, **rf.as_dict()}
        if size is not None:
            size = output_length(size, layer["kernel"], layer["stride"], layer["padding"], layer["dilation"])
            if size < 1:
                raise UsageError(f"layer {i} leaves no output at input size {input_size}; use a larger --input-size")
            row["size"] = size
        rows.append(row)
    return rows
