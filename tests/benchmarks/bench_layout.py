"""CPU memory layout: a bare training step in NCHW and in channels_last, fp32 and bf16, against
the steps `cnntools train` makes (its `Trainer`, in the layout it chooses).

Issue 29, item 4. Three models at the issue's sizes (simple-cnn 32 px batch 128, resnet18
32 px batch 64, compact-cnn 128 px batch 32), SGD with momentum, random ready-made batches
(the data path is bench_train's business). Per model and precision, interleaved rounds of
`--steps` updates of three cases: `nchw` and `channels_last` (the bare loop: model, autocast,
loss, backward, optimizer step) and `cnntools` (`Trainer._step`, which adds the scheduler
and the non-finite gradient check). One JSON line each: channels_last / nchw, and cnntools /
the faster bare layout (target ≥ 0.95).

    python tests/benchmarks/bench_layout.py [--cases simple-cnn,resnet18,compact-cnn,quickstart] [--precisions fp32,bf16] [--steps N] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse

from common import add_threads_option, emit, interleaved, machine, median, ratio_record, set_threads

# case: (architecture, image size, batch, updates per round); the three, and the README
# quick start's run (simple-cnn on digits: 16 px, batch 32). Small models take more updates a
# round: 3 of simple-cnn's ~50 ms steps read 0.91-0.94 where 20 read 0.99-1.01.
CASES = {"simple-cnn": ("simple-cnn", 32, 128, 20), "resnet18": ("resnet18", 32, 64, 3),
         "compact-cnn": ("compact-cnn", 128, 32, 3), "quickstart": ("simple-cnn", 16, 32, 40)}
TARGET = 0.95


def bare_step(arch: str, size: int, precision: str, channels_last: bool):
    """The plain PyTorch step: same model and optimizer settings as the Trainer, no cnntools loop."""
    import torch

    from cnntools.core import runtime
    from cnntools.models import create_model

    device = torch.device("cpu")
    torch.manual_seed(0)
    model = create_model(arch, 3, size, 10)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()

    def step(x, y):
        with runtime.autocast(device, precision):
            loss = criterion(model(x.contiguous(memory_format=fmt)).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def trainer_step(arch: str, size: int, batch: int, precision: str):
    """`Trainer._step` of a run `cnntools train --arch ARCH --precision P` would make."""
    import torch

    from cnntools.data import ImageSet
    from cnntools.training import TrainConfig, Trainer

    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    data = ImageSet(images=images, labels=torch.arange(batch) % 10, classes=[str(i) for i in range(10)],
                    spec="generated", split="train")
    cfg = TrainConfig(arch=arch, data="generated", batch_size=batch, opt="sgd", lr=0.01, momentum=0.9, augment="none",
                      keep="last", val_split=0.0, epochs=1000, device="cpu", precision=precision)
    trainer = Trainer(cfg, data, None, output=None)
    trainer.model.train()
    return trainer, trainer._step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--steps", type=int, help="updates per case and round (default: the case's, 3 to 40)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    add_threads_option(parser)
    args = parser.parse_args()
    if args.quick:
        args.repeats = 2

    import torch

    from cnntools.core import runtime

    set_threads(args.threads)
    for case in args.cases.split(","):
        arch, size, batch, updates = CASES[case]
        updates = args.steps or updates
        for precision in args.precisions.split(","):
            if precision == "bf16" and not runtime.cpu_has_native_bf16():
                continue  # emulated bf16 is several times slower: auto never picks it there
            torch.manual_seed(1)
            x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
            trainer, step = trainer_step(arch, size, batch, precision)
            x_trainer = x.contiguous(memory_format=torch.channels_last) if trainer.channels_last else x
            steps = {"nchw": bare_step(arch, size, precision, False), "channels_last": bare_step(arch, size, precision, True)}

            def run(fn, inputs):
                def one_round() -> int:
                    for _ in range(updates):
                        fn(inputs, y)
                    return updates * batch

                return one_round

            cases = {"nchw": run(steps["nchw"], x), "channels_last": run(steps["channels_last"], x), "cnntools": run(step, x_trainer)}
            rates = interleaved(cases, args.repeats)
            best = max(("nchw", "channels_last"), key=lambda name: median(rates[name]))
            extra = {"case": case, "arch": arch, "image_size": size, "batch_size": batch, "precision": precision,
                     "cnntools_channels_last": trainer.channels_last, "best_bare": best, **machine()}
            emit(ratio_record("cpu_layout", rates, "channels_last", "nchw", 1.0, **extra))
            emit(ratio_record("cpu_layout", rates, "cnntools", best, TARGET, **extra))


if __name__ == "__main__":
    main()
