"""matplotlib Figure helpers: no pyplot, no global state, no window — figures go to files."""

from __future__ import annotations

import os

from cnntools.output.files import atomic_path, figure_format


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


def class_colors(n_classes: int):
    """Distinct colours for `n_classes` classes: tab10 up to 10, tab20 up to 20, then a hue wheel."""
    import matplotlib

    if n_classes <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n_classes)]
    if n_classes <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(n_classes)]
    cmap = matplotlib.colormaps["gist_ncar"]
    return [cmap(0.05 + 0.9 * i / (n_classes - 1)) for i in range(n_classes)]


def scatter_by_class(points, labels, classes, title: str | None = None, subtitle: str | None = None):
    """2-D points coloured by class, a legend of class names and each class's name at its centroid.

    Small translucent markers keep thousands of points readable; centroid labels sit in
    white boxes so the class of each cluster reads without the legend. Returns the Figure.
    """
    import numpy as np

    points = np.asarray(points)
    labels = np.asarray(labels)
    n_classes = len(classes)
    colors = class_colors(n_classes)
    size = float(np.clip(6000.0 / max(len(points), 1), 2.0, 18.0))
    fig = new_figure(9.5, 7.5)
    ax = fig.add_subplot(1, 1, 1)
    for c in range(n_classes):
        mask = labels == c
        if not mask.any():
            continue
        ax.scatter(points[mask, 0], points[mask, 1], s=size, color=colors[c], alpha=0.7,
                   linewidths=0, label=str(classes[c]), rasterized=len(points) > 5000)
    for c in range(n_classes):
        mask = labels == c
        if mask.any():
            cx, cy = points[mask].mean(0)
            ax.text(cx, cy, str(classes[c]), fontsize=9, fontweight="bold", ha="center", va="center",
                    color=colors[c], bbox=dict(boxstyle="round,pad=0.2", fc="white", ec=colors[c], alpha=0.85))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=11)
    if n_classes <= 40:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, markerscale=max(1.0, 40.0 / size) ** 0.5,
                  frameon=False, ncol=1 if n_classes <= 20 else 2, title="class")
    return fig


# ---------------------------------------------------------------------------- images


def to_display(image):
    """A uint8 (or float in [0, 1]) C×H×W tensor/array as an H×W×3 or H×W float array for imshow."""
    import numpy as np

    arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    arr = arr.astype(np.float32)
    if arr.max(initial=0) > 1.0:
        arr = arr / 255.0
    if arr.ndim == 3:
        arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    return np.clip(arr, 0.0, 1.0)


def show_image(ax, image, title: str | None = None, fontsize: float = 8) -> None:
    """Draw one image without axes ticks; single-channel images in grey."""
    arr = to_display(image)
    if arr.ndim == 2:
        ax.imshow(arr, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(arr, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize)


def show_overlay(ax, image, heatmap, alpha: float = 0.5, title: str | None = None, fontsize: float = 8,
                 vmin: float = 0.0, vmax: float = 1.0):
    """An image in grey/colour with a heatmap (jet, `vmin`..`vmax`) blended on top, at the image's
    size; returns the heatmap's artist."""
    import numpy as np

    show_image(ax, image, title, fontsize)
    heat = heatmap.detach().cpu().numpy() if hasattr(heatmap, "detach") else np.asarray(heatmap)
    h, w = image.shape[-2:]
    # Stretched over the image's pixels (imshow's default extent for it), whatever the heatmap's size.
    return ax.imshow(heat, cmap="jet", alpha=alpha, vmin=vmin, vmax=vmax, extent=(-0.5, w - 0.5, h - 0.5, -0.5),
                     interpolation="bilinear")


def show_map(ax, heatmap, title: str | None = None, fontsize: float = 8, cmap: str = "hot", vmin=0.0, vmax=1.0):
    """A map drawn alone, pixel for pixel (nearest neighbour), without axes ticks; returns the image artist."""
    import numpy as np

    heat = heatmap.detach().cpu().numpy() if hasattr(heatmap, "detach") else np.asarray(heatmap)
    artist = ax.imshow(heat, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize)
    return artist


def grid_shape(n: int) -> tuple[int, int]:
    """Rows and columns for `n` tiles, about square."""
    import math

    cols = max(1, math.ceil(math.sqrt(n)))
    return max(1, math.ceil(n / cols)), cols


def image_grid(
    images,
    titles=None,
    suptitle: str | None = None,
    tile: float = 1.6,
    fontsize: float = 8,
):
    """A Figure with one tile per image (tensors/arrays C×H×W, uint8 or float in [0, 1])."""
    n = len(images)
    rows, cols = grid_shape(n)
    title_space = 0.3 if titles else 0.0
    fig = new_figure(cols * tile, rows * (tile + title_space) + (0.5 if suptitle else 0))
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        show_image(ax, images[i], titles[i] if titles else None, fontsize=fontsize)
    if suptitle:
        fig.suptitle(suptitle, fontsize=fontsize + 3)
    fig.tight_layout()
    return fig


def confusion_heatmap(cm, classes, title: str = "Confusion matrix", normalized: bool = False):
    """A labelled confusion-matrix heatmap readable from 2 to a few hundred classes.

    The figure grows with the number of classes and fonts shrink; numbers are written in the
    cells only while they still fit (up to 30 classes).
    """
    import numpy as np

    cm = np.asarray(cm)
    k = cm.shape[0]
    size = float(min(max(5.5, 0.16 * k + 3.5), 18.0))
    # A tick label may take about 80% of a cell's height (in points).
    tick_font = float(max(3.0, min(10.0, 0.8 * size * 72 * 0.8 / max(k, 1))))
    fig = new_figure(size + 1.2, size, dpi=100 if k <= 30 else 150)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(cm, cmap="Blues", interpolation="nearest", vmin=0)
    cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03, shrink=0.8)
    cbar.ax.tick_params(labelsize=9)
    cbar.set_label("fraction" if normalized else "count", fontsize=10)
    names = [str(c) for c in classes]
    long_names = max((len(n) for n in names), default=1) > 3
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, fontsize=tick_font, rotation=90 if (k > 10 or long_names) else 0)
    ax.set_yticklabels(names, fontsize=tick_font)
    ax.set_xlabel("predicted class", fontsize=11)
    ax.set_ylabel("true class", fontsize=11)
    ax.set_title(title, fontsize=13)
    if k <= 30:
        cell_font = float(max(5.0, min(10.0, 150.0 / k)))
        high = cm.max() if cm.size else 0
        for i in range(k):
            for j in range(k):
                value = cm[i, j]
                text = f"{value:.2f}" if normalized else f"{int(value)}"
                if normalized and value == 0:
                    text = "0"
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=cell_font,
                    color="white" if high and value > 0.55 * high else "black",
                )
    fig.tight_layout()
    return fig


def training_curves(runs, title: str | None = None, labels: list[str] | None = None):
    """Loss and accuracy panels of one or more runs (`cnntools.checkpoint.runs.Run`), one colour per run.

    Train is solid, validation dashed, test dotted (where recorded); per-step training losses
    and `--val-every` validations are thin lines at fractional epochs (updates / updates per
    epoch); a star marks each run's kept epoch. The legends sit below the panels, so they
    cover no curve. `labels`: the legend's names of the runs (default: their labels).
    Returns the Figure.
    """
    from matplotlib.lines import Line2D

    colors = class_colors(max(1, len(runs)))
    fig = new_figure(11, 4.4 + 0.22 * ((len(runs) + 2) // 3))
    loss_ax, acc_ax = fig.subplots(1, 2)
    styles = {"train": "-", "val": "--", "test": ":"}
    kinds_drawn, has_steps, has_best = set(), False, False
    max_epoch = 0
    for run, color in zip(runs, colors):
        epochs = [r["epoch"] for r in run.epochs]
        max_epoch = max([max_epoch] + epochs)
        for ax, key in ((loss_ax, "loss"), (acc_ax, "acc")):
            for kind, style in styles.items():
                values = [r.get(f"{kind}_{key}") for r in run.epochs]
                if all(v is None for v in values):
                    continue
                kinds_drawn.add(kind)
                ax.plot(epochs, [float("nan") if v is None else v for v in values], linestyle=style, color=color,
                        marker="o", markersize=3.5, linewidth=1.8)
            spe = run.steps_per_epoch
            if spe:
                for kind, column, style in (("step", "train", "-"), ("val", "val", "--")):
                    points = [(r["updates"] / spe, r.get(f"{column}_{key}")) for r in run.steps if r.get("kind") == kind]
                    points = [(x, y) for x, y in points if y is not None]
                    if points:
                        has_steps = True
                        ax.plot([x for x, _ in points], [y for _, y in points], linestyle=style, color=color,
                                linewidth=0.9, alpha=0.45)
            best = next((r for r in run.epochs if r["epoch"] == run.best_epoch), None)
            value = best.get(f"val_{key}") if best else None
            if value is not None:
                has_best = True
                ax.plot([best["epoch"]], [value], marker="*", markersize=14, color=color,
                        markeredgecolor="black", markeredgewidth=0.8, linestyle="none", zorder=5)
    for ax, name in ((loss_ax, "loss (cross-entropy)"), (acc_ax, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(name.split(" ")[0])
        ax.grid(True, alpha=0.3)
    if 0 < max_epoch < 20:
        for ax in (loss_ax, acc_ax):
            ax.set_xticks(range(0 if has_steps else 1, max_epoch + 1))
    run_names = labels or [run.label for run in runs]
    run_handles = [Line2D([], [], color=c, linewidth=2.5, label=name) for name, c in zip(run_names, colors)]
    names = {"train": "train", "val": "validation", "test": "test"}
    style_handles = [Line2D([], [], color="0.3", linestyle=styles[k], marker="o", markersize=3.5, label=names[k])
                     for k in styles if k in kinds_drawn]
    if has_steps:
        style_handles.append(Line2D([], [], color="0.3", linewidth=0.9, alpha=0.6, label="per step (thin)"))
    if has_best:
        style_handles.append(Line2D([], [], color="0.6", marker="*", markersize=12, markeredgecolor="black",
                                    linestyle="none", label="kept epoch"))
    legend_rows = max((len(runs) + 2) // 3, (len(style_handles) + 1) // 2)
    fig.tight_layout(rect=(0, (0.05 + 0.19 * legend_rows) / fig.get_figheight(), 1, 0.93 if title else 1))
    fig.legend(handles=run_handles, loc="lower left", bbox_to_anchor=(0.01, 0.0), ncol=min(3, len(runs)),
               frameon=False, fontsize=9, title="run", title_fontsize=9, alignment="left")
    fig.legend(handles=style_handles, loc="lower right", bbox_to_anchor=(0.99, 0.0), ncol=2, frameon=False, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


def logits_histogram(values: dict, title: str = "Raw outputs", bins: int = 60, log_count: bool = False):
    """Histogram of raw model outputs (one series per model, by label), with zero marked.

    A ReLU output layer shows up as a spike at zero and nothing left of it; `log_count`
    puts the counts on a log axis so the spike does not flatten the rest. The legend sits
    below the axes, so it covers no bar. Returns the Figure.
    """
    import numpy as np

    fig = new_figure(8, 4.6 + 0.2 * len(values))
    ax = fig.subplots()
    arrays = {name: np.asarray(v, dtype=np.float64).ravel() for name, v in values.items()}
    finite = [a[np.isfinite(a)] for a in arrays.values() if a.size]
    colors = class_colors(max(1, len(arrays)))
    if finite:
        low = min(float(a.min()) for a in finite)
        high = max(float(a.max()) for a in finite)
        edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
        for (name, a), color in zip(arrays.items(), colors):
            a = a[np.isfinite(a)]
            share = float((a < 0).mean()) if a.size else 0.0
            ax.hist(a, bins=edges, alpha=0.55 if len(arrays) > 1 else 0.9, color=color, histtype="stepfilled",
                    edgecolor=color, linewidth=1.2,
                    label=f"{name}: {share:.1%} negative, range {float(a.min()):.3g} to {float(a.max()):.3g}")
    ax.axvline(0.0, color="black", linewidth=1)
    if log_count:
        ax.set_yscale("log")
    ax.set_xlabel("raw output (logit), every class of every image")
    ax.set_ylabel("count (log scale)" if log_count else "count")
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.16), frameon=False, fontsize=9, ncol=1)
    fig.tight_layout()
    return fig


def logit_bars(panels: list[dict], models: list[str], classes: list[str], shared: str = ""):
    """Per-class raw outputs of several models for the same images: one row per image, its
    thumbnail on the left, grouped bars (one colour per model) on the right. Each panel is
    {"name", "label" (true class name or None), "image" (C×H×W), "logits" (one list per model)}.
    `shared`: a line under the title naming what the models' labels share. Returns the Figure."""
    import numpy as np

    k, m = len(classes), len(models)
    colors = class_colors(max(1, m))
    width = min(16.0, max(7.0, 0.32 * k * max(1, m) ** 0.5 + 3.0))
    fig = new_figure(width, 2.5 * len(panels) + 0.9 + 0.22 * ((m + 2) // 3))
    grid = fig.add_gridspec(len(panels), 2, width_ratios=[1, max(3.0, width - 2.0)])
    x = np.arange(k)
    bar = 0.8 / max(1, m)
    for row, panel in enumerate(panels):
        show_image(fig.add_subplot(grid[row, 0]), panel["image"],
                   panel["name"] + (f"\nlabel: {panel['label']}" if panel["label"] is not None else ""), fontsize=9)
        ax = fig.add_subplot(grid[row, 1])
        for j, (name, values, color) in enumerate(zip(models, panel["logits"], colors)):
            ax.bar(x - 0.4 + bar * (j + 0.5), values, width=bar, color=color, label=name if row == 0 else None)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels([str(c) for c in classes], rotation=90 if k > 12 or max(len(str(c)) for c in classes) > 4 else 0,
                           fontsize=8 if k <= 30 else 6)
        ax.set_xlim(-0.6, k - 0.4)
        ax.set_ylabel("logit")
        ax.grid(True, axis="y", alpha=0.3)
        if row == len(panels) - 1:
            ax.set_xlabel("class")
    fig.suptitle(f"Raw outputs per class of {m} model{'s' if m > 1 else ''} for the same {len(panels)} image"
                 f"{'s' if len(panels) > 1 else ''}" + (f"\n{shared}" if shared else ""), fontsize=12)
    # Constrained layout sizes every row's tick labels and keeps the legend outside the panels.
    fig.set_layout_engine("constrained")
    fig.legend(loc="outside lower center", ncol=min(3, m), frameon=False, fontsize=9, title="model", title_fontsize=9)
    return fig


# ---------------------------------------------------------------------------- dataset figures


def _tile_figure(rows: int, cols: int, tile: float, left: float, top: float, gap: float = 0.06, aspect: float = 1.0):
    """rows×cols tiles `tile` inches wide and `tile × aspect` high, `left`/`top` inches kept for labels."""
    tile_h = tile * aspect
    width = left + cols * tile + (cols - 1) * gap + 0.1
    height = top + rows * tile_h + (rows - 1) * gap + 0.1
    fig = new_figure(width, height)
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(left=left / width, right=1 - 0.1 / width, bottom=0.1 / height, top=1 - top / height,
                        wspace=gap / tile, hspace=gap / tile_h)
    return fig, axes


def class_sample_grid(images, labels, classes, per_class: int = 8, seed: int = 0, title: str | None = None):
    """Sample images per class, one row per class with its name on the left (up to 20 classes).

    With more classes, a square grid of random images each titled with its class name.
    `images` uint8 N×C×H×W, `labels` int N. Returns the Figure.
    """
    import numpy as np

    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    k = len(classes)
    if k > 20:
        pick = rng.choice(len(labels), size=min(64, len(labels)), replace=False)
        return image_grid([images[i] for i in pick], titles=[str(classes[labels[i]]) for i in pick],
                          suptitle=title, tile=1.3, fontsize=7)
    present = [c for c in range(k) if (labels == c).any()]
    rows = len(present)
    cols = min(per_class, max(int((labels == c).sum()) for c in present))
    h, w = images.shape[-2:]
    tile = 0.85 if max(h, w) <= 16 else 1.1
    label_width = 0.25 + 0.085 * max(len(str(classes[c])) for c in present)
    fig, axes = _tile_figure(rows, cols, tile, left=label_width, top=0.45 if title else 0.1, aspect=h / w)
    for r, c in enumerate(present):
        members = np.flatnonzero(labels == c)
        chosen = rng.choice(members, size=min(cols, len(members)), replace=False)
        for j in range(cols):
            ax = axes[r, j]
            if j < len(chosen):
                show_image(ax, images[int(chosen[j])])
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(str(classes[c]), rotation=0, ha="right", va="center", fontsize=10, labelpad=6)
    if title:
        fig.suptitle(title, fontsize=12, y=1 - 0.08 / fig.get_figheight(), va="top")
    return fig


def augment_preview_grid(originals, augmented, row_labels=None, title: str | None = None):
    """Each row: an original image (framed), then its augmented versions.

    `originals` N images (uint8 C×H×W or float 0..1), `augmented` N lists of K images.
    Returns the Figure.
    """
    n = len(originals)
    k = len(augmented[0]) if n else 0
    h, w = originals[0].shape[-2:]
    tile = 1.0 if max(h, w) <= 16 else 1.25
    left = 0.25 + 0.085 * max((len(str(x)) for x in row_labels), default=0) if row_labels is not None else 0.1
    fig, axes = _tile_figure(n, k + 1, tile, left=left, top=(0.65 if title else 0.35), gap=0.08, aspect=h / w)
    for i in range(n):
        show_image(axes[i, 0], originals[i], "original" if i == 0 else None, fontsize=9)
        for spine in axes[i, 0].spines.values():
            spine.set_edgecolor("tab:blue")
            spine.set_linewidth(2.5)
        for j in range(k):
            show_image(axes[i, j + 1], augmented[i][j], f"augmented {j + 1}" if i == 0 else None, fontsize=9)
        if row_labels is not None:
            axes[i, 0].set_ylabel(str(row_labels[i]), rotation=0, ha="right", va="center", fontsize=9, labelpad=6)
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.06 / fig.get_figheight(), va="top")
    return fig
