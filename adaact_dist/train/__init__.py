"""The trainer: config schema and loading, the DeepSpeed loop, evaluation, checkpoints, records.

Entry point: ``launch/train_imagenet.py`` (see its docstring for every launcher).
"""

from adaact_dist.train.config import ConfigValueError, TrainConfig
from adaact_dist.train.config_io import ConfigError, dump_config, load_config
from adaact_dist.train.plan import RunPlan, make_plan
from adaact_dist.train.trainer import Trainer, TrainingDiverged, train

__all__ = [
    "ConfigError",
    "ConfigValueError",
    "RunPlan",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "dump_config",
    "load_config",
    "make_plan",
    "train",
]
