"""Divergence detection for the train loop: non-finite losses, gradient norms and weights.

Why this shape: reading a flag on the host after every optimizer step would stall the device once
per step (``.item()`` waits for the queue to drain). So in ``stop`` mode the checks stay on the
device: each step ANDs ``isfinite(loss) & isfinite(grad norm)`` into tensors that also keep the
first bad step and its values, and the host reads them only where the loop already syncs (at log
time) and once at the end of the stage, together with one check of the trained weights. "Stop"
therefore means: the stage ends at the next log step after the first bad one (at most
``train.log_every - 1`` wasted steps), always before the stage's checkpoint could be written, and
the error names the first bad step. ``skip`` has to decide before each ``optimizer.step()``, so it
syncs once per step (only in that mode). The gradient norm is the one clipping returns; with
clipping off (``max_grad_norm`` 0 or null) it is computed for the check, on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from .faults import DivergedError

NonFinite = Literal["stop", "skip"]


def grad_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The total L2 norm of the parameters' gradients (on device: no sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


class NonFiniteGuard:
    """Per-stage record of non-finite optimizer steps (see the module docstring)."""

    def __init__(self, device: torch.device, mode: NonFinite, stage: str, total: int) -> None:
        self.mode, self.stage, self.total = mode, stage, total
        self.skipped = 0  # steps whose update was skipped (mode skip)
        self._loss = torch.zeros((), device=device)  # this step's loss, summed over its micro-batches
        self._step = torch.zeros((), dtype=torch.long, device=device)  # optimizer steps seen
        self._first = torch.full((), -1, dtype=torch.long, device=device)  # first bad step (0-based)
        self._bad = torch.zeros(2, device=device)  # (loss, grad norm) at that step

    def add_loss(self, loss: torch.Tensor) -> None:
        """One micro-batch's total loss (the task loss plus the method's terms)."""
        self._loss += loss.detach().float()

    def end_step(self, norm: torch.Tensor | float | None) -> bool:
        """Record the step's loss and gradient norm; False: skip this update (mode ``skip`` only)."""
        loss = self._loss
        if norm is None:
            norm_t = torch.zeros((), device=loss.device)
        else:
            norm_t = torch.as_tensor(norm, device=loss.device).detach().float()
        ok = torch.isfinite(loss) & torch.isfinite(norm_t)
        newly = (self._first < 0) & ~ok
        self._first = torch.where(newly, self._step, self._first)
        self._bad = torch.where(newly, torch.stack([loss, norm_t]), self._bad)
        self._step += 1
        self._loss.zero_()
        if self.mode == "skip" and not bool(ok):  # a host sync per step, in this mode only
            self.skipped += 1
            return False
        return True

    def check(self) -> None:
        """Raise DivergedError if any step so far was non-finite (mode ``stop``; one host sync)."""
        if self.mode != "stop":
            return
        first = int(self._first)
        if first < 0:
            return
        loss, norm = (float(v) for v in self._bad.tolist())
        what = f"loss {loss}" if not _finite(loss) else f"gradient norm {norm} (loss {loss:.4g})"
        raise DivergedError(
            f"stage {self.stage!r}: non-finite {what} at optimizer step {first + 1} of {self.total}",
            stage=self.stage,
            step=first + 1,
            detail=f"non-finite {what}",
        )

    def check_weights(self, params: Sequence[torch.Tensor]) -> None:
        """The trained weights are all finite (one sync per stage), else DivergedError: whatever the
        mode, a stage never hands non-finite weights to its checkpoint."""
        if not params:
            return
        if bool(torch.stack([torch.isfinite(p.detach()).all() for p in params]).all()):
            return
        bad = sum(1 for p in params if not bool(torch.isfinite(p.detach()).all()))
        raise DivergedError(
            f"stage {self.stage!r}: {bad} trained weight tensor(s) hold inf/NaN after the last step",
            stage=self.stage,
            step=None,
            detail=f"{bad} weight tensor(s) non-finite",
        )


def _finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))
