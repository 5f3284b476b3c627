"""Time to accuracy of the README's main job: `cnntools train` on digits, then `cnntools eval`.

Issue 7, target 8: the default `cnntools train` (simple-cnn on the embedded digits, all
defaults) must reach ≥ 97% test accuracy (`cnntools eval model.safetensors`, digits test
split). Reports the wall time of the `train` process and the share of it spent before
the first training step: interpreter start, imports, loading and preparing the data,
building the model and optimizer — everything up to `Trainer.run` starting its first epoch.

The train command runs in a fresh child process through a small wrapper that records the
wall-clock time at which `Trainer.run` is entered; the parent records when it started the
child and when the child exited. Prints one JSON line per run and a summary line.

    python tests/benchmarks/bench_time_to_accuracy.py [--repeats 1] [-- extra train options]

Issue 29, item 6: with `--mnist DIR` (DIR holding the public MNIST images as class folders,
`DIR/train/<digit>/*.png` and `DIR/test/<digit>/*.png`) it runs the recipe
`examples/mnist-fast.toml` on the first 10,000 training images (by sorted file name) for
`--repeats` seeds and tests each model on the official 10,000 test images. Targets: ≥ 99.0%
test accuracy on average over the seeds, ≤ 30 s wall for the `train` command. Without
`--mnist` that case is skipped with a reason (MNIST cannot be downloaded here).

    python tests/benchmarks/bench_time_to_accuracy.py --mnist DIR [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, emit, machine

TARGET_ACC = 0.97
MNIST_ACC, MNIST_WALL, MNIST_TRAIN = 0.99, 30.0, 10_000
RECIPE = ROOT / "examples" / "mnist-fast.toml"

# Runs the real CLI; only wraps Trainer.run to note when training starts.
WRAPPER = """
import os, sys, time
from cnntools import training

_run = training.Trainer.run

def run(self):
    with open(os.environ["CNNTOOLS_BENCH_MARK"], "w") as handle:
        handle.write(repr(time.time()))
    return _run(self)

training.Trainer.run = run
from cnntools.cli.app import main
sys.argv = ["cnntools"] + sys.argv[1:]
main()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--mnist", help="a folder of the public MNIST images (train/ and test/ class folders): run the recipe")
    parser.add_argument("extra", nargs="*", help="extra `cnntools train` options (after --)")
    args = parser.parse_args()
    if args.mnist:
        mnist_recipe(args.mnist, args.repeats)
        return

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    walls, shares, accs = [], [], []
    with tempfile.TemporaryDirectory(prefix="cnntools-tta-") as tmp:
        mark = Path(tmp) / "mark"
        for rep in range(args.repeats):
            start = time.time()
            subprocess.run([sys.executable, "-c", WRAPPER, "train", "-q", *args.extra], cwd=tmp, check=True,
                           env={**env, "CNNTOOLS_BENCH_MARK": str(mark)}, stdout=subprocess.DEVNULL)
            wall = time.time() - start
            before = float(mark.read_text()) - start
            result = subprocess.run([sys.executable, "-m", "cnntools", "eval", "model.safetensors", "--format", "json"],
                                    cwd=tmp, check=True, env=env, capture_output=True, text=True)
            acc = json.loads(result.stdout)["models"][0]["accuracy"]
            walls.append(wall)
            shares.append(before / wall)
            accs.append(acc)
            emit({"benchmark": "time_to_accuracy", "rep": rep, "command": " ".join(["cnntools", "train", *args.extra]),
                  "train_wall_s": round(wall, 2), "before_first_step_s": round(before, 2),
                  "share_before_first_step": round(before / wall, 3), "test_accuracy": acc})
    acc = statistics.median(accs)
    emit({"benchmark": "time_to_accuracy", "summary": True, "data": "digits (test split, 359 images)",
          "train_wall_s": round(statistics.median(walls), 2), "share_before_first_step": round(statistics.median(shares), 3),
          "test_accuracy": acc, "target_accuracy": TARGET_ACC, "meets_target": acc >= TARGET_ACC,
          "repeats": args.repeats, **machine()})
    mnist_recipe(None, args.repeats)  # says why the MNIST case did not run


def first_images(source: Path, target: Path, count: int) -> None:
    """Link the first `count` images of `source` (class folders, files in sorted order) into `target`."""
    files = sorted((f for f in source.glob("*/*") if f.is_file()), key=lambda f: (f.name, f.parent.name))[:count]
    for file in files:
        (target / file.parent.name).mkdir(parents=True, exist_ok=True)
        os.symlink(file.resolve(), target / file.parent.name / file.name)


def mnist_recipe(folder: str | None, repeats: int) -> None:
    """examples/mnist-fast.toml on MNIST's first 10,000 training images, tested on the official test set."""
    root = Path(folder) if folder else None
    if root is None or not (root / "train").is_dir() or not (root / "test").is_dir():
        emit({"benchmark": "time_to_accuracy_mnist", "skipped": True,
              "reason": "needs --mnist DIR with the public MNIST images as DIR/train/<digit>/ and DIR/test/<digit>/ "
                        "(MNIST cannot be downloaded on this machine)"})
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    walls, accs = [], []
    with tempfile.TemporaryDirectory(prefix="cnntools-mnist-") as tmp:
        subset = Path(tmp) / "train10k"
        first_images(root / "train", subset, MNIST_TRAIN)
        mark = Path(tmp) / "mark"
        # A cache of its own: the first run decodes the 10,000 PNGs into the image store (what
        # a user's first run pays), the later ones open the store.
        env = {**env, "CNNTOOLS_CACHE": str(Path(tmp) / "cache"), "CNNTOOLS_BENCH_MARK": str(mark)}
        for seed in range(repeats):
            start = time.time()
            subprocess.run([sys.executable, "-c", WRAPPER, "train", "-q", "--config", str(RECIPE), "--data", str(subset),
                            "--seed", str(seed), "-o", "m.safetensors"], cwd=tmp, check=True, env=env, stdout=subprocess.DEVNULL)
            wall = time.time() - start
            before = float(mark.read_text()) - start
            result = subprocess.run([sys.executable, "-m", "cnntools", "eval", "m.safetensors", "--data", str(root / "test"), "--split", "train",
                                     "--format", "json"], cwd=tmp, check=True, env=env, capture_output=True, text=True)
            acc = json.loads(result.stdout)["models"][0]["accuracy"]
            walls.append(wall)
            accs.append(acc)
            emit({"benchmark": "time_to_accuracy_mnist", "seed": seed, "image_store": "built" if seed == 0 else "reused",
                  "train_wall_s": round(wall, 2), "before_first_step_s": round(before, 2), "test_accuracy": acc})
    mean_acc = statistics.fmean(accs)
    emit({"benchmark": "time_to_accuracy_mnist", "summary": True, "recipe": str(RECIPE.relative_to(ROOT)),
          "train_images": MNIST_TRAIN, "train_wall_s": round(statistics.median(walls), 2),
          "train_wall_range_s": [round(min(walls), 2), round(max(walls), 2)], "mean_test_accuracy": round(mean_acc, 5),
          "meets_target": mean_acc >= MNIST_ACC and statistics.median(walls) <= MNIST_WALL,
          "targets": {"mean_test_accuracy": MNIST_ACC, "train_wall_s": MNIST_WALL}, "repeats": repeats, **machine()})


if __name__ == "__main__":
    main()
