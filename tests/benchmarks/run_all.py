"""Run every benchmark of issue 7 and print their JSON lines, then a summary table.

    python tests/benchmarks/run_all.py [--quick] [--threads N] [--only train,eval,...]

Each benchmark runs in its own process, one after the other (never two at once: they
would time each other). `--quick` passes each one its --quick sizes (a few minutes in all
on 2 cores; without it about twice that). `--threads N` sets torch's intra-op threads in
every benchmark that runs torch in-process and OMP_NUM_THREADS for the CLI children: on a
machine shared with other busy processes, 1 avoids OpenMP barriers waiting for a
descheduled second thread (see the README's Performance section). The JSON lines go to
stdout (also written to --jsonl FILE when given); the summary table goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name → (script, takes --threads)
BENCHMARKS = {
    "startup": ("bench_startup.py", False),
    "train": ("bench_train.py", True),
    "precision": ("bench_precision.py", True),
    "eval": ("bench_eval.py", True),
    "tsne": ("bench_tsne.py", False),
    "saliency": ("bench_saliency.py", True),
    "memory": ("bench_memory.py", False),
    "store": ("bench_store.py", False),
    "time_to_accuracy": ("bench_time_to_accuracy.py", False),
    "commands": ("bench_commands.py", False),
    "layout": ("bench_layout.py", True),
    "optimizers": ("bench_optimizers.py", True),
}


def summary_line(record: dict) -> str | None:
    if "meets_target" not in record:
        return None
    name = record.get("benchmark") or record.get("bench")
    ratio = record.get("ratio")
    detail = str(record.get("case") or (ratio if isinstance(ratio, str) else ""))
    if "batch_size" in record and name == "train_data_path":
        detail += f" @ batch {record['batch_size']}"
    value = next((record[k] for k in ("value", "vs_import_torch", "time_ratio", "peak_rss_mb", "test_accuracy", "difference")
                  if k in record), ratio if isinstance(ratio, (int, float)) else "?")
    target = next((record[k] for k in ("target", "target_ratio", "target_mb", "target_accuracy", "noise_tolerance")
                   if k in record), "?")
    return f"{'ok  ' if record['meets_target'] else 'MISS'}  {name!s:28} {detail:45} {value!s:>9}  target {target}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(BENCHMARKS))
    parser.add_argument("--jsonl", help="also write the JSON lines to this file")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    # Every benchmark (and the CLI children they start) imports this checkout's cnntools.
    root = str(HERE.parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    lines, summary = [], []
    for name in names:
        script, takes_threads = BENCHMARKS[name]
        argv = [sys.executable, str(HERE / script)]
        if name == "time_to_accuracy":
            pass  # the README's job as it is; --quick does not shorten it
        elif args.quick:
            argv.append("--quick")
        if takes_threads and args.threads:
            argv += ["--threads", str(args.threads)]
        print(f"# {name}: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            text = summary_line(record)
            if text:
                summary.append(text)
        if proc.wait() != 0:
            summary.append(f"FAIL  {name} exited {proc.returncode}")
        print(f"# {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    if args.jsonl:
        Path(args.jsonl).write_text("".join(lines))
    print("\n".join(["", "Summary (value vs target):", *summary]), file=sys.stderr)


if __name__ == "__main__":
    main()
