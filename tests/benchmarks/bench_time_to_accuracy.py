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
    parser.add_argument("extra", nargs="*", help="extra `cnntools train` options (after --)")
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
