"""Shared pieces of the benchmarks: interleaved timing, medians, one JSON line per result.

Absolute times on a shared machine are noise; every figure a benchmark reports is a ratio
of two things measured in the same process, interleaved (A, B, C, A, B, C, ...), taken as
the ratio of the medians over the repetitions.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

# Run as `python tests/benchmarks/bench_X.py` from a checkout: import that checkout's cnntools.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What the numbers were measured on."""
    info = {
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
    }
    if "torch" in sys.modules:
        import torch

        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    return info


def emit(record: dict) -> None:
    """One JSON line on stdout (flushed, so a long run shows progress)."""
    print(json.dumps(record), flush=True)


def sync(device) -> None:
    if getattr(device, "type", str(device)).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def interleaved(cases: dict[str, Callable[[], int]], repeats: int, warmup: int = 1, device="cpu") -> dict[str, list[float]]:
    """Run every case once per round, `repeats` rounds after `warmup` untimed ones.

    Each case returns how many items (images) it processed; the result maps each case to
    its throughputs (items per second), one per round.
    """
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            sync(device)
            start = time.perf_counter()
            items = fn()
            sync(device)
            rates[name].append(items / (time.perf_counter() - start))
    return rates


def median(values) -> float:
    return float(statistics.median(values))


def ratio_record(benchmark: str, rates: dict[str, list[float]], numerator: str, denominator: str, target: float,
                 higher_is_better: bool = True, **extra) -> dict:
    """The ratio of two cases' median throughputs, with the target it is held to."""
    a, b = median(rates[numerator]), median(rates[denominator])
    value = a / b
    return {
        "benchmark": benchmark,
        "ratio": f"{numerator} / {denominator}",
        "value": round(value, 3),
        "target": target,
        "meets_target": value >= target if higher_is_better else value <= target,
        f"{numerator}_per_s": round(a, 1),
        f"{denominator}_per_s": round(b, 1),
        "repeats": len(rates[numerator]),
        **extra,
    }


def add_threads_option(parser) -> None:
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads for every case (default: torch's choice, one per core)")


def set_threads(threads: int) -> None:
    """Same thread count for every case of a run. On a machine shared with other busy
    processes, 1 thread avoids OpenMP barriers waiting for a descheduled second thread."""
    if threads:
        import torch

        torch.set_num_threads(threads)
