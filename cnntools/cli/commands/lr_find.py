"""`cnntools lr-find`: Smith's learning-rate range test on train's model, data and optimizer."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cnntools.cli import options
from cnntools.output import emitter as output

SWEEP_COLUMNS = ["step", "lr", "loss", "smoothed_loss"]


# -o/--output in this command's --help (the shared option's help is generic).
OUTPUT_HELP = "Write the loss-against-learning-rate plot (PNG, SVG or PDF by extension); - for stdout."

def main(
    ctx: typer.Context,
    arch: options.Arch = "simple-cnn",
    batchnorm: options.Batchnorm = False,
    output_activation: options.OutputActivation = "none",
    pretrained: options.Pretrained = False,
    data: options.Data = "digits",
    data_dir: options.DataDir = None,
    val_split: options.ValSplit = 0.1,
    download: options.Download = False,
    image_size: options.ImageSize = None,
    batch_size: options.BatchSize = 32,
    opt: options.Optimizer = "adam",
    momentum: options.Momentum = 0.9,
    weight_decay: options.WeightDecay = 0.0,
    nesterov: options.Nesterov = False,
    augment: options.Augment = "auto",
    normalize: options.Normalize = "dataset",
    class_weights: options.ClassWeights = "none",
    label_smoothing: options.LabelSmoothing = 0.0,
    start_lr: Annotated[float, typer.Option("--start-lr", help="Learning rate of the first step.")] = 1e-7,
    end_lr: Annotated[float, typer.Option("--end-lr", help="Learning rate of the last step (the sweep is exponential).")] = 10.0,
    steps: Annotated[int, typer.Option("--steps", help="Weight updates in the sweep (it stops early when the loss diverges).")] = 200,
    diverge: Annotated[
        float, typer.Option("--diverge", help="Stop once the smoothed loss exceeds this many times its minimum.")
    ] = 4.0,
    seed: options.Seed = 0,
    device: options.Device = "auto",
    threads: options.Threads = None,
    precision: options.Precision = "auto",
    plot: options.Output = None,
    sweep: Annotated[
        Optional[str], typer.Option("--sweep", metavar="FILE", help="Also write every step (step, lr, loss, smoothed_loss) to FILE (.csv or .json).")
    ] = None,
    fmt: options.Format = "table",
    config_file: options.ConfigFile = None,
    print_config: options.PrintConfig = False,
    quiet: options.Quiet = False,
    debug: options.Debug = False,
) -> None:
    """Find a learning rate: Smith's range test, as fastai's lr_find and Lightning's tuner run it.

    Trains a fresh copy of the model (the same --arch, data and optimizer options as train)
    for up to --steps updates while the learning rate grows exponentially from --start-lr to
    --end-lr, records the loss, smooths it (debiased moving average, beta 0.98) and stops
    when it diverges. Suggests two rates from the smoothed curve: steepest (the fastest fall
    of the loss per unit of log learning rate) and valley (two thirds down the longest
    falling stretch, fastai's default and the steadier of the two). Writes no checkpoint.
    The table shows the suggestions; JSON has them and every step; CSV is every step.
    --config reads train's TOML files (keys only train takes, such as epochs, are skipped)
    or a checkpoint's stored options; --print-config writes this sweep's options as TOML.

    \b
    Examples:
      cnntools lr-find                                         # simple-cnn on digits with Adam
      cnntools lr-find --arch lenet --opt sgd --momentum 0.9 -o lr.png
      cnntools lr-find --arch resnet18 --data cifar10 --batch-size 64 --steps 300 --sweep sweep.csv
      cnntools train --lr "$(cnntools lr-find --format json -q | jq .suggestions.valley)"
      cnntools train --arch lenet --print-config > run.toml && cnntools lr-find --config run.toml
    """
    options.start_run(quiet=quiet, debug=debug, threads=threads)  # train's Trainer seeds and resolves the device
    if print_config:
        from cnntools.data.augment import resolve_augment
        from cnntools.training import config_files

        config_files.print_config(ctx, {"augment": resolve_augment(augment, data)})
        return
    from cnntools.output import files

    if start_lr >= end_lr:
        raise output.CnnError("--start-lr must be below --end-lr")
    if plot is not None:
        files.figure_format(plot)
    if sweep is not None and not sweep.endswith((".csv", ".json")):
        raise output.CnnError(f"{sweep}: --sweep writes .csv or .json files")
    files.check_output(sweep)

    from cnntools.output.progress import progress_bar
    from cnntools.training import TrainConfig, Trainer, load_training_data, lr_find
    from cnntools.training.config import train_options

    cfg = TrainConfig(**{**train_options(ctx.params), "epochs": 1, "lr": start_lr})
    train_set, _, _ = load_training_data(cfg)  # the validation carve-out stays out of the sweep, as in train
    trainer = Trainer(cfg, train_set, None, output=None)
    output.info(f"Range test of {arch} on {data} ({len(train_set)} train images, {trainer.steps_per_epoch} batches of "
                f"{batch_size} per epoch): {opt}, lr {start_lr:g} to {end_lr:g} over {steps} steps")
    with progress_bar("lr-find", steps, stats=True) as bar:
        def on_step(step: int, steps: int, record: dict) -> None:
            bar.update(step, stats=f"lr {record['lr']:.2e}  loss {record['smoothed_loss']:.4f}")

        result = lr_find.range_test(trainer, start_lr, end_lr, steps, diverge=diverge, on_step=on_step if bar.shown else None)
    records, suggestions = result["records"], result["suggestions"]
    last = records[-1]["lr"] if records else start_lr
    output.info(f"{len(records)} steps, {'stopped at divergence' if result['stopped'] == 'diverged' else 'the full sweep'} "
                f"(last lr {last:.3g})")
    if suggestions["valley"] is None:
        raise output.CnnError(f"the sweep stopped after {len(records)} steps, too few to suggest a rate; "
                              "lower --start-lr or raise --steps")
    doc = {
        "arch": arch, "data": data, "opt": opt, "batch_size": batch_size,
        "start_lr": start_lr, "end_lr": end_lr, "steps": steps, "steps_run": len(records), "stopped": result["stopped"],
        "suggestions": suggestions, "sweep": records,
    }
    if sweep is not None:
        text = output.csv_text(records, SWEEP_COLUMNS) if sweep.endswith(".csv") else _json(output.stamped(doc, "lr-find"))
        files.write_text(sweep, text)
    if plot is not None:
        lr_find.plot(result, plot, f"{arch} on {data}, {opt}, batch {batch_size}")
    _render(doc, fmt)


def _render(doc: dict, fmt: str) -> None:
    records, suggestions = doc["sweep"], doc["suggestions"]
    by_lr = {r["lr"]: r for r in records}
    rows = [{"method": name, "lr": lr, "smoothed_loss": by_lr[lr]["smoothed_loss"], "step": by_lr[lr]["step"]}
            for name, lr in suggestions.items()]
    if fmt == "csv":
        output.print_csv(records, SWEEP_COLUMNS)
    else:
        output.emit(doc, fmt, schema="lr-find", rows=rows, columns=["method", "lr", "smoothed_loss", "step"],
                    title="Suggested learning rates (valley: fastai's default)")


def _json(doc: dict) -> str:
    import json

    return json.dumps(output.to_jsonable(doc), indent=2) + "\n"
