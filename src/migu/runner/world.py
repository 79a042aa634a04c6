"""The processes of a launch (torchrun / ``accelerate launch``): how many, which one writes, and
what cannot be shared among them, refused before anything is written."""

from __future__ import annotations

import os

from .config import ConfigError
from .plan import Plan


def main_process() -> bool:
    """Rank 0 of a torchrun / accelerate launch (its RANK), or a single process: the one that writes."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def world_size() -> int:
    """Processes in this launch (``WORLD_SIZE`` of torchrun / accelerate launch; 1 when not launched)."""
    raw = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    try:
        return max(int(raw), 1)
    except ValueError as exc:
        raise ConfigError(f"WORLD_SIZE={raw!r} is not a number of processes") from exc


def check_world(plan: Plan, processes: int, restart: bool = False, rollback: bool = False) -> None:
    """Refuse, before anything is written, what cannot run over ``processes`` processes."""
    if processes <= 1:
        return
    plan.stages.check_world(processes)
    if (restart or rollback) and os.environ.get("WORLD_SIZE"):
        raise ConfigError(
            "--restart/--rollback inside a multi-process launch: use `migu run --num-processes N "
            "--restart` (the launcher clears the run directory once, before the processes start)"
        )
