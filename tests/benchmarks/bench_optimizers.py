"""cnntools' optimizers (training/optimizers.py) against torch.optim's: training steps per second.

Issue 29: cnntools carries its own SGD/Adam/AdamW so that training never imports
torch._dynamo; this checks the step is not slower. simple-cnn on 1x28x28 inputs, batch 64,
fp32 on the CPU: forward, backward and step (`full`), and the optimizer step alone with
fixed gradients (`step`), for each optimizer, ours and torch's interleaved; one JSON line
per optimizer and case with the ratio ours / torch of steps per second (target ≥ 0.95):
against torch.optim's default (tensor by tensor on the CPU) and, where this torch has
them, its `fused=True` CPU kernels, which ours use by default.

    python tests/benchmarks/bench_optimizers.py [--steps 100] [--repeats 5] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import copy

from common import add_threads_option, emit, interleaved, machine, ratio_record, set_threads


# A step alone takes ~0.1 ms against ~20 ms for forward, backward and step: more of them a
# round, or a round is too short to time.
STEP_ONLY_FACTOR = 20


def cases(kind: str, steps: int) -> dict:
    import torch

    from cnntools.models import create_model
    from cnntools.training import optimizers

    ours_cls, torch_cls, options = {
        "sgd": (optimizers.SGD, torch.optim.SGD, {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}),
        "adam": (optimizers.Adam, torch.optim.Adam, {"lr": 1e-3}),
        "adamw": (optimizers.AdamW, torch.optim.AdamW, {"lr": 1e-3, "weight_decay": 1e-2}),
    }[kind]
    torch.manual_seed(0)
    base = create_model("simple-cnn", in_channels=1, image_size=28, num_classes=10)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    out = {}
    variants = [("ours", ours_cls, {}), ("torch", torch_cls, {})]
    if optimizers._fused_on_cpu():
        variants.append(("torch fused", torch_cls, {"fused": True}))
    for name, cls, extra in variants:
        model = copy.deepcopy(base)
        opt = cls(model.parameters(), **options, **extra)

        def full(model=model, opt=opt) -> int:
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
            return steps

        def step_only(model=model, opt=opt) -> int:
            for p in model.parameters():
                if p.grad is None:
                    p.grad = torch.full_like(p, 1e-3)
            for _ in range(steps * STEP_ONLY_FACTOR):
                opt.step()
            return steps * STEP_ONLY_FACTOR

        out[f"full {name}"] = full
        out[f"step {name}"] = step_only
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="steps per case and round (default 100)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--optimizers", default="sgd,adam,adamw")
    parser.add_argument("--quick", action="store_true", help="30 steps, 3 rounds")
    add_threads_option(parser)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats = 30, 3
    set_threads(args.threads)
    for kind in args.optimizers.split(","):
        rates = interleaved(cases(kind, args.steps), args.repeats)
        for part in ("full", "step"):
            for reference in ("torch", "torch fused"):
                if f"{part} {reference}" in rates:
                    emit(ratio_record("optimizers", rates, f"{part} ours", f"{part} {reference}", 0.95, optimizer=kind,
                                      steps=args.steps))
    emit({"benchmark": "optimizers", "machine": machine()})


if __name__ == "__main__":
    main()
