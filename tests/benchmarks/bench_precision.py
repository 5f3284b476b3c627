"""Precision: ResNet-18 (32x32) training with `--precision auto` against fp32 eager.

Issue 7, target 3. Both cases are `cnntools.training.Trainer` runs (the code `cnntools train`
runs), interleaved one epoch each, median of --repeats rounds:

- `auto`: `--precision auto` — on a CPU with AMX or AVX512-BF16 it resolves to bf16 autocast
  with channels_last (on CUDA: AMP, bf16 where supported, else fp16, with channels_last);
- `fp32`: `--precision fp32`, contiguous NCHW.

Target: auto/fp32 ≥ 2 on this machine. Then, for "accuracy unaffected on a short run", both
precisions train ResNet-18 on `digits` (upsampled to 32x32, 3 channels) for --epochs from
each of --seeds seeds and are evaluated on the digits test split (359 images) at their own
precision. The mean accuracies must agree within noise: two standard errors of the
difference of the means, from the seed-to-seed spread of both sides (a short run's spread
is much larger than the test set's sampling noise), and never less than two binomial
standard errors (2·sqrt(2p(1-p)/n)).

    python tests/benchmarks/bench_precision.py [--repeats 5] [--batch-size 64] [--epochs 2] [--seeds 3] [--quick]
"""

from __future__ import annotations

import argparse
import math

from common import add_threads_option, emit, interleaved, machine, ratio_record, set_threads

TARGET = 2.0


def timing(args) -> dict:
    import torch

    from cnntools.data import ImageSet
    from cnntools.training import TrainConfig, Trainer

    gen = torch.Generator().manual_seed(0)
    n = args.images
    data = ImageSet(images=torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen),
                    labels=torch.randint(0, 10, (n,), generator=gen), classes=[str(i) for i in range(10)], spec="generated")
    trainers = {}
    cases = {}
    for precision in ("auto", "fp32"):
        cfg = TrainConfig(arch="resnet18", data="generated", batch_size=args.batch_size, augment="flip,crop:4", val_split=0.0,
                          keep="last", epochs=1, device=args.device, precision=precision)
        trainer = trainers[precision] = Trainer(cfg, data, None, output=None)

        def one_epoch(trainer=trainer) -> int:
            trainer.cfg.epochs = trainer.position.epoch + 1
            trainer.run()
            return n

        cases[precision] = one_epoch
    rates = interleaved(cases, args.repeats, device=trainers["auto"].device)
    auto = trainers["auto"]
    emit(ratio_record("precision_resnet18_train", rates, "auto", "fp32", TARGET, auto_precision=auto.precision,
                      auto_channels_last=auto.channels_last, batch_size=args.batch_size, images_per_round=n,
                      device=str(auto.device), **machine()))
    return rates


def accuracy(args) -> None:
    import statistics

    from cnntools.data import load_split
    from cnntools.inference.batches import predict
    from cnntools.inference.preprocessing import Preprocessing
    from cnntools.training import TrainConfig, Trainer, load_training_data

    accuracies: dict[str, list[float]] = {"auto": [], "fp32": []}
    resolved = "?"
    n = 0
    for seed in range(args.seeds):
        for precision in ("auto", "fp32"):  # interleaved, seed by seed
            cfg = TrainConfig(arch="resnet18", data="digits", image_size=32, channels=3, epochs=args.epochs, seed=seed,
                              batch_size=args.batch_size, val_split=0.0, keep="last", device=args.device, precision=precision)
            train_set, _, size = load_training_data(cfg)
            trainer = Trainer(cfg, train_set, None, output=None)
            trainer.run()
            test = load_split("digits", "test").resized(size, 3)
            logits = predict(trainer.model, test.images, Preprocessing.plain(3, size, trainer.mean, trainer.std),
                             batch_size=256, precision=trainer.precision)
            labels = test.labels
            accuracies[precision].append(float((logits.argmax(1) == labels).float().mean()))
            n = len(test)
            if precision == "auto":
                resolved = trainer.precision
    auto, fp32 = accuracies["auto"], accuracies["fp32"]
    difference = statistics.fmean(auto) - statistics.fmean(fp32)
    spread = math.sqrt((statistics.variance(auto) + statistics.variance(fp32)) / len(auto)) if len(auto) > 1 else 0.0
    p = (statistics.fmean(auto) + statistics.fmean(fp32)) / 2
    binomial = math.sqrt(2 * p * (1 - p) / n) if 0 < p < 1 else 1.0 / n
    tolerance = 2 * max(spread, binomial)
    emit({"benchmark": "precision_resnet18_accuracy", "data": "digits 32x32x3", "epochs": args.epochs, "seeds": args.seeds,
          "test_images": n, "auto_precision": resolved, "acc_auto": [round(a, 4) for a in auto],
          "acc_fp32": [round(a, 4) for a in fp32], "difference": round(difference, 4), "noise_tolerance": round(tolerance, 4),
          "meets_target": abs(difference) <= tolerance, **machine()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=256, help="images per timed round")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the accuracy comparison")
    parser.add_argument("--seeds", type=int, default=3, help="training runs per precision in the accuracy comparison")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-accuracy", action="store_true")
    add_threads_option(parser)
    parser.add_argument("--quick", action="store_true", help="3 rounds; 2 seeds of 1 epoch for accuracy")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.epochs, args.seeds = 3, 1, 2
    set_threads(args.threads)
    timing(args)
    if not args.skip_accuracy:
        accuracy(args)


if __name__ == "__main__":
    main()
