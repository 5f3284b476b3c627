"""The long fuzz run: the properties of tests/fuzz_cases.py with many fresh random cases.

Every reader's generated input (calculator arguments, checkpoint bytes, safetensors headers and
metadata, predictions CSVs, matrix files, CIFAR batches, MNIST idx files, images, folders)
must end in a result or one clean `Error:` line — never a traceback, an "unexpected" error, a
hang (30 s per case), a crash or more than 6 GiB of memory. Prints one JSON line per property
(inputs tried, results, clean errors, seconds, ok) and a total line; a failure prints
hypothesis' minimal failing case and exits 1.

    PYTHONPATH=. python tests/benchmarks/fuzz.py --examples 2000
    PYTHONPATH=. python tests/benchmarks/fuzz.py --examples 500 --only "mutated checkpoints"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import fuzz_cases  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000, help="cases per property")
    parser.add_argument("--only", action="append", help="run only this property (repeatable)")
    parser.add_argument("--repeatable", action="store_true", help="the suite's fixed cases instead of fresh random ones")
    args = parser.parse_args()
    os.environ["CNNTOOLS_CACHE"] = "off"
    failed = False
    totals: dict = {}
    for name, prop in fuzz_cases.properties(args.examples, derandomize=args.repeatable).items():
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        try:
            prop()
            ok = True
        except Exception:  # noqa: BLE001 - report and go on with the other properties
            traceback.print_exc()
            ok, failed = False, True
        counts = {k: sum(c[k] for c in fuzz_cases.COUNTS.values()) for k in ("tried", "results", "clean_errors")}
        fuzz_cases.COUNTS.clear()
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
        print(json.dumps({"property": name, **counts, "seconds": round(time.perf_counter() - start, 1), "ok": ok}), flush=True)
    print(json.dumps({"total": totals, "unexpected": 0 if not failed else "see the failure above", "ok": not failed}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
