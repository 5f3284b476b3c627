"""Whole commands, fixed costs included, against bare scripts doing the same work (issue 29).

The in-process benchmarks time the work and never see what a command pays before it (imports,
checkpoint loading, data opening, the memory check) or after it (interpreter shutdown). Here
each case is a fresh process timed from outside, the cases interleaved (A B C ... A B C ...),
and each figure is a ratio of medians, printed as one JSON line:

- `eval`, `confusion`, `saliency`, `featmaps` of a digits checkpoint / a bare script that
  imports torch, loads the same weights with safetensors, builds the same network in plain
  torch and does the same job on the same test images (target ≤ 1.3): accuracy and confusion
  matrix, Grad-CAM of 8 images, the feature maps of one image; the `-o FIGURE` variants
  against the bare script drawing the same figure with pyplot, as a notebook would;
- `train`'s fixed cost: its wall time minus its epochs' own seconds (from --history) /
  `python -c "import torch"` (target ≤ 1.5);
- `train --list-archs` / `python -c "import torch"` (target ≤ 0.2);
- the README's quick start (`cnntools train`, 20 epochs, then `cnntools eval`) / a plain
  PyTorch loop with the same data tensors, model, optimiser, augmentation and precision
  (target ≤ 1.15, at the same test accuracy within one image): as people write it, or with
  `--plain tuned` in channels_last with torch's fused Adam, as cnntools trains on a CPU.

With `--baseline DIR` every cnntools case also runs from another checkout (PYTHONPATH=DIR),
interleaved with this one: before and after on the same machine, at the same load.

    python tests/benchmarks/bench_commands.py [--repeats 7] [--quick] [--only eval,train,...] [--baseline /path/to/old/checkout]
        [--plain default|tuned]
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
# test images" (mode eval), "its confusion matrix" (confusion), "the feature maps of one image"
# (featmaps: the 16 most active channels of each block's ReLU), "Grad-CAM of 8 images at the
# last block" (saliency). With a figure path the last three draw what the command draws, with
# pyplot as a notebook does: same panels, colour bars and titles. The network is simple-cnn
# (cnntools' default) written out in plain torch.
BARE = textwrap.dedent("""
    import sys
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from safetensors.torch import load_file

    mode, figure = sys.argv[7], (sys.argv[8] if len(sys.argv) > 8 else None)
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
    x = F.interpolate(images.float() / 255, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = (x - mean) / std
    if mode in ("eval", "confusion"):
        with torch.inference_mode():
            pred = torch.cat([model(b) for b in x.split(256)]).argmax(1)
        print(f"accuracy {(pred == labels).float().mean().item():.4f}")
        cm = np.zeros((10, 10), dtype=np.int64)
        np.add.at(cm, (labels.numpy(), pred.numpy()), 1)
        print(cm)
        if figure:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            fig, ax = plt.subplots(figsize=(6.7, 5.5))
            im = ax.imshow(cm, cmap="Blues", vmin=0)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, shrink=0.8, label="count")
            ax.set_xticks(range(10)); ax.set_yticks(range(10))
            ax.set_xlabel("predicted class"); ax.set_ylabel("true class"); ax.set_title("Confusion matrix")
            for i in range(10):
                for j in range(10):
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > 0.55 * cm.max() else "black")
            fig.tight_layout()
            fig.savefig(figure, bbox_inches="tight")
    elif mode == "featmaps":
        acts = {}
        relus = [m for m in model[0] if isinstance(m, nn.ReLU)]
        for i, relu in enumerate(relus):
            relu.register_forward_hook(lambda m, a, out, i=i: acts.__setitem__(i, out[0]))
        with torch.inference_mode():
            model(x[:1])
        for i, a in acts.items():
            print(i, tuple(a.shape), float(a.min()), float(a.max()), float(a.mean()), float(a.std()), float((a == 0).float().mean()))
        if figure:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            fig = plt.figure(figsize=(9.5, 16))
            subfigs = fig.subfigures(len(acts), 1)
            for sub, (i, a) in zip(subfigs, acts.items()):
                top = a.mean((1, 2)).argsort(descending=True)[:16]
                axes = sub.subplots(3, 8)
                axes[0, 0].imshow(images[0, 0], cmap="gray"); axes[0, 0].set_title("input", fontsize=8)
                for ax, c in zip(axes.flat[1:], top):
                    im = ax.imshow(a[c], vmin=0, vmax=float(a.max())); ax.set_title(f"ch {int(c)}", fontsize=8)
                for ax in axes.flat:
                    ax.set_xticks([]); ax.set_yticks([])
                for ax in axes.flat[17:]:
                    ax.axis("off")
                sub.colorbar(im, ax=axes, label="activation")
                sub.suptitle(f"block {i}: 16 most active channels")
            fig.savefig(figure, bbox_inches="tight")
    elif mode == "saliency":
        n, layer, acts = 8, model[0][7], {}
        layer.register_forward_hook(lambda m, a, out: acts.__setitem__("a", out))
        logits = model(x[:n])
        pred = logits.argmax(1)
        (grad,) = torch.autograd.grad(logits.gather(1, pred[:, None]).sum(), acts["a"])
        a = acts["a"].detach()
        cam = F.relu((grad.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        cam = cam - cam.amin((1, 2), keepdim=True)
        cam = cam / (cam.amax((1, 2), keepdim=True) + 1e-7)
        print(pred.tolist(), [divmod(int(c.argmax()), size) for c in cam])
        if figure:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            fig, axes = plt.subplots(n, 2, figsize=(4.5, 2.3 * n))
            shown = F.interpolate(images[:n].float(), size=(size, size), mode="bilinear", antialias=True)[:, 0]
            for i in range(n):
                axes[i, 0].imshow(shown[i], cmap="gray"); axes[i, 0].set_title(f"#{i}\\nlabel: {int(labels[i])}", fontsize=9)
                axes[i, 1].imshow(shown[i], cmap="gray")
                im = axes[i, 1].imshow(cam[i], cmap="jet", alpha=0.5, vmin=0, vmax=1)
                axes[i, 1].set_title(f"pred: {int(pred[i])}", fontsize=9)
                for ax in axes[i]:
                    ax.set_xticks([]); ax.set_yticks([])
            fig.colorbar(im, ax=axes, shrink=0.2, label="Grad-CAM, scaled to 0-1 per map")
            fig.suptitle("Saliency: gradcam")
            fig.savefig(figure, bbox_inches="tight")
""")

# The README's quick start (`cnntools train`, then `cnntools eval model.safetensors`) as a
# plain PyTorch loop: the same data tensors (cnntools' own splits at the model's size, uint8,
# saved by the benchmark; the loop's resize to that size leaves them as they are), the
# same model, optimiser (Adam 1e-3, batch 32, 20 epochs), augmentation (rotate ±10°, then a
# random 1-px shifted crop, per image), precision (bf16 autocast where cnntools picks it), a
# validation pass per epoch keeping the best weights, the test accuracy, the weights saved.
# As people write it: NCHW, torch.optim.Adam's default step (tensor by tensor on the CPU).
# `--plain tuned` gives it what cnntools' CPU training uses: channels_last and torch's fused
# Adam kernels.
PLAIN_QUICKSTART = textwrap.dedent("""
    import copy, math, sys
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from safetensors.torch import save_file

    data = np.load(sys.argv[1])
    size, mean, std, precision, seed, out = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], int(sys.argv[6]), sys.argv[7]
    torch.manual_seed(seed)

    def split(name):
        x = torch.from_numpy(data[name + "_x"]).float() / 255
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return x, torch.from_numpy(data[name + "_y"]).long()

    (xtr, ytr), (xva, yva), (xte, yte) = split("train"), split("val"), split("test")
    layers, channels = [], 1
    for width in (32, 64, 128):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        channels = width
    model = nn.Sequential(nn.Sequential(*layers), nn.Flatten(),
                          nn.Sequential(nn.Dropout(0.25), nn.Linear(128 * (size // 8) ** 2, 256), nn.ReLU(), nn.Linear(256, 10)))
    tuned = sys.argv[8] == "tuned"
    if tuned:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, **({"fused": True} if tuned else {}))
    criterion = nn.CrossEntropyLoss()
    bf16 = precision == "bf16"

    def augment(x):
        n = x.shape[0]
        a = (torch.rand(n) * 2 - 1) * (10 * math.pi / 180)
        zero = torch.zeros(n)
        theta = torch.stack([torch.stack([a.cos(), -a.sin(), zero], 1), torch.stack([a.sin(), a.cos(), zero], 1)], 1)
        x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
        x = F.pad(x, (1, 1, 1, 1))
        dy, dx = torch.randint(0, 3, (2, n, 1, 1))
        rows = (torch.arange(size).view(1, size, 1) + dy).expand(n, size, size)
        cols = (torch.arange(size).view(1, 1, size) + dx).expand(n, size, size)
        return x[torch.arange(n).view(n, 1, 1), 0, rows, cols].unsqueeze(1)

    def accuracy(x, y):
        model.eval()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = torch.cat([model((b - mean) / std) for b in x.split(500)]).argmax(1)
        return (pred == y).float().mean().item()

    best, best_acc = None, -1.0
    for epoch in range(20):
        model.train()
        order = torch.randperm(len(xtr))
        for i in range(0, len(order), 32):
            idx = order[i:i + 32]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = criterion(model((augment(xtr[idx]) - mean) / std), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        acc = accuracy(xva, yva)
        if acc > best_acc:
            best, best_acc = copy.deepcopy(model.state_dict()), acc
    model.load_state_dict(best)
    save_file({k: v.contiguous() for k, v in best.items()}, out)
    print(f"accuracy {accuracy(xte, yte):.6f}")
""")

TARGETS = {"eval": 1.3, "confusion": 1.3, "saliency": 1.3, "featmaps": 1.3, "train fixed cost": 1.5,
           "train --list-archs": 0.2, "quick start": 1.15}
CASES = ("eval", "confusion", "saliency", "featmaps", "train", "list-archs", "quickstart")


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


def quickstart_data(work: Path, seed: int, size: int) -> tuple[Path, str]:
    """cnntools' own digits splits for `--seed SEED` (train with its 10% validation carved out,
    val, test) at the model's size, as the uint8 tensors `train` and `eval` run on, for the plain
    loop; and the precision `--precision auto` picks here."""
    import numpy as np
    import torch

    from cnntools.core.runtime import resolve_precision
    from cnntools.data.registry import load_splits

    splits = load_splits("digits", ["train", "val", "test"], None, False, 0.1, seed, None)
    arrays = {}
    for name, split in splits.items():
        split = split.resized(size)
        arrays[name + "_x"], arrays[name + "_y"] = split.images.numpy(), split.labels.numpy()
    path = work / f"quickstart-{seed}.npz"
    np.savez(path, **arrays)
    return path, resolve_precision("auto", torch.device("cpu"))


def quickstart_round(work: Path, env: dict, cnn: list, plain: list, seed: int, size: int) -> dict:
    """One README quick start (`train`, then `eval`) and one plain loop with the same seed (the
    validation split and the initial weights): walls and test accuracies."""
    model = work / "qs.safetensors"
    start = time.perf_counter()
    subprocess.run([*cnn, "train", "-q", "-o", str(model), "--seed", str(seed)], env=env, check=True, stdout=subprocess.DEVNULL)
    result = subprocess.run([*cnn, "eval", str(model), "--format", "json"], env=env, check=True, capture_output=True, text=True)
    cnn_wall = time.perf_counter() - start
    cnn_acc = json.loads(result.stdout)["models"][0]["accuracy"]
    start = time.perf_counter()
    data, precision = quickstart_data(work, seed, size)
    result = subprocess.run([*plain[:2], str(data), *plain[2:5], precision, str(seed), *plain[5:]], env=env, check=True,
                            capture_output=True, text=True)
    plain_wall = time.perf_counter() - start
    return {"cnntools": cnn_wall, "plain": plain_wall, "cnntools_acc": cnn_acc,
            "plain_acc": float(result.stdout.split()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--quick", action="store_true", help="5 rounds, train 1 epoch")
    parser.add_argument("--baseline", help="another checkout to time the same cnntools commands from (before/after)")
    parser.add_argument("--only", help=f"comma-separated cases to run ({', '.join(CASES)})")
    parser.add_argument("--plain", choices=("default", "tuned"), default="default",
                        help="the quick start's plain loop as people write it, or tuned: channels_last and fused Adam")
    args = parser.parse_args()
    repeats = 5 if args.quick else max(5, args.repeats)
    epochs = "1" if args.quick else "3"
    only = set(args.only.split(",")) if args.only else set(CASES)
    if only - set(CASES):
        parser.error(f"unknown case(s) {', '.join(sorted(only - set(CASES)))}: use {', '.join(CASES)}")

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
    bare = [sys.executable, str(bare_script), str(model), str(synthetic.DIGITS_FILE), str(indices),
            str(prep["size"]), str(prep["mean"]), str(prep["std"])]
    history = work / "history.jsonl"
    cnn = [sys.executable, "-m", "cnntools"]
    # name: (its argv, the bare case it is compared with or None)
    commands = {
        "eval": ([*cnn, "eval", str(model), "-q"], "bare eval"),
        "confusion": ([*cnn, "confusion", str(model), "-q"], "bare eval"),
        "confusion -o": ([*cnn, "confusion", str(model), "-q", "-o", str(work / "cm.png")], "bare confusion -o"),
        "saliency": ([*cnn, "saliency", str(model), "-q"], "bare saliency"),
        "saliency -o": ([*cnn, "saliency", str(model), "-q", "-o", str(work / "sal.png")], "bare saliency -o"),
        "featmaps": ([*cnn, "featmaps", str(model), "-q"], "bare featmaps"),
        "featmaps -o": ([*cnn, "featmaps", str(model), "-q", "-o", str(work / "fm.png")], "bare featmaps -o"),
        "train": ([*cnn, "train", "--epochs", epochs, "-o", str(work / "t.safetensors"), "-q", "--history", str(history)], None),
        "list-archs": ([*cnn, "train", "--list-archs"], None),
    }
    bares = {
        "bare eval": [*bare, "eval"],
        "bare confusion -o": [*bare, "confusion", str(work / "cm-bare.png")],
        "bare saliency": [*bare, "saliency"],
        "bare saliency -o": [*bare, "saliency", str(work / "sal-bare.png")],
        "bare featmaps": [*bare, "featmaps"],
        "bare featmaps -o": [*bare, "featmaps", str(work / "fm-bare.png")],
    }
    picked = {name: spec for name, spec in commands.items() if name.split(" ")[0] in only}
    cases: dict[str, tuple[list, dict, Path | None]] = {"import torch": ([sys.executable, "-c", "import torch"], env, None)}
    for name in sorted({ref for _, ref in picked.values() if ref}):
        cases[name] = (bares[name], env, None)
    trees = {"": env}
    if args.baseline:
        trees[" (baseline)"] = {**env, "PYTHONPATH": str(Path(args.baseline).resolve())}
    for name, (argv, _) in picked.items():
        for suffix, tree_env in trees.items():
            cases[name + suffix] = (argv, tree_env, history if name == "train" else None)
    plain = None
    if "quickstart" in only:
        plain_script = work / "plain_quickstart.py"
        plain_script.write_text(PLAIN_QUICKSTART)
        # argv without the data file, precision and seed, which each round puts in
        plain = [sys.executable, str(plain_script), str(prep["size"]), str(prep["mean"]), str(prep["std"]),
                 str(work / "plain.safetensors"), args.plain]

    for argv, case_env, hist in cases.values():  # warm the page cache and the stores
        run(argv, case_env, hist)
    times: dict[str, list[float]] = {name: [] for name in cases}
    rounds = []
    for seed in range(repeats):
        for name, (argv, case_env, hist) in cases.items():
            times[name].append(run(argv, case_env, hist))
        if plain:
            rounds.append(quickstart_round(work, env, cnn, plain, seed, prep["size"]))

    torch_s = statistics.median(times["import torch"])
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[:3]
    for name, samples in times.items():
        base = name.split(" (")[0]
        wall = statistics.median(samples)
        record = {"benchmark": "commands", "case": name, "median_s": round(wall, 3),
                  "range_s": [round(min(samples), 3), round(max(samples), 3)], "repeats": repeats}
        if base in commands and commands[base][1]:
            reference = commands[base][1]
            record.update(ratio=f"case / {reference}", value=round(wall / statistics.median(times[reference]), 3),
                          target=TARGETS[base.split(" ")[0]])
        elif base == "train":
            record.update(case=name.replace("train", "train fixed cost"), ratio="(wall - epochs' seconds) / import torch",
                          value=round(wall / torch_s, 3), target=TARGETS["train fixed cost"])
        elif base == "list-archs":
            record.update(case=name.replace("list-archs", "train --list-archs"), ratio="case / import torch",
                          value=round(wall / torch_s, 3), target=TARGETS["train --list-archs"])
        if "target" in record:
            record["meets_target"] = record["value"] <= record["target"]
        print(json.dumps(record), flush=True)
    if rounds:
        cnn_wall = statistics.median(r["cnntools"] for r in rounds)
        plain_wall = statistics.median(r["plain"] for r in rounds)
        cnn_acc = statistics.fmean(r["cnntools_acc"] for r in rounds)
        plain_acc = statistics.fmean(r["plain_acc"] for r in rounds)
        test_images = 359
        record = {"benchmark": "commands", "case": "quick start", "ratio": "(train + eval) / plain loop",
                  "plain_loop": args.plain,
                  "cnntools_s": round(cnn_wall, 2), "plain_s": round(plain_wall, 2), "value": round(cnn_wall / plain_wall, 3),
                  "range_s": {k: [round(min(r[k] for r in rounds), 2), round(max(r[k] for r in rounds), 2)] for k in ("cnntools", "plain")},
                  "mean_test_accuracy": {"cnntools": round(cnn_acc, 4), "plain": round(plain_acc, 4)},
                  "test_accuracies": {k: [round(r[k + "_acc"], 4) for r in rounds] for k in ("cnntools", "plain")},
                  "target": TARGETS["quick start"],
                  "repeats": repeats}
        record["meets_target"] = record["value"] <= record["target"] and abs(cnn_acc - plain_acc) * test_images <= 1.0
        print(json.dumps(record), flush=True)
    print(json.dumps({"benchmark": "commands", "machine": machine(), "loadavg": load}), flush=True)


if __name__ == "__main__":
    main()
