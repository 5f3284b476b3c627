"""`cnntools train`: train a CNN on a dataset and write a self-describing safetensors checkpoint."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

from cnntools.training import config_files as config
from cnntools.cli import options
from cnntools.output import emitter as output
from cnntools.cli.commands.train_records import RecordPrinter, history_kind, write_history
from cnntools.cli.completion import complete_model
from cnntools.core.errors import UsageError


# --help headings, as timm's train script groups its arguments (the shared options carry
# theirs: Data, Running the model, Output).
# -o/--output in this command's --help (the shared option's help is generic).
OUTPUT_HELP = "The checkpoint to write (.safetensors; default model.safetensors, or the --resume file); - for stdout."

HELP_PANELS = {
    **dict.fromkeys(("arch", "arch_args", "trust_code", "list_archs", "batchnorm", "output_activation", "pretrained",
                     "image_size"), "Model"),
    **dict.fromkeys(("val_split", "augment", "normalize", "class_weights"), "Data"),
    **dict.fromkeys(("epochs", "batch_size", "opt", "lr", "momentum", "weight_decay", "nesterov", "label_smoothing"), "Optimization"),
    **dict.fromkeys(("schedule", "warmup", "step_size", "gamma"), "Learning-rate schedule"),
    **dict.fromkeys(("val_every", "test_each_epoch", "keep", "early_stop", "resume"), "Validation, checkpoints and stopping"),
    **dict.fromkeys(("deterministic", "nproc", "dist_timeout"), "Running the model"),
    **dict.fromkeys(("label", "history", "plot", "print_every", "tensorboard"), "Output"),
    **dict.fromkeys(("config_file", "print_config", "dry_run"), "Configuration and dry run"),
}

# Options that may differ from the stored run when resuming; the rest must match it.
RESUMABLE_OVERRIDES = ("label", "epochs", "early_stop", "print_every", "device", "precision", "threads", "data_dir", "download",
                       "deterministic")


def main(
    ctx: typer.Context,
    arch: options.Arch = "simple-cnn",
    arch_args: options.ArchArgs = None,
    list_archs: Annotated[bool, typer.Option("--list-archs", help="List the architectures with parameter counts and exit.")] = False,
    batchnorm: options.Batchnorm = False,
    output_activation: options.OutputActivation = "none",
    pretrained: options.Pretrained = False,
    data: options.Data = "digits",
    data_dir: options.DataDir = None,
    val_split: options.ValSplit = 0.1,
    download: options.Download = False,
    image_size: options.ImageSize = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs to train (with --resume: the total to reach).")] = 20,
    batch_size: options.BatchSize = 32,
    opt: options.Optimizer = "adam",
    lr: options.LearningRate = None,
    momentum: options.Momentum = 0.9,
    weight_decay: options.WeightDecay = 0.0,
    nesterov: options.Nesterov = False,
    schedule: Annotated[
        Literal["none", "step", "cosine", "onecycle"], typer.Option("--schedule", help="Learning-rate schedule, stepped every update.")
    ] = "none",
    warmup: Annotated[float, typer.Option("--warmup", help="Epochs of linear learning-rate warm-up (fractions allowed).")] = 0.0,
    step_size: Annotated[int, typer.Option("--step-size", help="step schedule: epochs between decays (0: a third of the run).")] = 0,
    gamma: Annotated[float, typer.Option("--gamma", help="step schedule: decay factor.")] = 0.1,
    augment: options.Augment = "auto",
    normalize: options.Normalize = "dataset",
    class_weights: options.ClassWeights = "none",
    label_smoothing: options.LabelSmoothing = 0.0,
    keep: Annotated[
        Literal["best", "last"], typer.Option("--keep", help="Checkpoint weights: best validation accuracy or the last epoch.")
    ] = "best",
    early_stop: Annotated[int, typer.Option("--early-stop", help="Stop after N epochs without a better validation accuracy (0: never).")] = 0,
    print_every: Annotated[
        int, typer.Option("--print-every", help="Print the mean loss every N mini-batches (stderr) and record it as a step "
                          "record in the checkpoint's history (0: never).")
    ] = 0,
    val_every: Annotated[
        int, typer.Option("--val-every", help="Also validate every N weight updates (step records drawn by curves; 0: once per epoch).")
    ] = 0,
    test_each_epoch: Annotated[
        bool, typer.Option("--test-each-epoch", help="Also record test loss/accuracy after every epoch (test_loss, test_acc; "
                           "the kept epoch is still chosen on validation).")
    ] = False,
    label: Annotated[
        Optional[str], typer.Option("--label", metavar="NAME", help="Name of this run in figures and tables (default: the architecture and "
                                    "its non-default options, e.g. 'lenet relu-out').")
    ] = None,
    seed: options.Seed = 0,
    device: options.Device = "auto",
    threads: options.Threads = None,
    precision: options.Precision = "auto",
    deterministic: Annotated[
        bool,
        typer.Option("--deterministic", help="Use only deterministic PyTorch algorithms (torch.use_deterministic_algorithms, cuDNN deterministic)."),
    ] = False,
    resume: Annotated[
        Optional[str], typer.Option("--resume", metavar="CHECKPOINT", autocompletion=complete_model, help="Continue the run stored in this checkpoint exactly where it stopped.")
    ] = None,
    trust_code: options.TrustCode = False,
    nproc: Annotated[
        Optional[int],
        typer.Option("--nproc", help="Train with N processes on this machine (DistributedDataParallel through torch's "
                     "launcher, as torchrun --standalone --nproc-per-node N); for several machines use torchrun."),
    ] = None,
    dist_timeout: Annotated[
        float,
        typer.Option("--dist-timeout", help="Distributed runs: seconds to wait for the other processes (start-up and "
                     "every exchange) before the job fails with an error."),
    ] = 300.0,
    out: options.Output = None,
    history: Annotated[Optional[str], typer.Option("--history", metavar="FILE", help="Also write the per-epoch records to FILE (.csv or .jsonl).")] = None,
    plot: Annotated[Optional[str], typer.Option("--plot", metavar="FILE", help="Loss and accuracy curves, train vs validation (PNG, SVG or PDF).")] = None,
    fmt: options.StreamFormat = "table",
    tensorboard: Annotated[
        Optional[str],
        typer.Option("--tensorboard", metavar="DIR", help="Also log to TensorBoard in DIR: scalars per epoch and per --print-every "
                     "window, the model graph, a grid of training images (needs the tensorboard extra)."),
    ] = None,
    config_file: options.ConfigFile = None,
    print_config: options.PrintConfig = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Resolve data, model and options, time a few steps and validation batches, print the "
                     "parameter count, steps per epoch, memory and the run's estimated wall time, and exit; writes nothing."),
    ] = False,
    quiet: options.Quiet = False,
    debug: options.Debug = False,
) -> None:
    """Train a CNN on a dataset and write a self-describing safetensors checkpoint.

    Trains a registered architecture (--list-archs), a timm model or your own nn.Module (FILE.py:NAME) on digits, CIFAR, MNIST, a folder of images
    or fake data, with the knobs of the course notebooks: optimizer, learning rate and
    schedule, batch size, validation split, augmentation, normalisation, class weights, label
    smoothing, keep-the-best checkpoint and early stopping. One record per epoch goes to stdout
    (table, jsonl, json or csv); the progress bar goes to stderr. The checkpoint is rewritten
    after every epoch and can be resumed exactly with --resume; Ctrl-C saves a resumable
    checkpoint and exits 130 (SIGTERM: 143). NaN or inf in the loss or the gradients stops the run
    and keeps the last good checkpoint. -o names the checkpoint (.safetensors; default
    model.safetensors, or the --resume file; - for stdout); the learning rate is not rescaled
    with --batch-size. Under torchrun (or with --nproc N) it trains with
    DistributedDataParallel; only rank 0 prints and writes, and the checkpoint is the same.

    \b
    Examples:
      cnntools train                                   # simple-cnn on digits -> model.safetensors
      cnntools train --arch lenet --data cifar10 --opt sgd --lr 0.001 --momentum 0.9 --batch-size 4 --epochs 2
      cnntools train --arch resnet18 --data cifar10 --augment flip,crop:4 --batch-size 64 --epochs 10
      cnntools train --arch examples/mynet.py:MyNet --arch-args width=16 --epochs 3
      cnntools train --arch timm:resnet18 --data cifar10 --epochs 5
      cnntools train --resume model.safetensors --epochs 30
      cnntools train --arch lenet --output-activation relu --val-every 20 --print-every 10 -o relu.safetensors
      cnntools train --nproc 2 --batch-size 64        # 2 processes, 32 images each per update
      torchrun --nproc-per-node 4 -m cnntools train --arch resnet18 --data cifar10 --batch-size 256
      cnntools train --format jsonl -q | jq .val_acc
      cnntools train --arch lenet --epochs 5 --print-config > run.toml   # write a run down ...
      cnntools train --config run.toml --seed 1                          # ... replay it, a flag overriding
      cnntools train --config model.safetensors --epochs 30 -o longer.safetensors   # a checkpoint's options
      cnntools train --arch resnet18 --data cifar10 --epochs 10 --dry-run   # how long would it take?
    """
    from cnntools.training import distributed

    options.start_run(quiet=quiet, debug=debug, threads=threads)  # the Trainer seeds and resolves the device
    rank = distributed.environment()
    if rank is not None and not rank.is_main:
        output.configure(quiet=True, debug=debug)  # rank 0 speaks for the job
    if rank is not None or nproc is not None:
        distributed.quiet_native_logs(output.debug_enabled())
    if list_archs or arch == "help":
        if rank is None or rank.is_main:
            _list_archs(fmt)
        return

    if print_config:
        _print_config(ctx)
        return
    if config_file is not None and resume is not None:
        raise output.CnnError("--resume continues a run with its stored options; leave --config out")

    from cnntools.output import files
    from cnntools.training import TrainConfig, validate_config
    from cnntools.training.collectives import check_global_batch
    from cnntools.training.config import train_options

    _check_outputs_and_launch(nproc, rank, dist_timeout, resume, history, plot)
    given = train_options(ctx.params)
    resumed = None
    if resume is not None:
        cfg, resumed = _resume_config(ctx, resume, given, trust_code)
        target = out or (resume if resume != "-" else "model.safetensors")
    else:
        cfg = TrainConfig(**given)
        target = out or "model.safetensors"
        if config_file is not None and config_file.endswith(config.CHECKPOINT_SUFFIX) and _same_file(config_file, target):
            raise output.CnnError(f"{target}: --config replays this checkpoint's options in a new run; "
                                  "write the new run elsewhere with -o FILE")
    if target != "-" and not target.endswith(".safetensors"):
        raise output.CnnError(f"{target}: checkpoints are .safetensors files; name it e.g. model.safetensors")
    files.check_output(target, history)  # before the first epoch, not after it
    if dry_run:
        _dry_run(cfg, fmt)
        return
    if nproc is not None:
        validate_config(cfg)
        check_global_batch(cfg.batch_size, nproc)
        distributed.launch_local(nproc, _command_line(ctx, skip=("nproc",)), debug=output.debug_enabled())
        return
    if target == "-":
        output.claim_stdout()
    from cnntools.data.folders import shared_walks

    ctx.with_resource(shared_walks())  # one walk of a data folder for every split this run opens

    if rank is None:
        _train(cfg, resumed, resume, target, fmt, history, plot, tensorboard=tensorboard)
    else:
        _train_rank(rank, dist_timeout, cfg, resumed, resume, target, fmt, history, plot, tensorboard)


def _train_rank(rank, dist_timeout, cfg, resumed, resume, target, fmt, history, plot, tensorboard) -> None:
    """This process's part of a distributed run (torchrun or --nproc started it)."""
    from cnntools.training import distributed, load_training_data

    try:
        with distributed.peer_failures(dist_timeout):
            if cfg.download:  # one process per machine fetches the files; the others wait for them
                device_used, backend = distributed.start(rank, cfg.device, dist_timeout)
                with distributed.local_main_first(rank):
                    data_sets = load_training_data(cfg)
            else:  # an error in the data shows before anyone waits for anyone
                data_sets = load_training_data(cfg)
                device_used, backend = distributed.start(rank, cfg.device, dist_timeout)
            _train(cfg, resumed, resume, target, fmt, history, plot, data_sets=data_sets, rank=rank,
                   device_used=device_used, backend=backend, tensorboard=tensorboard)
    finally:
        distributed.stop()


def _check_outputs_and_launch(nproc, rank, dist_timeout, resume, history, plot) -> None:
    """The checks of --nproc, --dist-timeout, --resume under a distributed run, --history and --plot."""
    from cnntools.output import files

    if nproc is not None:
        if rank is not None:
            raise UsageError("--nproc starts its own processes; under torchrun leave it out")
        if nproc < 1:
            raise UsageError("--nproc must be at least 1")
    if dist_timeout <= 0:
        raise output.CnnError("--dist-timeout must be positive")
    if (nproc is not None or rank is not None) and resume == "-":
        raise UsageError("every process of a distributed run reads the checkpoint: --resume takes a file here, not -")
    if history is not None:
        history_kind(history)
    if plot is not None:
        files.figure_format(plot)


def _train(cfg, resumed, resume, target, fmt, history, plot, data_sets=None, rank=None, device_used=None, backend=None,
           tensorboard=None):
    """The training run of this process (the only one, or one rank of a distributed job)."""
    from dataclasses import replace

    from cnntools.output.progress import TrainProgress
    from cnntools.training import Trainer, TrainingInterrupted, load_test_split, load_training_data

    train_set, val_set, _ = data_sets if data_sets is not None else load_training_data(cfg)
    test_set = load_test_split(cfg, train_set) if cfg.test_each_epoch else None
    if resumed is not None:
        meta = resumed["meta"]
        train_set, val_set = _match_stored_size(train_set, val_set, meta)
        if list(train_set.classes) != list(meta.classes):
            raise output.CnnError(f"{resume}: the data's classes differ from the stored run's; resume on the same dataset")
        if cfg.val_split and val_set is None:
            cfg = replace(cfg, val_split=0.0)
    is_main = rank is None or rank.is_main
    trainer = Trainer(cfg, train_set, val_set, output=target, rank=rank.rank if rank else 0,
                      world_size=rank.world_size if rank else 1, device=device_used, test_set=test_set,
                      code=resumed["code"] if resumed is not None else None)
    if resumed is not None:
        try:
            trainer.restore(resumed["state"], resumed["meta"].history, resumed["weights"], resumed["meta"].steps)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as error:
            raise output.CnnError(f"{resume}: its resume state does not fit the run it describes ({type(error).__name__}); the file is damaged") from None

    printer = RecordPrinter(fmt, test=cfg.test_each_epoch)
    if is_main:  # under DDP only rank 0 prints and writes
        _describe_run(trainer, cfg, resumed is not None, backend)
        for record in trainer.history:
            printer.add(record, replay=True)

    board = _open_tensorboard(tensorboard, trainer) if is_main and tensorboard else None

    def on_epoch(record: dict) -> None:
        if not is_main:
            return
        printer.add(record)
        if board is not None:
            board.add_epoch(record)
        if history:
            write_history(history, trainer.history, trainer.steps)

    trainer.on_epoch = on_epoch
    trainer.on_print = output.info
    trainer.on_step = board.add_step if board is not None else None
    trainer.progress = TrainProgress.create(cfg.epochs, trainer.steps_per_epoch) if is_main else None
    finished = False
    try:
        trainer.run()
        finished = True
    except TrainingInterrupted as stop:
        if is_main:
            output.info(str(stop).capitalize())
        raise
    except RuntimeError as error:
        # e.g. CUDA's adaptive_avg_pool2d backward has no deterministic version: say so plainly.
        if cfg.deterministic and "deterministic" in str(error):
            raise output.CnnError(f"--deterministic: {output.first_line(error)}; train without --deterministic or on the CPU") from None
        raise
    finally:
        if trainer.progress is not None:
            trainer.progress.stop()
        if board is not None:
            board.close()
        if plot and trainer.history and is_main:
            from cnntools.output.plots import save_figure, training_curves
            from cnntools.checkpoint.runs import Run, best_epoch

            meta = trainer.metadata().to_json()
            run = Run(label=meta["label"], source=target, epochs=trainer.history, steps=trainer.steps,
                      best_epoch=best_epoch(trainer.history, meta), steps_per_epoch=trainer.steps_per_epoch)
            save_figure(training_curves([run], title=f"{meta['label']} on {cfg.data}"), plot)
    if finished and is_main:
        printer.finish(trainer)
        _summary(trainer, target)

# ---------------------------------------------------------------------------- helpers


def _command_line(ctx, skip: tuple[str, ...]) -> list[str]:
    """This invocation as `train OPTION...` (the options given, minus `skip`): what --nproc
    hands to each process it starts."""
    args = [ctx.info_name or "train"]
    for param in ctx.command.params:  # Typer carries its own copy of Click: no isinstance checks
        if param.name in skip or param.param_type_name != "option":
            continue
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name not in ("COMMANDLINE", "ENVIRONMENT"):
            continue
        value = ctx.params[param.name]
        name = max(param.opts, key=len)
        if param.is_flag:
            if value:
                args.append(name)
            elif param.secondary_opts:
                args.append(max(param.secondary_opts, key=len))
        elif value is not None:
            args += [name, str(value)]
    return args


def _print_config(ctx) -> None:
    """The run's options after file and flags, with what train works out itself filled in."""
    from cnntools.data.augment import resolve_augment
    from cnntools.training import DEFAULT_LR

    p = ctx.params
    config.print_config(ctx, {"lr": p["lr"] if p["lr"] is not None else DEFAULT_LR[p["opt"]],
                              "augment": resolve_augment(p["augment"], p["data"]),
                              "output": p["out"] or "model.safetensors"})


def _open_tensorboard(logdir: str, trainer):
    import torch

    from cnntools.checkpoint import unwrap_model
    from cnntools.training.tensorboard import TensorBoardLog

    board = TensorBoardLog(logdir)
    example = torch.zeros(1, trainer.in_channels, trainer.image_size, trainer.image_size, device=trainer.device)
    if trainer.channels_last:
        example = example.to(memory_format=torch.channels_last)
    board.add_model(unwrap_model(trainer.model), example)
    board.add_samples(trainer.train_set)
    return board


def _dry_run(cfg, fmt: str) -> None:
    import time

    from cnntools.training import dry_run
    from cnntools.training import Trainer, load_test_split, load_training_data

    start = time.perf_counter()
    train_set, val_set, _ = load_training_data(cfg)
    test_set = load_test_split(cfg, train_set) if cfg.test_each_epoch else None
    trainer = Trainer(cfg, train_set, val_set, output=None, test_set=test_set)
    # The run pays for starting Python and importing torch too: count the process's age.
    report = dry_run.estimate(trainer, setup_seconds=dry_run.process_seconds() or time.perf_counter() - start)
    if fmt in ("json", "jsonl"):
        output.print_json(report, schema="train.dry-run")
    else:
        rows = dry_run.table_rows(report)
        output.emit(report, fmt, schema="train.dry-run", rows=rows, columns=["item", "value"], title="Dry run: nothing was trained or written")


def _same_file(a: str, b: str) -> bool:
    import os

    return os.path.abspath(a) == os.path.abspath(b) or (os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b))


def _list_archs(fmt: str) -> None:
    from cnntools.models.catalog import ROWS  # stored counts: building the models takes seconds

    rows = [dict(row) for row in ROWS]
    columns = ["arch", "parameters", "input", "min_size", "pretrained", "description"]
    if fmt == "jsonl":
        for row in rows:
            output.print_jsonl(row, schema="train.archs")
        return
    output.emit({"architectures": rows}, fmt, schema="train.archs", rows=rows, columns=columns,
                title="Architectures (parameters at 3x32x32 input, 10 classes)")


def _resume_config(ctx, resume: str, given: dict, trust_code: bool = False):
    from dataclasses import replace

    from cnntools.output import files
    from cnntools.checkpoint import check_weights, model_state, read_checkpoint, resume_state
    from cnntools.checkpoint.model_loading import model_code
    from cnntools.training import TrainConfig

    tensors, meta = read_checkpoint(resume)
    weights = model_state(tensors)
    code = model_code(meta, files.display_name(resume), trust_code)
    check_weights(meta, weights, files.display_name(resume), code=code)
    state = resume_state(tensors, meta, resume)
    stored = TrainConfig.from_dict(meta.train_config, files.display_name(resume))
    changes = {}
    for name, value in given.items():
        source = ctx.get_parameter_source(name) if ctx is not None else None
        if source is None or source.name != "COMMANDLINE":
            continue
        if name in RESUMABLE_OVERRIDES:
            changes[name] = value
        elif getattr(stored, name) != value:
            flag = "--" + name.replace("_", "-")
            raise output.CnnError(
                f"--resume continues the stored run exactly; {flag} cannot change ({getattr(stored, name)!r} stored). "
                "Start a new run to change it"
            )
    cfg = replace(stored, **changes)
    done = int(state["epoch"])
    if cfg.epochs <= done and int(state.get("batch", 0)) == 0:
        raise output.CnnError(f"{resume}: the run already trained {done} of its {stored.epochs} epochs; pass --epochs N (N > {done}) to train further")
    if cfg.epochs != stored.epochs:
        if cfg.schedule == "onecycle":
            raise output.CnnError("a onecycle schedule is fixed to the run's length; resume with the stored --epochs")
        if cfg.schedule == "cosine":
            output.warn(f"the cosine schedule now spans {cfg.epochs} epochs instead of {stored.epochs}: the learning rate jumps")
    return cfg, {"meta": meta, "state": state, "weights": weights, "code": code}


def _match_stored_size(train_set, val_set, meta):
    size, channels = meta.image_size, meta.in_channels
    train_set = train_set.resized(size, channels)
    val_set = val_set.resized(size, channels) if val_set is not None else None
    return train_set, val_set


def _describe_run(trainer, cfg, resumed: bool, backend: str | None = None) -> None:
    from cnntools.models import count_parameters
    from cnntools.checkpoint import unwrap_model

    val = f", {len(trainer.val_set)} validation" if trainer.val_set is not None else ", no validation split"
    output.info(
        f"{'Resuming' if resumed else 'Training'} {cfg.arch} ({count_parameters(unwrap_model(trainer.model)):,} parameters) "
        f"on {cfg.data}: {len(trainer.train_set)} train images{val}, "
        f"{trainer.in_channels}x{trainer.image_size}x{trainer.image_size}, {len(trainer.classes)} classes; "
        f"{trainer.device.type} {trainer.precision}{' channels_last' if trainer.channels_last else ''}, "
        f"{trainer.steps_per_epoch} updates per epoch"
        + (f" of {cfg.batch_size} images, {cfg.batch_size // trainer.world_size} on each of {trainer.world_size} processes "
           f"({backend})" if backend else "")
        + (f"; from epoch {trainer.position.epoch + 1}" + (f" batch {trainer.position.batch + 1}" if trainer.position.batch else "") if resumed else "")
    )


def _summary(trainer, target: str) -> None:
    pos = trainer.position
    kept = trainer.kept_record() or {}
    where = "stdout" if target == "-" else target
    if trainer.val_loader is not None and trainer.cfg.keep == "best":
        which = f"best epoch {pos.best_epoch} (val_acc {kept.get('val_acc', 0):.4f})"
    else:
        which = f"last epoch {pos.epoch}" + (f" (val_acc {kept['val_acc']:.4f})" if kept.get("val_acc") is not None else "")
    from cnntools.output.progress import plural

    output.info(f"{plural(pos.updates, 'weight update')} in {plural(pos.epoch, 'epoch')}; wrote {where} with the weights of the {which}")
