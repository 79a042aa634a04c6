"""The continual-learning runner: config, training loop, evaluation, checkpoints, results.

Names load on first use, so the light modules (``runner.faults``, ``runner.lock``,
``runner.results``) can be imported without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import ConfigError, RunConfig, load_config
    from .run import plan_run, restore_run
    from .run import run as run_experiment

__all__ = ["ConfigError", "RunConfig", "load_config", "plan_run", "restore_run", "run_experiment"]


def __getattr__(name: str) -> Any:
    if name in ("ConfigError", "RunConfig", "load_config"):
        from . import config

        return getattr(config, name)
    if name in ("plan_run", "restore_run"):
        from . import run

        return getattr(run, name)
    if name == "run_experiment":  # keeps `migu.runner.run` the module
        from .run import run as run_experiment

        return run_experiment
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
