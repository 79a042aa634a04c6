"""Running one continual-learning run: config, plan, execute, resume, the training loop, the
regimes' stages, checkpoints, run state and results.

Names load on first use, so the light modules (``runner.faults``, ``runner.lock``,
``runner.results``) can be imported without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import ConfigError, RunConfig, load_config
    from .execute import run as run_experiment
    from .plan import plan_run
    from .resume import restore_run

__all__ = ["ConfigError", "RunConfig", "load_config", "plan_run", "restore_run", "run_experiment"]


def __getattr__(name: str) -> Any:
    if name in ("ConfigError", "RunConfig", "load_config"):
        from . import config

        return getattr(config, name)
    if name == "plan_run":
        from .plan import plan_run

        return plan_run
    if name == "restore_run":
        from .resume import restore_run

        return restore_run
    if name == "run_experiment":
        from .execute import run as run_experiment

        return run_experiment
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
