"""t-SNE of images or features, and the numbers that say how well classes separate.

Everything here works on NumPy arrays: `features` is N×D float, `labels` is N int in
0..K-1. The command (`cnntools tsne`) turns pixels or a checkpoint's layer activations
into such arrays and calls `analyse`.

Two engines embed in 2-D:

- `sklearn`: scikit-learn's `TSNE` with its defaults (Barnes-Hut, PCA init, learning rate
  "auto", 1,000 iterations).
- `opentsne`: openTSNE (Poličar et al.): from 10,000 points FFT-accelerated interpolation
  of the repulsive forces (Linderman et al., 2019), Barnes-Hut below; approximate
  neighbours; 250 early-exaggeration + 300 iterations. Measured on
  10,000 MNIST-sized images it is several times faster than scikit-learn at the same
  trustworthiness (tests/benchmarks/bench_tsne.py), so `auto` picks it when installed.

Separation is measured where the class structure actually lives, not only in the picture:
class-centroid distances in the embedding (what the course notebooks compute) and in the
original feature space, and k-nearest-neighbour class mixing in the original space.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from cnntools.core import runtime
from cnntools.core.errors import CnnError, UsageError

METHODS = ("auto", "sklearn", "opentsne")
OPENTSNE_INTS_IN_INTERVAL = 3
OPENTSNE_ITERATIONS = 300


class TsneInputError(CnnError, ValueError):
    """Inputs t-SNE cannot work with (too few points, perplexity too large, a wrong layer ...)."""


class TsneOptionError(TsneInputError, UsageError):
    """An option value t-SNE cannot work with (--perplexity, --pca, --method, --k): exit 2."""


# ---------------------------------------------------------------------------- embedding


def default_pca_components(dim: int, requested: int | None) -> int:
    """PCA components to use before t-SNE: `requested`, or 50 when the dimension is larger."""
    if requested is None:
        return 50 if dim > 50 else 0
    if requested < 0:
        raise TsneOptionError(f"--pca must be 0 (off) or a positive number of components, got {requested}")
    return requested


def pca_reduce(features: np.ndarray, n_components: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """Project onto the first `n_components` principal components.

    Returns the projection and the share of variance it keeps. With `n_components` 0 or
    not smaller than the dimension, the features come back unchanged (share 1.0).
    """
    n, dim = features.shape
    if n_components <= 0 or n_components >= dim:
        return features, 1.0
    from sklearn.decomposition import PCA

    n_components = min(n_components, n)
    pca = PCA(n_components=n_components, random_state=seed)
    reduced = pca.fit_transform(features)
    return reduced.astype(np.float32), float(pca.explained_variance_ratio_.sum())


def resolve_method(method: str) -> str:
    """The engine `auto` stands for: openTSNE when installed (faster, same quality), else scikit-learn."""
    if method not in METHODS:
        raise TsneOptionError(f"unknown t-SNE method '{method}'; choose one of {', '.join(METHODS)}")
    if method != "auto":
        return method
    try:
        import openTSNE  # noqa: F401
    except ImportError:
        return "sklearn"
    return "opentsne"


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def embed(
    features: np.ndarray,
    method: str = "auto",
    perplexity: float = 30.0,
    seed: int = 0,
    n_jobs: int | None = None,
) -> tuple[np.ndarray, str]:
    """2-D t-SNE embedding of N×D `features`; returns (N×2 float32 array, engine used)."""
    n = len(features)
    if n < 4:
        raise TsneInputError(f"t-SNE needs at least 4 points, got {n}")
    if not perplexity > 0:
        raise TsneOptionError(f"perplexity must be positive, got {perplexity}")
    if perplexity >= n:
        raise TsneOptionError(
            f"perplexity {perplexity:g} must be smaller than the number of points ({n}); "
            "lower --perplexity or raise --n"
        )
    engine = resolve_method(method)
    features = np.ascontiguousarray(features, dtype=np.float32)
    if engine == "sklearn":
        from sklearn.manifold import TSNE

        points = TSNE(n_components=2, perplexity=perplexity, random_state=seed).fit_transform(features)
    else:
        import openTSNE

        # openTSNE's 3*perplexity neighbours must exist; it lowers perplexity itself otherwise
        # but warns on stdout-like streams, so do it here.
        effective = min(perplexity, (n - 1) / 3.0)
        tsne = openTSNE.TSNE(
            n_components=2,
            perplexity=effective,
            # openTSNE's own rule: Barnes-Hut below 10,000 points (the FFT grid's fixed cost
            # dominates there), FFT interpolation above.
            negative_gradient_method="auto",
            # Coarser FFT grid (3 embedding units per interval instead of 1) and 300 instead
            # of 500 iterations after early exaggeration: measured on 10,000 MNIST-sized
            # images this is ~2.5x faster than openTSNE's defaults and trustworthiness moves
            # by < 0.001 (tests/benchmarks/bench_tsne.py).
            ints_in_interval=OPENTSNE_INTS_IN_INTERVAL,
            n_iter=OPENTSNE_ITERATIONS,
            # Threads pay off only on large inputs; on a few hundred points (and busy
            # machines) thread hand-offs cost more than the work.
            n_jobs=n_jobs or (_cpu_count() if n >= 5000 else 1),
            random_state=seed,
            verbose=False,
        )
        points = np.asarray(tsne.fit(features))
    return np.asarray(points, dtype=np.float32), engine


# ---------------------------------------------------------------------------- measures


def class_centroids(points: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """K×D mean of each class's points (NaN rows for classes with no points)."""
    points = np.asarray(points, dtype=np.float64)
    sums = np.zeros((n_classes, points.shape[1]))
    np.add.at(sums, labels, points)
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None]


def centroid_distances(points: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """K×K Euclidean distances between class centroids (NaN where a class is absent)."""
    c = class_centroids(points, labels, n_classes)
    sq = (c * c).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * c @ c.T
    d = np.sqrt(np.clip(d2, 0.0, None))
    np.fill_diagonal(d, 0.0)
    absent = np.isnan(sq)
    d[absent, :] = np.nan
    d[:, absent] = np.nan
    return d


def nearest_neighbors(features: np.ndarray, k: int) -> np.ndarray:
    """N×k indices of each point's k nearest other points (Euclidean, exact)."""
    from sklearn.neighbors import NearestNeighbors

    n = len(features)
    if not 1 <= k < n:
        raise TsneOptionError(f"k must be between 1 and the number of points minus one ({n - 1}), got {k}")
    nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(features)
    idx = nn.kneighbors(features, return_distance=False)
    # Drop each point itself. With exact duplicates the point may not come first, so remove
    # it wherever it sits and keep the first k others.
    own = idx == np.arange(n)[:, None]
    keep = np.where(own.any(1)[:, None], ~own, np.arange(k + 1)[None, :] < k)
    return idx[keep].reshape(n, k)


def knn_mixing(neighbors: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """K×K symmetric class-mixing score from each point's neighbour list.

    mixing[a, b] = (neighbours of a-points that are b + neighbours of b-points that are a)
    / (k · (n_a + n_b)): the share of the pair's neighbour slots that cross to the other
    class. 0 = the two classes never meet; 0.5 = indistinguishable. The diagonal holds
    each class's share of same-class neighbours.
    """
    n, k = neighbors.shape
    counts = np.zeros((n_classes, n_classes))
    np.add.at(counts, (np.repeat(labels, k), labels[neighbors].ravel()), 1.0)
    sizes = np.bincount(labels, minlength=n_classes).astype(np.float64)
    denom = k * (sizes[:, None] + sizes[None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        mixing = (counts + counts.T) / denom
        np.fill_diagonal(mixing, np.diag(counts) / (k * sizes))
    return mixing


def knn_accuracy(neighbors: np.ndarray, labels: np.ndarray, n_classes: int) -> float:
    """Leave-one-out k-NN classification accuracy (majority vote, ties to the nearest)."""
    n, k = neighbors.shape
    votes = np.zeros((n, n_classes))
    # Weight by a tiny rank term so ties go to the class of the nearer neighbour.
    weights = 1.0 + 1e-6 * (k - np.arange(k))
    np.add.at(votes, (np.repeat(np.arange(n), k), labels[neighbors].ravel()), np.tile(weights, n))
    return float((votes.argmax(1) == labels).mean())


def overall_mixing(mixing: np.ndarray, labels: np.ndarray) -> float:
    """Share of all neighbour slots that hold a point of another class (1 - k-NN purity)."""
    counts = np.bincount(labels, minlength=len(mixing)).astype(np.float64)
    same = np.nansum(np.diag(mixing) * counts) / counts.sum()
    return float(1.0 - same)


def knn_separation(features: np.ndarray, labels: np.ndarray, n_classes: int, k: int) -> dict:
    """k-NN accuracy and overall class mixing of `features` as they are (no t-SNE).

    The yardstick for learned features: the same numbers on the same images' raw pixels.
    """
    labels = np.asarray(labels, dtype=np.int64)
    neighbors = nearest_neighbors(np.asarray(features, dtype=np.float32), k)
    return {
        "knn_accuracy": knn_accuracy(neighbors, labels, n_classes),
        "knn_mixing_overall": overall_mixing(knn_mixing(neighbors, labels, n_classes), labels),
    }


def trustworthiness(
    features: np.ndarray, points: np.ndarray, k: int, max_points: int = 5000, seed: int = 0
) -> tuple[float, int]:
    """scikit-learn's trustworthiness of the embedding; on a seeded subset above `max_points`.

    It needs the full N×N distance matrix, so large N is measured on a fixed random
    subset. Returns (score, number of points it was measured on).
    """
    from sklearn.manifold import trustworthiness as sk_trustworthiness

    n = len(features)
    idx = np.arange(n)
    if n > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    k = min(k, (len(idx) - 1) // 2)
    if k < 1:
        return float("nan"), len(idx)
    return float(sk_trustworthiness(features[idx], points[idx], n_neighbors=k)), len(idx)


# ---------------------------------------------------------------------------- analysis


@dataclass
class TsneResult:
    """Embedding plus separation measures; `to_dict` is the command's JSON document core."""

    embedding: np.ndarray
    labels: np.ndarray
    classes: list[str]
    method: str
    perplexity: float
    pca_components: int
    pca_variance: float
    input_dim: int
    k: int
    centroid_distance_embedding: np.ndarray
    centroid_distance_features: np.ndarray
    mixing: np.ndarray
    knn_accuracy_features: float
    knn_accuracy_embedding: float
    trustworthiness: float
    trustworthiness_points: int
    timings: dict = field(default_factory=dict)

    def class_counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=len(self.classes)).tolist()

    def pairs(self) -> list[dict]:
        """Every pair of present classes, most overlapping first (k-NN mixing, then closer centroids)."""
        counts = self.class_counts()
        present = [i for i, c in enumerate(counts) if c > 0]
        rows = []
        for ai, a in enumerate(present):
            for b in present[ai + 1 :]:
                rows.append(
                    {
                        "class_a": self.classes[a],
                        "class_b": self.classes[b],
                        "index_a": a,
                        "index_b": b,
                        "knn_mixing": float(self.mixing[a, b]),
                        "centroid_distance_embedding": float(self.centroid_distance_embedding[a, b]),
                        "centroid_distance_features": float(self.centroid_distance_features[a, b]),
                    }
                )
        rows.sort(key=lambda r: (-r["knn_mixing"], r["centroid_distance_embedding"]))
        for rank, row in enumerate(rows, 1):
            row["rank"] = rank
        return rows

    def overall_mixing(self) -> float:
        """Share of all neighbour slots that hold a point of another class (1 - k-NN purity)."""
        return overall_mixing(self.mixing, self.labels)

    def summary(self) -> dict:
        return {
            "points": int(len(self.labels)),
            "classes": len(self.classes),
            "input_dim": self.input_dim,
            "pca_components": self.pca_components,
            "pca_variance_kept": self.pca_variance,
            "method": self.method,
            "perplexity": self.perplexity,
            "k": self.k,
            "knn_accuracy_features": self.knn_accuracy_features,
            "knn_accuracy_embedding": self.knn_accuracy_embedding,
            "knn_mixing_overall": self.overall_mixing(),
            "trustworthiness": self.trustworthiness,
            "trustworthiness_points": self.trustworthiness_points,
        }


def analyse(
    features: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    *,
    method: str = "auto",
    perplexity: float = 30.0,
    pca: int | None = None,
    k: int = 10,
    seed: int = 0,
    n_jobs: int | None = None,
) -> TsneResult:
    """PCA (optional) → t-SNE → centroid distances, k-NN mixing, k-NN accuracy, trustworthiness.

    Centroid distances and k-NN measures in "feature" space use `features` as given
    (before PCA); the embedding measures use the 2-D points.
    """
    import time

    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if features.ndim != 2 or len(features) != len(labels):
        raise TsneInputError(f"features must be N×D with one label per row, got {features.shape} and {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise TsneInputError(f"labels must lie in 0..{len(classes) - 1}")
    n = len(features)
    if n < 4:
        raise TsneInputError(f"t-SNE needs at least 4 points, got {n}")
    if not np.isfinite(features).all():
        raise TsneInputError("the features contain NaN or infinite values")
    k = min(k, n - 1)
    timings = {}
    t0 = time.perf_counter()
    n_pca = default_pca_components(features.shape[1], pca)
    reduced, kept = pca_reduce(features, n_pca, seed)
    used_pca = reduced.shape[1] if reduced is not features else 0
    timings["pca_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    points, engine = embed(reduced, method=method, perplexity=perplexity, seed=seed, n_jobs=n_jobs)
    timings["tsne_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_classes = len(classes)
    feat_nn = nearest_neighbors(features, k)
    emb_nn = nearest_neighbors(points, k)
    trust, trust_n = trustworthiness(features, points, k, seed=seed)
    timings["measures_s"] = time.perf_counter() - t0
    return TsneResult(
        embedding=points,
        labels=labels,
        classes=list(classes),
        method=engine,
        perplexity=float(perplexity),
        pca_components=used_pca,
        pca_variance=kept,
        input_dim=int(features.shape[1]),
        k=k,
        centroid_distance_embedding=centroid_distances(points, labels, n_classes),
        centroid_distance_features=centroid_distances(features, labels, n_classes),
        mixing=knn_mixing(feat_nn, labels, n_classes),
        knn_accuracy_features=knn_accuracy(feat_nn, labels, n_classes),
        knn_accuracy_embedding=knn_accuracy(emb_nn, labels, n_classes),
        trustworthiness=trust,
        trustworthiness_points=trust_n,
        timings=timings,
    )


def stratified_subset(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded subset of `n` items keeping class shares (random if it cannot).

    `n` at or above the number of items returns every index.
    """
    total = len(labels)
    if n >= total:
        return np.arange(total)
    if n < 1:
        raise TsneInputError(f"-n must be at least 1, got {n}")
    from sklearn.model_selection import train_test_split

    idx = np.arange(total)
    try:
        chosen, _ = train_test_split(idx, train_size=n, stratify=labels, random_state=seed)
    except ValueError:  # too few per class to stratify: plain seeded random subset
        chosen = np.random.default_rng(seed).choice(total, n, replace=False)
    return np.sort(chosen)


def layer_features(model, preprocessing, images, layer: str | None = None, batch_size: int = 256,
                   precision: str = "fp32", arch: str = "", progress=None):
    """Activations of one module of `model` for uint8 `images`, flattened to an N×D float32
    array (one `inference.forward_batches` pass at `precision`).

    `layer` None takes the input of the last `nn.Linear` (the features the classifier sees);
    a module name takes that module's output. `preprocessing` (an `inference.Preprocessing`)
    turns the images into the model's input. Returns (features, layer name, "input" or
    "output"). `progress(n)` is called after each batch with the number of images done.
    """
    import torch

    from cnntools.inference.batches import forward_batches

    modules = dict(model.named_modules())
    if layer is None:
        linears = [name for name, m in modules.items() if isinstance(m, torch.nn.Linear)]
        if not linears:
            raise TsneInputError("the model has no Linear layer to take the classifier's input from; name a module with --layer")
        layer, kind = linears[-1], "input"
    else:
        if layer not in modules or layer == "":
            names = [name for name in modules if name]
            shown = ", ".join(names[:25]) + (" ..." if len(names) > 25 else "")
            raise TsneInputError(f"no layer named '{layer}' in the model; layers: {shown}")
        kind = "output"
    captured: list = []
    for batch in forward_batches(model, images, preprocessing, batch_size=batch_size, precision=precision,
                                 arch=arch, layers=[layer], layer_inputs=kind == "input"):
        rows = batch.activations[layer].float().flatten(1).cpu()
        if not captured:  # the first batch tells the width: refuse the whole matrix before it grows
            # The features, PCA's centred copy and its working matrix: three N×D float32 arrays.
            runtime.check_allocation(3 * len(images) * rows.shape[1] * 4,
                                     f"the features of {len(images):,} images ({rows.shape[1]:,} values each from '{layer}')")
        captured.append(rows)
        if progress is not None:
            progress(batch.start + batch.size)
    if not captured:
        raise TsneInputError("no images to extract features from")
    return torch.cat(captured).numpy(), layer, kind


DEFAULT_POINTS = 2000


def subset_indices(labels: np.ndarray, n: int | None, seed: int = 0) -> np.ndarray:
    """The sample `tsne` embeds: a stratified subset of `n` (default DEFAULT_POINTS) labels, all
    of them when there are fewer (said on stderr when `n` asked for more)."""
    if n is None:
        n = DEFAULT_POINTS
    elif n > len(labels):
        from cnntools.output import emitter as output

        output.info(f"the split has {len(labels)} images, fewer than -n {n}: using all of them")
    return stratified_subset(labels, n, seed)


def check_sample(images, idx) -> None:
    """Refuse a sample whose pixels cannot be held as float32 rows (what `sample_pixels`
    makes), before any of it is made."""
    from cnntools.inference.memory import gathered_bytes

    shape = images.images.shape[1:]
    runtime.check_allocation(gathered_bytes(len(idx), *shape, itemsize=4),
                             f"a t-SNE sample of {len(idx):,} {'×'.join(map(str, shape))} images")


def sample_pixels(images, idx) -> np.ndarray:
    """The chosen images' raw pixels as float32 rows in [0, 1] (as a model sees them, before
    normalisation), filled piece by piece: no uint8 or unscaled copy of the whole sample."""
    from cnntools.data.imageset import chunk_rows

    shape = images.images.shape[1:]
    dims = int(np.prod(shape))
    rows = np.empty((len(idx), dims), dtype=np.float32)
    step = chunk_rows(dims * 4)
    for a in range(0, len(idx), step):
        piece = images.images[idx[a:a + step]].reshape(-1, dims).numpy()
        np.divide(piece, np.float32(255.0), out=rows[a:a + len(piece)], casting="unsafe")
    return rows


@dataclass
class SplitEmbedding:
    """`embed_split`'s answer: the t-SNE result of the sample, the dataset indices it holds, its
    labels and class names, the summary (with the raw-pixel baseline for a model's features),
    what was embedded (`source`: kind, data and for features checkpoint, arch, layer, hook) and
    a short description of it (`what`)."""

    result: TsneResult
    indices: np.ndarray
    labels: np.ndarray
    classes: list[str]
    summary: dict
    source: dict
    what: str


def embed_split(images, *, lm=None, checkpoint: str | None = None, layer: str | None = None, n: int | None = None,
                seed: int = 0, method: str = "auto", perplexity: float = 30.0, pca: int | None = None, k: int = 10,
                batch_size: int = 256, precision: str = "fp32", progress=None, on_start=None) -> SplitEmbedding:
    """t-SNE of a seeded stratified sample of the ImageSet `images`: of its raw pixels, or with a
    loaded model `lm` of that model's `layer` features (see `layer_features`), then the
    separation measures of `analyse` (and for features the same images' pixels measured the
    same way: did training separate the classes?). `on_start(what, points, dims, classes)` is
    called before the embedding starts (the command says it on stderr)."""
    idx = subset_indices(images.labels.numpy(), n, seed)
    check_sample(images, idx)
    source: dict = {"split": images.split, "seed": seed, "kind": "pixels", "data": images.spec}
    # C×H×W of the pixels measured: the stored size without a checkpoint, the model's input
    # size with one, so the two "raw pixels" numbers name their sizes.
    shape = "×".join(str(d) for d in images.images.shape[1:])
    if lm is None:
        features, what = sample_pixels(images, idx), f"raw pixels ({shape}, as stored)"
    else:
        from cnntools.data.imageset import IndexedRows

        features, layer_name, hook = layer_features(
            lm.model, lm.preprocessing, IndexedRows(images.images, idx), layer=layer, batch_size=batch_size,
            precision=precision, arch=lm.meta.arch_name, progress=progress,
        )
        source.update(kind="features", checkpoint=checkpoint, arch=lm.meta.arch_name, layer=layer_name, hook=hook)
        what = f"{lm.meta.arch_name} {layer_name} {'input' if hook == 'input' else 'output'}"
    labels = images.labels.numpy()[idx].astype(np.int64)
    classes = [str(c) for c in images.classes]
    if on_start is not None:
        on_start(what, len(idx), features.shape[1], len(classes))
    result = analyse(features, labels, classes, method=method, perplexity=perplexity, pca=pca, k=k, seed=seed)
    summary = result.summary()
    if lm is not None:
        baseline = knn_separation(sample_pixels(images, idx), labels, len(classes), result.k)
        summary["knn_accuracy_pixels"] = baseline["knn_accuracy"]
        summary["knn_mixing_pixels"] = baseline["knn_mixing_overall"]
    summary["pixels_shape"] = shape
    return SplitEmbedding(result, idx, labels, classes, summary, source, what)
