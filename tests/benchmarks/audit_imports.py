"""Which heavy modules each command imports, and how long they take (`python -X importtime`).

Trains a small digits checkpoint in a temporary folder, runs every command once under
`-X importtime`, and prints a Markdown table: command, heavy top-level modules imported with
their cumulative import seconds (measured on the machine as it is: compare rows, not runs).

    python tests/benchmarks/audit_imports.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT

HEAVY = ("torch", "torchvision", "torch._dynamo", "sympy", "sklearn", "scipy", "matplotlib", "pytorch_grad_cam", "PIL",
         "safetensors", "openTSNE", "timm", "onnx", "onnxruntime", "onnxscript", "tensorboard", "numpy")


def heavy_imports(argv: list[str], env: dict, cwd: Path) -> tuple[int, dict[str, float]]:
    """(exit status, {heavy module: cumulative import seconds}) of one command."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "cnntools", *argv], capture_output=True, text=True,
                          env=env, cwd=cwd)
    found: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)$", line)
        if match and match.group(2) in HEAVY:
            found[match.group(2)] = max(found.get(match.group(2), 0.0), int(match.group(1)) / 1e6)
    return proc.returncode, found


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="audit-imports-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CNNTOOLS_CACHE": str(work / "cache")}
    subprocess.run([sys.executable, "-m", "cnntools", "train", "--epochs", "1", "-o", "m.safetensors", "-q",
                    "--history", "h.jsonl"], env=env, cwd=work, check=True, stdout=subprocess.DEVNULL)
    commands = [
        ["--help"], ["rf-calc", "-k", "3", "-s", "1", "-n", "3"], ["rf-calc", "--arch", "lenet"],
        ["conv-calc", "--in", "32", "-k", "5"], ["info", "m.safetensors"], ["train", "--list-archs"],
        ["dataset-stats", "--data", "digits"], ["train", "--epochs", "1", "-o", "t.safetensors", "-q"],
        ["train", "--epochs", "1", "--dry-run"], ["lr-find", "--data", "digits", "-q"], ["curves", "h.jsonl", "-q", "-o", "c.png"],
        ["eval", "m.safetensors", "-q"], ["confusion", "m.safetensors", "-q", "-o", "cm.png"],
        ["saliency", "m.safetensors", "-q", "-o", "s.png"], ["featmaps", "m.safetensors", "-q", "-o", "f.png"],
        ["filters", "m.safetensors", "-q", "-o", "w.png"], ["tsne", "--data", "digits", "-q", "-o", "t.png"],
        ["export", "m.safetensors", "-q", "-o", "m.onnx"],
    ]
    print("| command | heavy modules imported (cumulative import s) |")
    print("|---|---|")
    for argv in commands:
        code, found = heavy_imports(argv, env, work)
        listed = ", ".join(f"{name} {secs:.2f}" for name, secs in sorted(found.items(), key=lambda kv: -kv[1]) if secs >= 0.01)
        status = "" if code == 0 else f" (exit {code})"
        print(f"| `cnntools {' '.join(argv)}`{status} | {listed or 'none'} |", flush=True)


if __name__ == "__main__":
    main()
