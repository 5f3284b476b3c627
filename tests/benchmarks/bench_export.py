"""Export check of every built-in architecture: `cnntools export` to .onnx and .pt2, and the
numbers the command's own check reports (max |Δlogit| against PyTorch, top-1 agreement)
on real digits test images.

Each architecture is trained for --steps Adam steps on digits (vgg16: random init unless
--train-vgg, its 134 M parameters make even a few steps slow on a CPU) and saved as a cnntools
checkpoint, then exported. One JSON line per (architecture, format).

    python tests/benchmarks/bench_export.py [--archs lenet,mlp] [--steps 20] [--images 64] [--formats onnx,pt2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import emit, machine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: interpret_fixtures

ARCHS = "lenet,simple-cnn,resnet18,compact-cnn,vgg16,mlp"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=ARCHS)
    parser.add_argument("--steps", type=int, default=20, help="Adam steps on digits before export")
    parser.add_argument("--images", type=int, default=64, help="test images the check runs on")
    parser.add_argument("--formats", default="onnx,pt2")
    parser.add_argument("--train-vgg", action="store_true")
    args = parser.parse_args()

    from typer.testing import CliRunner

    from cnntools.cli.app import app
    from cnntools.models import input_size_for
    from interpret_fixtures import train_checkpoint

    emit({"machine": machine()})
    runner = CliRunner()
    folder = Path(tempfile.mkdtemp(prefix="cnntools-bench-export-"))
    for arch in args.archs.split(","):
        size = input_size_for(arch, 8)  # digits are 8x8: the size `train` would pick
        steps = args.steps if arch != "vgg16" or args.train_vgg else 0
        checkpoint = train_checkpoint(folder / f"{arch}.safetensors", "digits", arch, size, 1, steps, batch_size=32)
        for kind in args.formats.split(","):
            out = folder / f"{arch}.{kind}"
            start = time.perf_counter()
            result = runner.invoke(app, ["export", str(checkpoint), "-o", str(out), "-n", str(args.images), "--format", "json", "-q"])
            seconds = time.perf_counter() - start
            if result.exit_code != 0:
                emit({"arch": arch, "format": kind, "error": result.stderr.strip() or repr(result.exception)})
                continue
            import json

            doc = json.loads(result.stdout)
            check = doc["check"]
            emit({"arch": arch, "format": kind, "trained_steps": steps, "input": f"1x{size}x{size}",
                  "images": check["images"], "max_abs_diff": check["max_abs_diff"],
                  "top1_agreement": check["top1_agreement"], "max_abs_logit": check["max_abs_logit"],
                  "bytes": doc["bytes"], "seconds": round(seconds, 1)})
            out.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
