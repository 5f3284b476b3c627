"""t-SNE time: `cnntools tsne`'s engine against scikit-learn's TSNE with defaults on raw pixels.

Issue 7, target 5: on 10,000 images of 784 dimensions `cnntools tsne` must take at most
0.5x the time of `sklearn.manifold.TSNE()` (all defaults) on the raw pixels, with
trustworthiness within 0.01.

MNIST is not available offline, so the data is an MNIST-like substitute built from the
digits that ship with scikit-learn: each 8x8 digit (0..16) is upsampled bilinearly to
20x20 and pasted into a 28x28 canvas with a random shift of up to 2 pixels (MNIST centres
20x20 digits in 28x28), then Gaussian noise (sigma 0.05) is added and the result quantised
to uint8 — 10,000 images drawn with replacement from the 1,797 digits, seeded. Like MNIST
it is 784-dimensional with most variance in a few dozen directions.

Both sides are timed from the same float32 pixels in [0, 1], interleaved (ours, sklearn,
ours, sklearn, ...), median of --reps repetitions. Ours = what the command runs: PCA to 50
dimensions, then `cnntools.interpret.tsne.embed(method="auto")`. Trustworthiness
(scikit-learn, 5 neighbours, against the raw pixels) is computed on the same fixed random
3,000-point subset of each embedding, because it needs the N×N distance matrix.

Run: python tests/benchmarks/bench_tsne.py [--n 10000] [--reps 2]
Prints one JSON line per run and a final summary line with the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np


def mnist_like(n: int = 10_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n×784 uint8 MNIST-like digits (see the module docstring) and their labels."""
    from scipy import ndimage
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    base = np.stack([ndimage.zoom(im / 16.0, 20 / 8, order=1) for im in digits.images]).clip(0, 1)
    pick = rng.integers(0, len(base), n)
    shifts = rng.integers(-2, 3, size=(n, 2))
    out = np.zeros((n, 28, 28), np.float32)
    for i, (j, (dy, dx)) in enumerate(zip(pick, shifts)):
        out[i, 4 + dy : 24 + dy, 4 + dx : 24 + dx] = base[j]
    out += rng.normal(0.0, 0.05, out.shape).astype(np.float32)
    return (out.clip(0, 1) * 255).round().astype(np.uint8).reshape(n, 784), digits.target[pick]


def run_cnntools(x: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    from cnntools.interpret import tsne

    reduced, _ = tsne.pca_reduce(x, tsne.default_pca_components(x.shape[1], None), seed)
    points, engine = tsne.embed(reduced, method="auto", seed=seed)
    return points, engine


def run_sklearn(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    return TSNE(random_state=seed).fit_transform(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--trust-points", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="one repetition")
    args = parser.parse_args()
    if args.quick:
        args.reps = 1

    from sklearn.manifold import trustworthiness

    pixels, _ = mnist_like(args.n, args.seed)
    x = pixels.astype(np.float32) / 255.0
    subset = np.sort(np.random.default_rng(12345).choice(len(x), min(args.trust_points, len(x)), replace=False))
    times: dict[str, list[float]] = {"cnntools": [], "sklearn": []}
    trust: dict[str, list[float]] = {"cnntools": [], "sklearn": []}
    engine = "?"
    for rep in range(args.reps):
        for name in ("cnntools", "sklearn"):
            start = time.perf_counter()
            if name == "cnntools":
                points, engine = run_cnntools(x, args.seed)
            else:
                points = run_sklearn(x, args.seed)
            elapsed = time.perf_counter() - start
            tw = float(trustworthiness(x[subset], points[subset], n_neighbors=5))
            times[name].append(elapsed)
            trust[name].append(tw)
            print(json.dumps({"bench": "tsne", "rep": rep, "impl": name, "seconds": round(elapsed, 2),
                              "trustworthiness": round(tw, 4)}), flush=True)
    ours, theirs = statistics.median(times["cnntools"]), statistics.median(times["sklearn"])
    tw_ours, tw_theirs = statistics.median(trust["cnntools"]), statistics.median(trust["sklearn"])
    print(json.dumps({
        "bench": "tsne", "summary": True, "n": args.n, "dim": x.shape[1], "reps": args.reps,
        "engine": f"pca50+{engine}", "cnntools_s": round(ours, 2), "sklearn_s": round(theirs, 2),
        "time_ratio": round(ours / theirs, 3), "target_ratio": 0.5,
        "meets_target": ours / theirs <= 0.5 and abs(tw_ours - tw_theirs) <= 0.01,
        "trustworthiness_cnntools": round(tw_ours, 4), "trustworthiness_sklearn": round(tw_theirs, 4),
        "trustworthiness_diff": round(tw_ours - tw_theirs, 4), "trust_points": len(subset),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
    }), flush=True)


if __name__ == "__main__":
    main()
