"""Evaluation throughput: what `cnntools eval` runs against a bare inference_mode forward loop.

Issue 7, target 4: ≥ 0.9×. A checkpoint is written by a one-epoch `Trainer` run, loaded
with `cnntools.checkpoint.load_model` (as `eval` does), and two cases run interleaved,
median of --repeats rounds, at the same batch size and precision:

- `cnntools`: `cnntools.inference.batches.predict(model, images, preprocessing, ...)` — the call
  `cnntools eval` times for its images_per_s: uint8 images → float, normalised, forward under
  `inference_mode` and autocast, logits gathered on the CPU.
- `bare`: the same model over ready-made normalised float batches in a plain
  `with torch.inference_mode(): model(x)` loop, in the memory format and autocast the
  precision calls for (channels_last with bf16 on CPU and on CUDA).

    python tests/benchmarks/bench_eval.py [--arch simple-cnn] [--batch-size 256] [--images 2048] [--precision auto] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import add_threads_option, emit, interleaved, machine, ratio_record, set_threads

TARGET = 0.9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="simple-cnn")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="cpu")
    add_threads_option(parser)
    parser.add_argument("--quick", action="store_true", help="half the images, 9 rounds")
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeats = args.images // 2, 9

    import torch

    set_threads(args.threads)
    from cnntools.core import runtime
    from cnntools.checkpoint import load_model
    from cnntools.data import load_split
    from cnntools.inference.batches import predict, wants_channels_last
    from cnntools.training import TrainConfig, Trainer

    device = runtime.resolve_device(args.device)
    precision = runtime.resolve_precision(args.precision, device)
    with tempfile.TemporaryDirectory(prefix="cnntools-eval-") as tmp:
        path = str(Path(tmp) / "model.safetensors")
        cfg = TrainConfig(arch=args.arch, data="fake:256", epochs=1, batch_size=64, val_split=0.0, device=args.device)
        Trainer(cfg, load_split("fake:256", "train"), None, output=path).run()
        loaded = load_model(path, device)
        bare_model = load_model(path, device).model  # its own copy, so neither case changes the other's layout
    imageset = load_split(f"fake:{args.images}", "train")
    model = loaded.model
    channels_last = wants_channels_last(device, precision, loaded.meta.arch_name)
    mean = torch.tensor(loaded.preprocessing.mean).view(1, -1, 1, 1)
    std = torch.tensor(loaded.preprocessing.std).view(1, -1, 1, 1)
    ready = ((imageset.images.float() / 255 - mean) / std).to(device)
    if channels_last:
        ready = ready.contiguous(memory_format=torch.channels_last)
    batches = list(ready.split(args.batch_size))
    if channels_last:
        bare_model = bare_model.to(memory_format=torch.channels_last)

    def cnntools_case() -> int:
        predict(model, imageset.images, loaded.preprocessing, batch_size=args.batch_size, precision=precision, arch=loaded.meta.arch_name)
        return len(imageset)

    def bare_case() -> int:
        with torch.inference_mode():
            for x in batches:
                with runtime.autocast(device, precision):
                    bare_model(x)
        return len(imageset)

    rates = interleaved({"cnntools": cnntools_case, "bare": bare_case}, args.repeats, device=device)
    emit(ratio_record("eval_throughput", rates, "cnntools", "bare", TARGET, arch=args.arch, batch_size=args.batch_size,
                      images=args.images, precision=precision, channels_last=channels_last, device=str(device), **machine()))


if __name__ == "__main__":
    main()
