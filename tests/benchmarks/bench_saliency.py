"""Grad-CAM on 64 images: one batched call against 64 per-image calls (target ≥ 2.5× per image).

Both run the same library function (`cnntools.interpret.saliency.cam_maps`) on simple-cnn
at 3×32×32, interleaved, several repetitions, median. Prints one JSON line.

    python tests/benchmarks/bench_saliency.py [--images 64] [--repeats 5] [--arch simple-cnn]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from cnntools.interpret.activations import last_conv_name
from cnntools.interpret.saliency import cam_maps
from cnntools.models import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--arch", default="simple-cnn")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="3 repetitions")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 3
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = create_model(args.arch, in_channels=3, image_size=args.size, num_classes=10).to(device).eval()
    layer = last_conv_name(model)
    x = torch.randn(args.images, 3, args.size, args.size, device=device)
    targets = torch.randint(0, 10, (args.images,)).tolist()

    def batched():
        return cam_maps(model, layer, x, targets, method=args.method)

    def per_image():
        return torch.cat([cam_maps(model, layer, x[i : i + 1], [targets[i]], method=args.method) for i in range(args.images)])

    # Same maps either way (the check that the fast path is the same computation).
    torch.testing.assert_close(batched(), per_image(), atol=2e-4, rtol=1e-3)
    times = {"batched": [], "per_image": []}
    for _ in range(args.repeats):
        for name, fn in (("batched", batched), ("per_image", per_image)):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    b, p = statistics.median(times["batched"]), statistics.median(times["per_image"])
    print(json.dumps({
        "benchmark": "saliency_gradcam_batched_vs_per_image",
        "method": args.method, "arch": args.arch, "images": args.images, "device": str(device),
        "threads": torch.get_num_threads(), "machine": platform.machine(),
        "batched_s": round(b, 4), "per_image_s": round(p, 4),
        "batched_ms_per_image": round(1000 * b / args.images, 3),
        "per_image_ms_per_image": round(1000 * p / args.images, 3),
        "ratio": round(p / b, 2), "target": 2.5, "meets_target": p / b >= 2.5,
    }))


if __name__ == "__main__":
    main()
