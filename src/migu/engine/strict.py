"""Strict mode (this library's addition, not the paper's): masked rows stay bit-identical through
``optimizer.step()``, their optimizer state (AdamW moments) included.

Gradient masking alone still lets AdamW move a masked row through momentum and weight decay.
Before the step, :meth:`StrictRestore.save` copies the masked rows of each weight (and of its
moment tensors); a step post-hook copies them back. The top-k cut has a fixed masked count, so only
those rows are copied (no host sync); the quantile cut saves whole tensors and blends by the mask.

FSDP2: parameters and moments are DTensors sharded on dim 0 (``optimizer.state`` is keyed by the
sharded parameter, its ``exp_avg``/``exp_avg_sq`` sharded alike). Each rank saves and restores
its local shards, blending by its slice of the global keep mask (the local masked count differs
per rank, so the index path would need a host sync).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .scale import is_dtensor, row_shard, to_local
from .targets import Target


def row_states(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> dict[str, torch.Tensor]:
    """The optimizer state tensors of ``p`` shaped like ``p`` (moments), by key."""
    return {k: v for k, v in optimizer.state.get(p, {}).items() if torch.is_tensor(v) and v.shape == p.shape}


def inner_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer whose step fires hooks and holds state, under wrappers (Accelerate's)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


class StrictRestore:
    """Saves masked rows before the optimizer step and restores them in a step post-hook."""

    def __init__(self) -> None:
        self.optimizer: torch.optim.Optimizer | None = None
        self._handle: Any = None
        # per parameter: (param (the optimizer's state key), dim of rows or -1, masked row indices or
        # a broadcast keep mask, saved masked rows / saved param, saved optimizer state); under FSDP2
        # the mask, the saved tensors and the writes are those of the local shard.
        self._saved: list[tuple[nn.Parameter, int, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]] = []

    def bind(self, optimizer: torch.optim.Optimizer) -> None:
        """Register the step post-hook on ``optimizer`` (replacing any earlier binding)."""
        self.remove()
        self.optimizer = inner_optimizer(optimizer)
        self._handle = self.optimizer.register_step_post_hook(self._restore)

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._saved = []

    def clear(self) -> None:
        """Forget what was saved (a new optimizer step begins)."""
        self._saved = []

    def save(self, t: Target, keep: torch.Tensor, drop: torch.Tensor | None, mask_bias: bool) -> None:
        """Remember the masked rows of ``t`` (weight, and bias if masked) and their optimizer state."""
        if self.optimizer is None:
            raise RuntimeError(
                "MIGU strict mode needs the optimizer to keep masked rows fixed: "
                "migu.attach(model, config, optimizer=opt) or masker.bind_optimizer(opt)."
            )
        params = [t.weight] + ([t.bias] if mask_bias and t.bias is not None else [])
        for p in params:
            if p.grad is None:
                continue
            dim = t.row_dim if p.dim() > 1 else 0
            state = row_states(self.optimizer, p)
            if is_dtensor(p):
                shard = row_shard(p, dim, t.name)
                local_keep = keep[shard.start : shard.stop]
                if p.dim() > 1:
                    local_keep = local_keep.unsqueeze(1 - dim)  # broadcast over d_in
                full = {k: to_local(v).detach().clone() for k, v in state.items()}
                self._saved.append((p, -1, local_keep, shard.local.detach().clone(), full))
                continue
            if drop is not None:
                # Top-k cut: save only the masked rows (a fixed count: no host sync) and copy them back
                # after the step; the kept rows are neither copied nor touched.
                idx = drop.to(p.device)
                rows = {k: v.detach().index_select(dim, idx) for k, v in state.items()}
                self._saved.append((p, dim, idx, p.detach().index_select(dim, idx), rows))
                continue
            shape_keep = keep if p.dim() == 1 else keep.unsqueeze(1 - t.row_dim)  # broadcast over d_in
            full = {k: v.detach().clone() for k, v in state.items()}
            self._saved.append((p, -1, shape_keep, p.detach().clone(), full))

    @torch.no_grad()
    def _restore(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """After the step: masked rows of weights and optimizer state get their old values back."""
        for param, dim, where, saved_p, saved_state in self._saved:
            p = to_local(param)  # FSDP2: the local shard (a view), like everything saved for it
            states = {k: to_local(v) for k, v in row_states(optimizer, param).items()}
            if dim >= 0:  # `where` = masked row indices; saved_* = those rows
                p.index_copy_(dim, where, saved_p)
                for key, value in states.items():
                    old = saved_state.get(key)
                    if old is None:  # state created by this step (first step) starts at 0 for masked rows
                        value.index_fill_(dim, where, 0)
                    else:
                        value.index_copy_(dim, where, old)
                continue
            keepf = where.to(p.dtype)  # quantile cut: `where` = broadcast keep mask
            # x*1 + y*0 and x*0 + y are exact: kept rows take the new value, masked rows the old.
            p.mul_(keepf).add_(saved_p.mul_(1 - keepf))
            for key, value in states.items():
                kv = where.to(value.dtype)
                old = saved_state.get(key)
                value.mul_(kv)  # state created by this step (first step) starts at 0 for masked rows
                if old is not None:
                    value.add_(old.mul_(1 - kv))
        self._saved = []
