"""The continual-learning runner: config, training loop, evaluation, checkpoints, results."""

from .config import ConfigError, RunConfig, load_config
from .run import plan_run, restore_run
from .run import run as run_experiment  # keeps `migu.runner.run` the module

__all__ = ["ConfigError", "RunConfig", "load_config", "plan_run", "restore_run", "run_experiment"]
