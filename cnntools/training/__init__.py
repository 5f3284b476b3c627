"""Training a model: options (`config`), its data (`data`), optimiser and schedule
(`optimization`), the loop (`loop.Trainer`), its validation pass (`evaluation`), what it
checkpoints and resumes from (`checkpointing`), how a run stops (`control`), the random
state it resumes (`rng_state`); and around the loop: TOML config files (`config_files`), the
dry run, the learning-rate finder, TensorBoard, distributed jobs and their collectives.

The names below are imported on first use, so `cnntools.training.config_files` (which `train
--help` needs) does not pull in torch.

    from cnntools.training import TrainConfig, Trainer, load_training_data
    cfg = TrainConfig(arch="lenet", data="digits", epochs=3)
    train, val, _ = load_training_data(cfg)
    history = Trainer(cfg, train, val, output="model.safetensors").run()
"""

from __future__ import annotations

import importlib

_HOME = {
    "build_optimizer": "cnntools.training.optimization",
    "build_scheduler": "cnntools.training.optimization",
    "class_weight_tensor": "cnntools.training.optimization",
    "DEFAULT_LR": "cnntools.training.config",
    "evaluate": "cnntools.training.evaluation",
    "load_test_split": "cnntools.training.data",
    "load_training_data": "cnntools.training.data",
    "NonFiniteLoss": "cnntools.training.control",
    "OPTIMIZERS": "cnntools.training.config",
    "Position": "cnntools.training.checkpointing",
    "rng_state": "cnntools.training.rng_state",
    "SCHEDULES": "cnntools.training.config",
    "set_rng_state": "cnntools.training.rng_state",
    "TrainConfig": "cnntools.training.config",
    "Trainer": "cnntools.training.loop",
    "TrainingInterrupted": "cnntools.training.control",
    "validate_config": "cnntools.training.config",
}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value
