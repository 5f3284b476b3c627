"""matplotlib Figure helpers: no pyplot, no global state, no window — figures go to files."""

from __future__ import annotations

import os

from cnntools.files import atomic_path, figure_format


def new_figure(width: float, height: float, dpi: int = 100):
    """A Figure on the Agg canvas, independent of pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | os.PathLike, dpi: int | None = None) -> None:
    """Write a figure atomically; the format comes from the extension (png, svg, pdf)."""
    fmt = figure_format(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
