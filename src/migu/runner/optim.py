"""The runner's optimizer, AdamW (by default on torch's fused kernel), and its learning-rate schedule.

Why fused by default: it updates each tensor in one pass instead of torch's per-tensor chain of ops,
and it sidesteps a CPU cost that MIGU itself causes. Rows that MIGU has masked since the start of a
task have a second moment (``exp_avg_sq``) of exactly 0, and torch's CPU ``sqrt`` kernel is 4-8x
slower on exact zeros than on positive values; the for-loop and foreach AdamW take that ``sqrt`` on
every step, the fused kernel does not pay it. Measured with ``bench/bench_adamw.py`` and
``bench/bench_step.py --optimizer`` (docs/performance.md). All implementations compute the same
update (to floating-point rounding), MIGU's strict mode included.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from typing import Literal, get_args

import torch
from torch.optim.lr_scheduler import LRScheduler
from transformers import get_scheduler

log = logging.getLogger(__name__)

OptimizerImpl = Literal["auto", "fused", "foreach", "for-loop"]
OPTIMIZER_IMPLS: tuple[str, ...] = get_args(OptimizerImpl)
# Devices with a fused AdamW kernel in every torch this package supports (CPU since torch 2.4).
_FUSED_DEVICES = ("cpu", "cuda")


def build_adamw(
    params: Iterable[torch.nn.Parameter],
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    impl: str = "auto",
) -> torch.optim.AdamW:
    """AdamW on the implementation ``impl``.

    Args:
        impl: ``"fused"`` (one kernel per tensor; raises if torch has none for a parameter's
            device or dtype), ``"foreach"`` (batched ops), ``"for-loop"`` (one tensor at a
            time, torch's reference path), or ``"auto"``: fused where every parameter supports
            it, otherwise torch's own default.
    """
    if impl not in OPTIMIZER_IMPLS:
        raise ValueError(f"optimizer implementation must be one of {OPTIMIZER_IMPLS}, got {impl!r}")
    params = list(params)
    kwargs = {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay}
    unfit = next((p for p in params if not _fused_kernel_fits(p)), None)
    if impl == "fused" and unfit is not None:
        # torch would only find out at the first step(); say it before any training starts
        raise ValueError(
            f"fused AdamW has no kernel for a {unfit.dtype} parameter on {unfit.device.type} "
            f"(fused runs floating-point parameters on {', '.join(_FUSED_DEVICES)}); "
            "use the optimizer implementation 'auto' or 'foreach'"
        )
    if impl == "fused" or (impl == "auto" and unfit is None):
        return torch.optim.AdamW(params, fused=True, **kwargs)
    if impl == "foreach":
        return torch.optim.AdamW(params, foreach=True, **kwargs)
    if impl == "for-loop":
        return torch.optim.AdamW(params, foreach=False, fused=False, **kwargs)
    assert unfit is not None
    log.info("AdamW: no fused kernel for %s on %s; using torch's default", unfit.dtype, unfit.device)
    return torch.optim.AdamW(params, **kwargs)


def _fused_kernel_fits(p: torch.Tensor) -> bool:
    return torch.is_floating_point(p) and p.device.type in _FUSED_DEVICES


# our schedule names (``train.schedule``) -> transformers.get_scheduler names
_SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    warmup_ratio: float,
    total_steps: int,
    start_step: int = 0,
) -> LRScheduler:
    """The learning-rate schedule over ``total_steps`` optimizer steps: linear warmup from 0 over
    ``int(warmup_ratio * total_steps)`` steps, then ``constant``, ``linear`` decay to 0 or
    ``cosine`` (half a cosine to 0). ``start_step``: where a stage that continues an optimization
    begins on it (the schedule is moved there, as the earlier stages left it)."""
    if schedule not in _SCHEDULES:
        raise ValueError(f"train.schedule must be one of {', '.join(_SCHEDULES)}, got {schedule!r}")
    scheduler = get_scheduler(
        _SCHEDULES[schedule],
        optimizer,
        num_warmup_steps=int(warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    if start_step:
        with warnings.catch_warnings():  # stepping the schedule before any optimizer step, on purpose
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)`")
            for _ in range(start_step):
                scheduler.step()
    return scheduler
