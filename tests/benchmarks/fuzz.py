"""The long fuzz run: the properties of tests/fuzz_cases.py with many fresh random cases.

Every calculator argument list, mutated checkpoint and mutated image must end in a result or
one clean `Error:` line — never a traceback, hang (30 s per case) or crash. Prints one JSON
line per property (cases, seconds, ok); a failure prints hypothesis' minimal failing case and
exits 1.

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
        print(json.dumps({"property": name, "cases": args.examples, "seconds": round(time.perf_counter() - start, 1), "ok": ok}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
