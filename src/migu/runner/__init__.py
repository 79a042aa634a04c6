"""The continual-learning runner: config, training loop, evaluation, checkpoints, results."""

from .config import ConfigError, RunConfig, load_config
from .run import plan_run, run

__all__ = ["ConfigError", "RunConfig", "load_config", "plan_run", "run"]
