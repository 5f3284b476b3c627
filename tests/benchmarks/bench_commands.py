"""Whole commands, fixed costs included, against bare scripts doing the same work (issue 29).

The in-process benchmarks time the work and never see what a command pays before it (imports,
checkpoint loading, data opening, the memory check) or after it (interpreter shutdown). Here
each case is a fresh process timed from outside, the cases interleaved (A B C ... A B C ...),
and each figure is a ratio of medians, printed as one JSON line:

- `eval`, `confusion`, `saliency`, `featmaps` of a digits checkpoint / a bare script that
  imports torch, loads the same weights with safetensors, builds the same network in plain
  torch and runs the same 359 test images through it (target ≤ 1.3);
- `train`'s fixed cost: its wall time minus its epochs' own seconds (from --history) /
  `python -c "import torch"` (target ≤ 1.5);
- `train --list-archs` / `python -c "import torch"` (target ≤ 0.2).

With `--baseline DIR` every cnntools case also runs from another checkout (PYTHONPATH=DIR),
interleaved with this one: before and after on the same machine, at the same load.

    python tests/benchmarks/bench_commands.py [--repeats 7] [--quick] [--baseline /path/to/old/checkout]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from common import ROOT, machine

# The bare script: what a person would write for "accuracy of this checkpoint on the digits
# test images". The network is simple-cnn (cnntools' default) written out in plain torch.
BARE = textwrap.dedent("""
    import sys
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from safetensors.torch import load_file

    weights = load_file(sys.argv[1])
    digits = np.load(sys.argv[2])
    test = np.load(sys.argv[3])
    images = torch.from_numpy(((digits["counts"].astype(np.int64) * 255 + 8) // 16).astype(np.uint8))[test][:, None]
    labels = torch.from_numpy(digits["labels"].astype(np.int64))[test]
    size, mean, std = int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
    layers, channels = [], 1
    for width in (32, 64, 128):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        channels = width
    side = size // 8
    model = nn.Sequential(nn.Sequential(*layers), nn.Flatten(),
                          nn.Sequential(nn.Dropout(0.25), nn.Linear(128 * side * side, 256), nn.ReLU(), nn.Linear(256, 10)))
    state = {k.replace("features.", "0.").replace("classifier.", "2."): v for k, v in weights.items()
             if not k.startswith("_resume/")}
    model.load_state_dict(state)
    model.eval()
    with torch.inference_mode():
        x = F.interpolate(images.float() / 255, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        logits = torch.cat([model((b - mean) / std) for b in x.split(256)])
    print(f"accuracy {(logits.argmax(1) == labels).float().mean().item():.4f}")
""")

TARGETS = {"eval": 1.3, "confusion": 1.3, "saliency": 1.3, "featmaps": 1.3, "train fixed cost": 1.5, "train --list-archs": 0.2}


def run(argv, env, history: Path | None = None) -> float:
    """Wall seconds of one process (its output discarded); for `train`, minus its epochs' seconds."""
    if history is not None and history.exists():
        history.unlink()
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed: {proc.stderr[-2000:]}")
    if history is not None:
        epochs = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
        wall -= sum(r["seconds"] for r in epochs if "epoch" in r and "seconds" in r)
    return wall


def checkpoint(work: Path, env: dict) -> tuple[Path, Path, dict]:
    """A digits checkpoint trained here (2 epochs), the test split's indices, its preprocessing."""
    import numpy as np

    model = work / "m.safetensors"
    subprocess.run([sys.executable, "-m", "cnntools", "train", "--epochs", "2", "-o", str(model), "-q"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    sys.path.insert(0, str(ROOT))
    from cnntools.checkpoint import read_checkpoint
    from cnntools.data import synthetic
    from cnntools.data.imageset import stratified_split

    _, meta = read_checkpoint(str(model))
    with np.load(synthetic.DIGITS_FILE) as stored:
        _, test = stratified_split(stored["labels"], synthetic.DIGITS_TEST_FRACTION, synthetic.DIGITS_SPLIT_SEED)
    indices = work / "test.npy"
    np.save(indices, test)
    return model, indices, {"size": meta.image_size, "mean": meta.mean[0], "std": meta.std[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--quick", action="store_true", help="5 rounds, train 1 epoch")
    parser.add_argument("--baseline", help="another checkout to time the same cnntools commands from (before/after)")
    parser.add_argument("--only", help="comma-separated case names to run (eval, confusion, saliency, featmaps, train, list-archs)")
    args = parser.parse_args()
    repeats = 5 if args.quick else max(5, args.repeats)
    epochs = "1" if args.quick else "3"

    work = Path(tempfile.mkdtemp(prefix="bench-commands-"))
    # `python -m cnntools` puts the working directory first on sys.path: run from a checkout,
    # every case (--baseline's too) would import that checkout's cnntools, not PYTHONPATH's.
    os.chdir(work)
    # Children use compiled bytecode, as an installed package does (PYTHONDONTWRITEBYTECODE
    # would make every run compile cnntools' modules again: 0.2 s of --list-archs' 0.6 s).
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPATH=str(ROOT), CNNTOOLS_CACHE=str(work / "cache"))
    model, indices, prep = checkpoint(work, env)
    from cnntools.data import synthetic

    bare_script = work / "bare.py"
    bare_script.write_text(BARE)
    history = work / "history.jsonl"
    cnn = [sys.executable, "-m", "cnntools"]
    commands = {
        "eval": [*cnn, "eval", str(model), "-q"],
        "confusion": [*cnn, "confusion", str(model), "-q", "-o", str(work / "cm.png")],
        "saliency": [*cnn, "saliency", str(model), "-q", "-o", str(work / "sal.png")],
        "featmaps": [*cnn, "featmaps", str(model), "-q", "-o", str(work / "fm.png")],
        "train": [*cnn, "train", "--epochs", epochs, "-o", str(work / "t.safetensors"), "-q", "--history", str(history)],
        "list-archs": [*cnn, "train", "--list-archs"],
    }
    only = set(args.only.split(",")) if args.only else set(commands)
    cases: dict[str, tuple[list, dict, Path | None]] = {
        "bare script": ([sys.executable, str(bare_script), str(model), str(synthetic.DIGITS_FILE), str(indices),
                         str(prep["size"]), str(prep["mean"]), str(prep["std"])], env, None),
        "import torch": ([sys.executable, "-c", "import torch"], env, None),
    }
    trees = {"": env}
    if args.baseline:
        trees[" (baseline)"] = {**env, "PYTHONPATH": str(Path(args.baseline).resolve())}
    for name, argv in commands.items():
        if name in only:
            for suffix, tree_env in trees.items():
                cases[name + suffix] = (argv, tree_env, history if name == "train" else None)

    for argv, case_env, hist in cases.values():  # warm the page cache and the stores
        run(argv, case_env, hist)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (argv, case_env, hist) in cases.items():
            times[name].append(run(argv, case_env, hist))

    bare = statistics.median(times["bare script"])
    torch_s = statistics.median(times["import torch"])
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[:3]
    for name, samples in times.items():
        base = name.split(" (")[0]
        wall = statistics.median(samples)
        record = {"benchmark": "commands", "case": name, "median_s": round(wall, 3),
                  "range_s": [round(min(samples), 3), round(max(samples), 3)], "repeats": repeats}
        if base in ("eval", "confusion", "saliency", "featmaps"):
            record.update(ratio="case / bare script", value=round(wall / bare, 3), target=TARGETS[base])
        elif base == "train":
            record.update(case=name.replace("train", "train fixed cost"), ratio="(wall - epochs' seconds) / import torch",
                          value=round(wall / torch_s, 3), target=TARGETS["train fixed cost"])
        elif base == "list-archs":
            record.update(case=name.replace("list-archs", "train --list-archs"), ratio="case / import torch",
                          value=round(wall / torch_s, 3), target=TARGETS["train --list-archs"])
        if "target" in record:
            record["meets_target"] = record["value"] <= record["target"]
        print(json.dumps(record), flush=True)
    print(json.dumps({"benchmark": "commands", "machine": machine(), "loadavg": load}), flush=True)


if __name__ == "__main__":
    main()
