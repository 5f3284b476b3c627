"""What flows along a model's graph in rf-calc --arch: fields, layouts, and how they combine.

A field is (RF along height, RF along width) -- `cnntools.calc.rf.RF` -- or `Whole` (every
unit sees the whole input) or `Unfollowed` (the walk cannot say). A layout names each
dimension of a tensor: "H", "W", "T" (tokens: a flattened height x width grid), "S" (space
mixed with channels), "?" (lost) or None (channels, batch). Pure Python, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


SPATIAL = ("H", "W", "T")  # height, width, and tokens (a flattened height x width grid)


@dataclass(frozen=True)
class Whole:
    """Every unit sees the whole input, from node `at` on."""

    at: str
    why: str


@dataclass(frozen=True)
class Unfollowed:
    """The walk cannot say where this tensor's units look (node `at`, because `why`)."""

    at: str
    why: str


def union(a, b):
    """Field where two branches meet: whole wins, then unfollowed, else the covering field."""
    for kind in (Whole, Unfollowed):
        if isinstance(a, kind):
            return a
        if isinstance(b, kind):
            return b
    return (a[0].union(b[0]), a[1].union(b[1]))


@dataclass(frozen=True)
class Value:
    """What flows along one graph edge: true field, local field and the tensor's layout."""

    true: object  # (RF height, RF width) | Whole | Unfollowed
    local: object
    axes: tuple  # per dimension: "H", "W", "T", "S" (space mixed with channels), "?" or None (channels)
    grid: tuple | None = None  # (height, width) of the token grid behind a "T" axis
    pooled: bool = False  # computed from a global reduction: a gate, not a feature map

    def map(self, fn) -> "Value":
        """Apply fn to both fields (whole and unfollowed fields pass through)."""
        return replace(self, true=apply_extent(self.true, fn), local=apply_extent(self.local, fn))


def apply_extent(extent, fn):
    return extent if isinstance(extent, (Whole, Unfollowed)) else fn(extent)


def both(extent, what):
    return extent if isinstance(extent, (Whole, Unfollowed)) else what


class Stop(Exception):
    """This node cannot be followed; the message says why."""


def pair(value) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


def adaptive_geometry(in_size: int, out) -> tuple[int, int]:
    """Largest window and smallest step of an adaptive pool (exact when sizes divide)."""
    out = in_size if out is None else int(out)  # None: that dimension keeps its size
    kernel = max(math.ceil((i + 1) * in_size / out) - (i * in_size) // out for i in range(out))
    return kernel, max(1, in_size // out) if out > 1 else in_size


def shape_of(node):
    meta = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    return tuple(int(s) for s in meta.shape) if meta is not None and hasattr(meta, "shape") else None


def display_name(node) -> str:
    """A node as a layer path: the module's own name, or the calling module's path and the call."""
    if node.op == "call_module":
        return node.target
    stack = node.meta.get("nn_module_stack") or {}
    path = next(reversed(stack.values()))[0] if stack else ""
    return f"{path}.{node.name}" if path else node.name


def target_name(target) -> str:
    return getattr(target, "__name__", str(target)).lstrip("_") if not isinstance(target, str) else target


def arg(node, index: int, key: str, default=None):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(key, default)


def axes_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def spatial_dims(axes, wanted=("H", "W")) -> tuple[int, int]:
    try:
        return axes.index(wanted[0]), axes.index(wanted[1])
    except ValueError:
        raise Stop(f"expects height and width axes, the tensor has {axes_text(axes)}") from None


def axes_text(axes) -> str:
    return "(" + ", ".join({None: "C"}.get(a, a) for a in axes) + ")"

def set_axis(extent, k, rf):
    return (rf, extent[1]) if k == 0 else (extent[0], rf)


def one(pair):
    if pair is None:
        return None
    pair = tuple(pair)
    return pair[0] if pair[0] == pair[-1] else list(pair)


def field_columns(extent) -> dict:
    if isinstance(extent, Whole):
        return {"receptive_field": "global", "jump": None, "start": None, "center": None}
    if isinstance(extent, Unfollowed):
        return {"receptive_field": None, "jump": None, "start": None, "center": None}
    h, w = extent[0].as_dict(), extent[1].as_dict()
    return {key: h[key] if h[key] == w[key] else [h[key], w[key]] for key in ("receptive_field", "jump", "start", "center")}


def merge(a: Value, b: Value) -> Value:
    """Two branches meeting elementwise: union of fields, the more spatial layout."""
    axes = a.axes if len(a.axes) >= len(b.axes) else b.axes
    if len(a.axes) == len(b.axes):
        axes = tuple(x if x == y else ("?" if {x, y} - {None} and x is not None and y is not None else (x or y))
                     for x, y in zip(a.axes, b.axes))
    return Value(union(a.true, b.true), union(a.local, b.local), axes, a.grid or b.grid, a.pooled and b.pooled)


def groups(before, after):
    """Pair runs of input and output dimensions whose sizes multiply to the same number."""
    i = j = 0
    groups = []
    while i < len(before) or j < len(after):
        group_in, group_out, p, q = [], [], 1, 1
        while True:
            if i < len(before) and (not group_in or p < q):
                p *= before[i]
                group_in.append(i)
                i += 1
            elif j < len(after) and (not group_out or q < p):
                q *= after[j]
                group_out.append(j)
                j += 1
            else:
                break
        groups.append((group_in, group_out))
    return groups


def regroup(before, after, axes, grid):
    """Layout after a reshape from shape `before` to `after`.

    Channel-only regroupings (channel shuffle) keep every spatial axis; height and width
    merged into one axis become tokens ("T", with the grid remembered) and split back;
    space merged with channels becomes "S" (a following linear layer mixes all of it).
    """
    if before is None or after is None:
        raise Stop("a reshape whose shapes are unknown")
    out: list = []
    for group_in, group_out in groups(before, after):
        real = [axes[k] for k in group_in if before[k] != 1]  # size-1 dimensions carry no position
        sizes = [after[k] for k in group_out]
        wide = [s for s in sizes if s != 1]
        if len(group_in) == 1 and len(group_out) == 1:
            tags = [axes[group_in[0]]]
        elif all(t is None for t in real):
            tags = [None] * len(sizes)
        elif len(real) == 1 and len(wide) == 1:
            tags = [real[0] if s != 1 else None for s in sizes]
        elif real == ["H", "W"] and len(wide) == 1:
            grid = tuple(before[k] for k in group_in if before[k] != 1)
            tags = ["T" if s != 1 else None for s in sizes]
        elif real == ["T"] and grid is not None and wide == list(grid):
            names = iter(("H", "W"))
            tags = [next(names) if s != 1 else None for s in sizes]
        elif len(wide) == 1 and "?" not in real:
            tags = ["S" if s != 1 else None for s in sizes]
        else:
            raise Stop(f"a reshape from {list(before)} to {list(after)} splits or mixes the spatial axes")
        out += tags
    return tuple(out), grid


