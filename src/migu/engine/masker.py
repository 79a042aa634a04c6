"""The MIGU masker: magnitude statistics in the forward pass, row masks at the optimizer step.

Usage::

    masker = migu.attach(model, migu.MIGUConfig(threshold=0.7))
    loss = model(**batch).loss
    loss.backward()
    masker.apply()       # masks from the cached statistics; zero masked gradient rows
    optimizer.step()

Per target weight W (d_out rows) and token x the statistic is n_i = |w_i . x| / sum_j |w_j . x|,
averaged over the real tokens of all micro-batches since the last ``apply()``. ``apply()`` keeps
the top d_out - floor(T d_out) rows of each weight and zeroes the gradient of the others.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .config import MIGUConfig
from .targets import Target, resolve_targets

log = logging.getLogger(__name__)

# Tokens whose outputs sum to (almost) zero would divide by zero in the L1 normalization.
_EPS = 1e-12


def num_masked(threshold: float, d_out: int) -> int:
    """floor(T * d_out), robust to binary float error (0.29 * 100 is 28.999...)."""
    return math.floor(round(threshold * d_out, 6))


def make_keep_masks(stats: torch.Tensor, threshold: float, cut: str = "topk") -> torch.Tensor:
    """Row masks for a stack of statistics.

    Args:
        stats: [n_layers, d_out] fp32 statistics, larger = more important.
        threshold: T in [0, 1).
        cut: ``"topk"`` keeps exactly d_out - floor(T d_out) rows, ties to the lower index;
            ``"quantile"`` keeps rows >= the T-quantile (the authors' code; ties keep more).

    Returns:
        [n_layers, d_out] bool, True = the row keeps its gradient.
    """
    n, d = stats.shape
    if cut == "quantile":
        q = torch.quantile(stats, threshold, dim=1, keepdim=True)  # [n, 1]
        return stats >= q
    k = d - num_masked(threshold, d)
    if k >= d:
        return torch.ones_like(stats, dtype=torch.bool)
    # A stable descending sort puts equal values in index order: ties go to the lower index.
    order = torch.sort(stats, dim=1, descending=True, stable=True).indices[:, :k]  # [n, k]
    return torch.zeros_like(stats, dtype=torch.bool).scatter_(1, order, True)


def _distributed_world() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class Masker:
    """Hooks a model's target weights; see the module docstring. Build it with :func:`attach`."""

    def __init__(self, model: nn.Module, config: MIGUConfig, optimizer: torch.optim.Optimizer | None = None):
        self.model = model
        self.config = config
        self.targets: list[Target] = resolve_targets(model, config.targets, config.components)
        self.task_index = 0
        self.steps = 0
        self.masks: dict[str, torch.Tensor] = {}
        self._force_collect = False
        self._handles: list[Any] = []
        self._opt_handles: list[Any] = []
        self._optimizer: torch.optim.Optimizer | None = None
        self._strict_saved: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]] = []
        self._token_masks: dict[str, torch.Tensor | None] = {}
        # Targets grouped by d_out so each group's statistics are one [n, d] block: masks of a
        # whole group come from one sort instead of one per layer.
        groups: dict[int, list[int]] = {}
        for i, t in enumerate(self.targets):
            groups.setdefault(t.d_out, []).append(i)
        self._order = [i for idx in groups.values() for i in idx]
        self._groups = [(d, idx) for d, idx in groups.items()]
        self._flat: torch.Tensor | None = None  # all statistics + token counts: one collective
        self._stat_views: list[torch.Tensor] = []
        self._count_view: torch.Tensor | None = None
        self._forward_params = self._forward_parameter_names(model)
        self._handles.append(model.register_forward_pre_hook(self._capture_token_masks, with_kwargs=True))
        for i, t in enumerate(self.targets):
            self._handles.append(t.hook_module.register_forward_hook(self._make_hook(i)))
        if optimizer is not None:
            self.bind_optimizer(optimizer)
        if config.mode == "strict" and optimizer is None:
            log.info("MIGU strict mode: bind the optimizer (bind_optimizer) before the first apply()")
        log.info(
            "MIGU attached to %d weights (threshold=%.2f, preset=%s, mode=%s)",
            len(self.targets),
            config.threshold,
            config.preset,
            config.mode,
        )

    # ------------------------------------------------------------------ buffers
    def _ensure_buffer(self, device: torch.device) -> None:
        """Allocate (or move) the flat fp32 statistics buffer: [sum_i d_i stats | n counts]."""
        if self._flat is not None and self._flat.device == device:
            return
        total = sum(t.d_out for t in self.targets)
        flat = torch.zeros(total + len(self.targets), dtype=torch.float32, device=device)
        if self._flat is not None:
            flat.copy_(self._flat.to(device))
        self._flat = flat
        views: list[torch.Tensor | None] = [None] * len(self.targets)
        offset = 0
        for i in self._order:
            d = self.targets[i].d_out
            views[i] = flat[offset : offset + d]
            offset += d
        self._stat_views = views  # type: ignore[assignment]
        self._count_view = flat[offset:]

    # ------------------------------------------------------------------ forward
    @staticmethod
    def _forward_parameter_names(model: nn.Module) -> list[str] | None:
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            return None
        names = [
            n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and n != "self"
        ]
        return names

    def _capture_token_masks(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Remember which tokens are real for this forward call (padding excluded)."""
        call = dict(kwargs)
        if args and self._forward_params:
            call.update(zip(self._forward_params, args, strict=False))
        main = call.get("attention_mask")
        dec = call.get("decoder_attention_mask")
        if dec is None and call.get("labels") is not None and call.get("decoder_input_ids") is None:
            labels = call["labels"]
            # Seq2seq without an explicit decoder mask: a decoder position is real iff its label is.
            if torch.is_tensor(labels) and labels.dim() == 2 and getattr(module, "config", None) is not None:
                if getattr(module.config, "is_encoder_decoder", False):
                    dec = labels != -100
        self._token_masks = {
            "main": main if torch.is_tensor(main) else None,
            "decoder": dec if torch.is_tensor(dec) else None,
        }

    def _token_weights(self, stream: str, lead_shape: torch.Size, device: torch.device) -> torch.Tensor | None:
        """[N] float weights (1 real, 0 padding) over flattened leading dims, or None for all-real."""
        if not self.config.exclude_padding or len(lead_shape) < 2:
            return None  # no token axis (e.g. a pooler on [B, H]): every row counts
        candidates = [self._token_masks.get(stream), self._token_masks.get("decoder" if stream == "main" else "main")]
        for m in candidates:
            if m is not None and tuple(m.shape) == tuple(lead_shape):
                return m.reshape(-1).to(device=device, dtype=torch.float32)
        return None

    def _make_hook(self, i: int):
        target = self.targets[i]
        cfg = self.config

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if not (torch.is_grad_enabled() or self._force_collect):
                return  # evaluation forward passes do not feed the statistic
            if not target.weight.requires_grad:
                return  # frozen (e.g. an old task's LoRA): never masked, so never measured
            y = output[0] if isinstance(output, tuple) else output
            self._accumulate(i, target, y.detach(), cfg)

        return hook

    @torch.no_grad()
    def _accumulate(self, i: int, target: Target, y: torch.Tensor, cfg: MIGUConfig) -> None:
        lead = y.shape[:-1]
        a = y.reshape(-1, y.shape[-1]).float()  # [N, d_out] fp32 even under bf16
        if not cfg.stat_bias and target.stat_bias is not None:
            a = (a - target.stat_bias.detach().float()).abs_()  # |w_i . x|: bias left out
        else:
            a = a.abs_() if a.dtype != y.dtype else a.abs()  # never write into the model's output
        m = self._token_weights(target.stream, lead, a.device)  # [N] 1 = real token, or None
        count = m.sum() if m is not None else a.new_tensor(float(a.shape[0]))
        w = m
        if cfg.normalize:
            # n_t = a_t / sum_j a_tj per token, summed with token weights as one mat-vec:
            # sum_t m_t n_t = (m / rowsum)^T a, without materializing n.
            inv = 1.0 / a.sum(dim=1).clamp_min(_EPS)  # [N]
            w = inv if m is None else m * inv
        stat = torch.mv(a.t(), w) if w is not None else a.sum(dim=0)  # [d_out]
        self._ensure_buffer(target.weight.device)
        assert self._count_view is not None
        self._stat_views[i].add_(stat.to(self._stat_views[i].device))
        self._count_view[i].add_(count.to(self._count_view.device))

    # ------------------------------------------------------------------ public API
    @contextlib.contextmanager
    def collecting(self) -> Iterator[Masker]:
        """Collect statistics also under ``torch.no_grad()`` (analysis, not training)."""
        prev, self._force_collect = self._force_collect, True
        try:
            yield self
        finally:
            self._force_collect = prev

    def statistics(self) -> dict[str, torch.Tensor]:
        """Current mean statistic per target (fp32 copies), as of the calls since the last reset."""
        if self._flat is None:
            return {}
        assert self._count_view is not None
        return {
            t.name: (self._stat_views[i] / self._count_view[i].clamp_min(1.0)).clone()
            for i, t in enumerate(self.targets)
        }

    def reset(self) -> None:
        """Drop the accumulated statistics."""
        if self._flat is not None:
            self._flat.zero_()

    def compute_masks(self) -> dict[str, torch.Tensor]:
        """Masks from the accumulated statistics (after the cross-rank average), without applying."""
        if self._flat is None:
            return {}
        if _distributed_world() > 1:
            dist.all_reduce(self._flat, op=dist.ReduceOp.SUM)  # ONE collective for all layers
        assert self._count_view is not None
        masks: dict[str, torch.Tensor] = {}
        for _, idx in self._groups:
            stats = torch.stack([self._stat_views[i] for i in idx])  # [n, d]
            stats = stats / self._count_view[idx].clamp_min(1.0).unsqueeze(1)
            keep = make_keep_masks(stats, self.config.threshold, self.config.cut)  # [n, d] bool
            for row, i in enumerate(idx):
                masks[self.targets[i].name] = keep[row]
        return masks

    def apply(self) -> dict[str, torch.Tensor]:
        """Turn the cached statistics into row masks and mask the gradients; reset statistics.

        Call once per optimizer step, after ``backward()`` of the last micro-batch and before
        gradient clipping and ``optimizer.step()``. Returns ``masks`` ({name: BoolTensor[d_out]},
        True = row updated), only for targets that had a gradient.
        """
        self.steps += 1
        with_grad = [i for i, t in enumerate(self.targets) if t.weight.grad is not None]
        if self.config.skip_first_task and self.task_index == 0:
            self.masks = {
                self.targets[i].name: torch.ones(self.targets[i].d_out, dtype=torch.bool, device=self.targets[i].weight.device)
                for i in with_grad
            }
            self.reset()
            return self.masks
        if with_grad and self._flat is None:
            raise RuntimeError(
                "MIGU apply() found gradients but no statistics: run the forward pass of the attached "
                "model (with gradients enabled) before apply()."
            )
        all_masks = self.compute_masks()
        self.masks = {}
        grads: list[torch.Tensor] = []
        factors: list[torch.Tensor] = []
        self._strict_saved = []
        for i in with_grad:
            t = self.targets[i]
            keep = all_masks[t.name].to(t.weight.device)
            self.masks[t.name] = keep
            grad = t.weight.grad
            assert grad is not None
            row = keep.to(grad.dtype)
            grads.append(grad)
            factors.append(row.unsqueeze(1) if t.row_dim == 0 else row.unsqueeze(0))  # broadcast over d_in
            if self.config.mask_bias and t.bias is not None and t.bias.grad is not None:
                grads.append(t.bias.grad)
                factors.append(row)
            if self.config.mode == "strict":
                self._save_for_strict(t, keep)
        if grads:
            torch._foreach_mul_(grads, factors)  # in-place, one fused launch for all layers
        self.reset()
        self._token_masks = {}
        return self.masks

    # ------------------------------------------------------------------ strict mode
    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Register the step hook strict mode needs to restore masked rows after the step."""
        for h in self._opt_handles:
            h.remove()
        # Wrappers (Accelerate's AcceleratedOptimizer) delegate to an inner optimizer, whose
        # step fires the hooks and whose state holds the moments.
        while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
            optimizer = optimizer.optimizer
        self._optimizer = optimizer
        self._opt_handles = [optimizer.register_step_post_hook(self._restore_strict)]

    def _save_for_strict(self, t: Target, keep: torch.Tensor) -> None:
        if self._optimizer is None:
            raise RuntimeError(
                "MIGU strict mode needs the optimizer to keep masked rows fixed: "
                "migu.attach(model, config, optimizer=opt) or masker.bind_optimizer(opt)."
            )
        params = [t.weight] + ([t.bias] if self.config.mask_bias and t.bias is not None else [])
        for p in params:
            if p.grad is None:
                continue
            shape_keep = keep if p.dim() == 1 else (keep.unsqueeze(1) if t.row_dim == 0 else keep.unsqueeze(0))
            state = {
                k: v.detach().clone()
                for k, v in self._optimizer.state.get(p, {}).items()
                if torch.is_tensor(v) and v.shape == p.shape
            }
            self._strict_saved.append((p, shape_keep, p.detach().clone(), state))

    @torch.no_grad()
    def _restore_strict(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """After the step: masked rows of weights and optimizer state get their old values back."""
        for p, keep, saved_p, saved_state in self._strict_saved:
            keepf = keep.to(p.dtype)
            # x*1 + y*0 and x*0 + y are exact: kept rows take the new value, masked rows the old.
            p.mul_(keepf).add_(saved_p.mul_(1 - keepf))
            for key, value in optimizer.state.get(p, {}).items():
                if not (torch.is_tensor(value) and value.shape == p.shape):
                    continue
                kv = keep.to(value.dtype)
                old = saved_state.get(key)
                value.mul_(kv)  # state created by this step (first step) starts at 0 for masked rows
                if old is not None:
                    value.add_(old.mul_(1 - kv))
        self._strict_saved = []

    # ------------------------------------------------------------------ teardown
    def detach(self) -> None:
        """Remove every hook; the model is exactly as before attach()."""
        for h in self._handles + self._opt_handles:
            h.remove()
        self._handles, self._opt_handles = [], []
        self._flat = None
        self._stat_views = []
        self._count_view = None
        self._token_masks = {}
        self._strict_saved = []

    def __repr__(self) -> str:
        return f"Masker(targets={len(self.targets)}, threshold={self.config.threshold}, mode={self.config.mode})"


def attach(
    model: nn.Module, config: MIGUConfig | None = None, optimizer: torch.optim.Optimizer | None = None
) -> Masker:
    """Attach MIGU to ``model``; returns the :class:`Masker` (``apply()`` at each optimizer step)."""
    return Masker(model, config or MIGUConfig(), optimizer)
