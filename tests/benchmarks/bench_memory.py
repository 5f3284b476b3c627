"""Peak resident memory of `cnntools train` on a CIFAR-10-sized dataset (50,000×3×32×32).

Issue 7, target 7: ≤ 1.5 GB. Each case runs `python -m cnntools train` in a fresh child
process for one epoch (LeNet, batch 128, flip + crop:4, 10% validation split, default
precision) and reads the child's peak resident set size (`ru_maxrss` of the waited-for
child). Two datasets of 50,000 training images:

- `fake:50000` (generated in memory), and
- a CIFAR-10 folder of python pickle batches (5 × 10,000 random images + a test batch),
  written to a temporary folder first: the layout `--data cifar10` reads.

For scale it also reports the peak of a child that only imports torch and cnntools'
training loop. Prints one JSON line per case. A peak is a maximum, not a time, so one run each
is enough; `--epochs` 1 (a full pass over the 45,000 training images).

    python tests/benchmarks/bench_memory.py [--cases fake,cifar] [--arch lenet] [--quick]
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, emit, machine

LIMIT_BYTES = 1.5e9


def write_cifar_folder(root: Path, n_train: int = 50_000, n_test: int = 10_000) -> Path:
    """A cifar-10-batches-py folder of random images in CIFAR's pickle layout."""
    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per = n_train // 5
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, handle, protocol=2)
    return root


def peak_rss(argv: list[str], cwd: str) -> tuple[int, float]:
    """(peak RSS in bytes, wall seconds) of one child process, from its own rusage (wait4)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(argv)} failed:\n{err.read().decode()[-2000:]}")
    return usage.ru_maxrss * 1024, wall  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="fake,cifar")
    parser.add_argument("--arch", default="lenet")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="only the fake case (no pickles written)")
    args = parser.parse_args()
    if args.quick:
        args.cases = "fake"

    with tempfile.TemporaryDirectory(prefix="cnntools-mem-") as tmp:
        base, _ = peak_rss([sys.executable, "-c", "import torch, cnntools.training"], tmp)
        emit({"benchmark": "memory", "case": "import torch + cnntools.training", "peak_rss_mb": round(base / 1e6, 1), **machine()})
        data = {"fake": ["--data", "fake:50000"]}
        if "cifar" in args.cases:
            data["cifar"] = ["--data", "cifar10", "--data-dir", str(write_cifar_folder(Path(tmp) / "cifar"))]
        for case in args.cases.split(","):
            argv = [sys.executable, "-m", "cnntools", "train", *data[case], "--arch", args.arch, "--epochs", str(args.epochs),
                    "--batch-size", "128", "--augment", "flip,crop:4", "--val-split", "0.1", "-o", "m.safetensors", "-q"]
            peak, wall = peak_rss(argv, tmp)
            emit({"benchmark": "memory", "case": f"train {case} 50000x3x32x32", "argv": " ".join(argv[1:]),
                  "peak_rss_mb": round(peak / 1e6, 1), "dataset_mb": round(50_000 * 3 * 32 * 32 / 1e6, 1),
                  "target_mb": LIMIT_BYTES / 1e6, "meets_target": peak <= LIMIT_BYTES, "wall_s": round(wall, 1), **machine()})


if __name__ == "__main__":
    main()
