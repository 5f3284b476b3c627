"""Start-up time of the torch-free commands against `python -c "import torch"`.

Runs each command line in a fresh interpreter several times (interleaved) and prints the
median wall time, CPU time and the ratio to importing torch alone, one JSON line each.

    python tests/benchmarks/bench_startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

CASES = {
    "python (empty)": [sys.executable, "-c", "pass"],
    "import torch": [sys.executable, "-c", "import torch"],
    "cnntools --help": [sys.executable, "-m", "cnntools", "--help"],
    "cnntools rf-calc -k 3 -s 1 -n 3": [sys.executable, "-m", "cnntools", "rf-calc", "-k", "3", "-s", "1", "-n", "3"],
    "cnntools conv-calc --in 32 -k 5": [sys.executable, "-m", "cnntools", "conv-calc", "--in", "32", "-k", "5"],
    "completion (Tab)": [sys.executable, "-m", "cnntools"],
}
# Issue 7, target 1: these take at most 0.15x the wall time of importing torch.
TARGET = 0.15
TARGETED = ("cnntools --help", "cnntools rf-calc -k 3 -s 1 -n 3")
ENV = {"completion (Tab)": {"_CNNTOOLS_COMPLETE": "complete_bash", "COMP_WORDS": "cnntools rf", "COMP_CWORD": "1"}}


def run_once(argv: list[str], env: dict) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="3 repetitions")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 3
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in CASES}
    for name, argv in CASES.items():  # warm the file cache
        run_once(argv, ENV.get(name, {}))
    for _ in range(args.repeats):
        for name, argv in CASES.items():
            times[name].append(run_once(argv, ENV.get(name, {})))
    torch_wall = statistics.median(w for w, _ in times["import torch"])
    for name, samples in times.items():
        wall = statistics.median(w for w, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        target = {"target": TARGET, "meets_target": wall / torch_wall <= TARGET} if name in TARGETED else {}
        print(json.dumps({
            "benchmark": "startup", "case": name, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "vs_import_torch": round(wall / torch_wall, 3), **target, "repeats": args.repeats,
            "cpus": os.cpu_count(), "python": platform.python_version(),
        }))


if __name__ == "__main__":
    main()
