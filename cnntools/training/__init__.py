"""Training a model: options (`config`), its data (`data`), optimiser and schedule
(`optimization`), the loop (`loop.Trainer`), its validation pass (`evaluation`), what it
checkpoints and resumes from (`checkpointing`), how a run stops (`control`) and the random
state it resumes (`rng_state`).

    from cnntools.training import TrainConfig, Trainer, load_training_data
    cfg = TrainConfig(arch="lenet", data="digits", epochs=3)
    train, val, _ = load_training_data(cfg)
    history = Trainer(cfg, train, val, output="model.safetensors").run()
"""

from cnntools.training.config import DEFAULT_LR, OPTIMIZERS, SCHEDULES, TrainConfig, validate_config
from cnntools.training.control import NonFiniteLoss, TrainingInterrupted
from cnntools.training.checkpointing import Position
from cnntools.training.data import load_test_split, load_training_data
from cnntools.training.evaluation import evaluate
from cnntools.training.loop import Trainer
from cnntools.training.optimization import build_optimizer, build_scheduler, class_weight_tensor
from cnntools.training.rng_state import rng_state, set_rng_state

__all__ = [
    "DEFAULT_LR",
    "NonFiniteLoss",
    "OPTIMIZERS",
    "Position",
    "SCHEDULES",
    "TrainConfig",
    "Trainer",
    "TrainingInterrupted",
    "build_optimizer",
    "build_scheduler",
    "class_weight_tensor",
    "evaluate",
    "load_test_split",
    "load_training_data",
    "rng_state",
    "set_rng_state",
    "validate_config",
]
