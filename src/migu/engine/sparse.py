"""Sparse weight-gradient backward for MIGU (opt-in: ``MIGUConfig(sparse_backward=True)``).

For a target ``nn.Linear`` (y = x W^T + b, W: [d_out, d_in]) MIGU zeroes the gradient of the
masked rows. The dense backward still computes those rows (grad_W = g^T x over all d_out rows)
and ``apply()`` throws them away. The sparse backward computes the kept rows only::

    keep    = top-k rows of this micro-batch's statistic, k = d_out - floor(T d_out)  (fixed k: no host sync)
    grad_W  = 0;  grad_W[keep] = g[:, keep]^T x        (k / d_out of the weight-gradient FLOPs)
    grad_b  = 0;  grad_b[keep] = sum_t g[t, keep]       (mask_bias; else the full bias gradient)
    grad_x  = g W                                       (full: the input gradient is never masked)

How it is wired (no library internals are patched):

- Each eligible target ``nn.Linear`` is swapped, in its parent module, for a :class:`SparseLinear`
  (an ``nn.Linear`` subclass) that holds the SAME ``Parameter`` objects, hooks and flags, so
  optimizers, ``state_dict`` keys and ``isinstance`` checks are unchanged. ``Masker.detach()``
  swaps the originals back.
- The masker's forward hook still computes the statistic; for a sparse target it also adds it to
  a per-forward "micro-batch" buffer. The autograd node keeps a reference to that buffer, so the
  backward of layer l makes its mask from the statistic of the forward that built the graph
  (complete by the time the backward runs), the same numbers and the same stable sort as
  ``apply()``.
- ``apply()`` is still called once per optimizer step. It does not touch the gradients of sparse
  targets again (they are already masked) and returns, for them, the rows that got a gradient.

Semantics: the mask is taken from the CURRENT micro-batch's statistic at backward time. With one
micro-batch per step this is exactly the dense result (dense backward + ``apply()``). With
gradient accumulation each micro-batch gets its own mask (the dense path makes one mask from the
statistic of all micro-batches at the step); ``apply()`` then returns the union of the micro-batch
masks (every row that received some gradient). Under ``torch.distributed`` the micro-batch
statistic is summed across ranks (one collective per forward, after the forward) so every rank
keeps the same rows.

Not supported (``MIGUConfig`` raises ValueError): ``mode="strict"`` and ``cut="quantile"`` (its
kept count depends on the data, which would need a host sync). Targets that are not a plain
``nn.Linear`` (GPT-2 Conv1D, LoRA factors, quantized linears) and weights shared with another
module (tied embeddings) keep the dense path: ``apply()`` masks them as usual.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .config import MIGUConfig
from .cut import num_kept, num_masked, rank_rows
from .targets import Target, is_lora_layer


class MaskerView(Protocol):
    """What the sparse backward reads of its masker (``migu.engine.masker.Masker``)."""

    model: nn.Module
    config: MIGUConfig
    targets: list[Target]
    task_index: int


log = logging.getLogger(__name__)


class _SparseLinearFunction(torch.autograd.Function):
    """y = x W^T + b with a row-sparse weight gradient (see the module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        state: SparseBackward,
        index: int,
        buffer: torch.Tensor,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.state, ctx.index, ctx.buffer, ctx.has_bias = state, index, buffer, bias is not None
        return F.linear(x, weight, bias)  # [..., d_out]

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        d_out, d_in = weight.shape
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = g.matmul(weight)  # [..., d_in]: the input gradient is full, as in the dense path
        if need_w or (need_b and ctx.has_bias):
            g2 = g.reshape(-1, d_out)  # [N, d_out]
            keep = ctx.state.keep_rows(ctx.index, ctx.buffer, g.device)  # [k] ascending, or None = all
            if keep is None:
                if need_w:
                    grad_w = g2.t().mm(x.reshape(-1, d_in))  # [d_out, d_in]
                if need_b and ctx.has_bias:
                    grad_b = g2.sum(0)
            else:
                # Gather the kept output columns once (k is fixed, so no host sync); both the weight
                # and the bias gradient read the [N, k] copy instead of the [N, d_out] gradient.
                g_keep = g2.index_select(1, keep)  # [N, k]
                if need_w:
                    rows = g_keep.t().mm(x.reshape(-1, d_in))  # [k, d_in]: only the kept rows' FLOPs
                    grad_w = rows.new_zeros(d_out, d_in).index_copy_(0, keep, rows)  # masked rows 0
                if need_b and ctx.has_bias:
                    if ctx.state.mask_bias:
                        grad_b = g2.new_zeros(d_out).index_copy_(0, keep, g_keep.sum(0))
                    else:
                        grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b, None, None, None


class SparseLinear(nn.Linear):
    """Stands in for one target ``nn.Linear``: same parameters, row-sparse weight gradient.

    Built by :class:`SparseBackward` from the original module; never constructed directly.
    """

    _migu_state: SparseBackward
    _migu_index: int
    _migu_original: nn.Linear

    @classmethod
    def replacing(cls, linear: nn.Linear, state: SparseBackward, index: int) -> SparseLinear:
        new = cls.__new__(cls)
        # Share the original's attribute dict entries: the SAME Parameter objects (optimizer state
        # stays valid, state_dict keys unchanged), the same hook dicts (hooks registered on either
        # module fire once, on the one that runs) and the same flags.
        new.__dict__.update(linear.__dict__)
        new.__dict__["_migu_state"] = state
        new.__dict__["_migu_index"] = index
        new.__dict__["_migu_original"] = linear
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if not (torch.is_grad_enabled() and w.requires_grad):
            return F.linear(x, w, b)  # no weight gradient to thin out: the plain op
        dev = x.device.type
        if torch.is_autocast_enabled(dev):
            # Cast like autocast casts F.linear, then run the function with autocast off: the
            # saved x, W and the backward all use the low-precision copies.
            dt = torch.get_autocast_dtype(dev)
            x, w, b = x.to(dt), w.to(dt), (b.to(dt) if b is not None else None)
            with torch.autocast(dev, enabled=False):
                return _SparseLinearFunction.apply(
                    x, w, b, self._migu_state, self._migu_index, self._migu_state.buffer(x.device)
                )
        return _SparseLinearFunction.apply(
            x, w, b, self._migu_state, self._migu_index, self._migu_state.buffer(x.device)
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + ", migu_sparse_backward=True"


class SparseBackward:
    """Installs :class:`SparseLinear` for a masker's eligible targets; owns the micro-batch statistic.

    Buffers (fp32, one flat tensor per forward): ``[stats of the sparse targets | counts]``, the
    targets ordered by width so that each group of equal ``d_out`` is one ``[n, d]`` block.
    """

    def __init__(self, masker: MaskerView) -> None:
        self.masker = masker
        self.mask_bias = bool(masker.config.mask_bias)
        self.indices = self._eligible(masker)
        widths: dict[int, list[int]] = {}
        for i in self.indices:
            widths.setdefault(masker.targets[i].d_out, []).append(i)
        self._offset: dict[int, tuple[int, int, int]] = {}  # target -> (start, d_out, count slot)
        # per width: (d_out, targets, start of the [n, d] block, first count slot)
        self._groups: list[tuple[int, list[int], int, int]] = []
        offset = slot = 0
        for d, idx in widths.items():
            self._groups.append((d, idx, offset, slot))
            for i in idx:
                self._offset[i] = (offset, d, slot)
                offset, slot = offset + d, slot + 1
        self._total = offset
        self._buffer: torch.Tensor | None = None  # this forward's statistic (a new tensor per forward)
        # The kept rows of every sparse target, made from one forward's buffer at its first backward.
        self._kept: tuple[torch.Tensor, dict[int, torch.Tensor]] | None = None
        self._applied: torch.Tensor | None = None  # [total] bool: rows that got a gradient this step
        self._swapped: list[tuple[nn.Module, str, nn.Linear, SparseLinear]] = []
        self._handles: list[Any] = []
        for i in self.indices:
            self._swap(masker.model, masker.targets[i].hook_module, i)
        root = masker.model
        self._handles.append(root.register_forward_pre_hook(self._new_forward))
        self._handles.append(root.register_forward_hook(self._reduce_forward))
        skipped = len(masker.targets) - len(self.indices)
        log.info(
            "MIGU sparse backward on %d target linears%s",
            len(self.indices),
            f" ({skipped} other targets keep the dense backward)" if skipped else "",
        )

    # ------------------------------------------------------------------ install
    @staticmethod
    def _eligible(masker: MaskerView) -> list[int]:
        model = masker.model
        uses: dict[int, int] = {}
        for _, p in model.named_parameters(remove_duplicate=False):
            uses[id(p)] = uses.get(id(p), 0) + 1
        # LoRA factors stay dense: B is judged by the whole layer output, A has r rows (nothing to
        # save), and PEFT owns those modules.
        in_lora = {id(m) for layer in model.modules() if is_lora_layer(layer) for m in layer.modules()}
        out = []
        for i, t in enumerate(masker.targets):
            mod = t.hook_module
            if type(mod) is not nn.Linear or mod.weight is not t.weight or mod is model or id(mod) in in_lora:
                continue  # Conv1D, quantized or other subclasses, LoRA factors, the root module
            if uses.get(id(t.weight), 0) > 1:
                continue  # a tied weight also gets gradient elsewhere: the dense path masks the sum
            out.append(i)
        return out

    def _swap(self, model: nn.Module, linear: nn.Module, index: int) -> None:
        assert isinstance(linear, nn.Linear)
        new = SparseLinear.replacing(linear, self, index)
        for parent in model.modules():
            for name, child in list(parent._modules.items()):
                if child is linear:
                    setattr(parent, name, new)
                    self._swapped.append((parent, name, linear, new))

    def uninstall(self) -> None:
        """Put the original ``nn.Linear`` modules back (same parameters); remove the hooks."""
        for parent, name, original, new in reversed(self._swapped):
            if parent._modules.get(name) is new:
                original.training = new.training  # .train()/.eval() since the swap set the stand-in
                setattr(parent, name, original)
        self._swapped = []
        for h in self._handles:
            h.remove()
        self._handles = []
        self._buffer = self._kept = None

    # ------------------------------------------------------------------ statistic
    def _new_forward(self, module: nn.Module, args: Any) -> None:
        self._buffer = None  # a fresh buffer per forward: graphs still alive keep theirs

    def _reduce_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if self._buffer is not None and distributed:
            dist.all_reduce(self._buffer, op=dist.ReduceOp.SUM)  # ONE collective per forward

    def buffer(self, device: torch.device) -> torch.Tensor:
        """This forward's statistic buffer ([total + n_sparse] fp32), created on first use.

        One buffer per forward even when layers sit on several devices (it stays on the first).
        """
        if self._buffer is None:
            self._buffer = torch.zeros(self._total + len(self.indices), dtype=torch.float32, device=device)
        return self._buffer

    def add(self, i: int, stat: torch.Tensor, count: torch.Tensor) -> None:
        """Called by the masker's statistic for sparse target ``i`` ([d_out] stat, scalar count)."""
        start, d, slot = self._offset[i]
        buf = self.buffer(stat.device)
        buf[start : start + d].add_(stat.to(buf.device))
        buf[self._total + slot].add_(count.to(buf.device))

    # ------------------------------------------------------------------ backward
    def keep_rows(self, i: int, buffer: torch.Tensor, device: torch.device) -> torch.Tensor | None:
        """[k] ascending indices of the rows of target ``i`` that keep their gradient; None = all."""
        cfg = self.masker.config
        _, d, _ = self._offset[i]
        if num_masked(cfg.threshold, d) == 0 or (cfg.skip_first_task and self.masker.task_index == 0):
            self._mark_applied(i, None, device)
            return None
        if self._kept is None or self._kept[0] is not buffer:
            self._kept = (buffer, self._kept_rows(buffer))  # the first layer whose backward runs
        keep = self._kept[1][i].to(device)
        self._mark_applied(i, keep, device)
        return keep

    def _kept_rows(self, buffer: torch.Tensor) -> dict[int, torch.Tensor]:
        """Per sparse target: [k] ascending kept rows; two sorts per width group, not per layer.

        The same arithmetic as Masker._cut (mean = sum / count, then :func:`rank_rows`), so the rows
        are those apply() would keep.
        """
        out: dict[int, torch.Tensor] = {}
        for d, idx, start, slot in self._groups:
            n, k = len(idx), num_kept(self.masker.config.threshold, d)
            counts = buffer[self._total + slot : self._total + slot + n].clamp_min(1.0)  # [n]
            stats = buffer[start : start + n * d].view(n, d) / counts.unsqueeze(1)  # [n, d] means
            kept = rank_rows(stats)[:, :k].sort(dim=1).values  # [n, k] ascending: g is read in order
            out.update(zip(idx, kept, strict=True))
        return out

    def _mark_applied(self, i: int, keep: torch.Tensor | None, device: torch.device) -> None:
        start, d, _ = self._offset[i]
        if self._applied is None:
            self._applied = torch.zeros(self._total, dtype=torch.bool, device=device)
        view = self._applied[start : start + d]
        if keep is None:
            view.fill_(True)
        else:
            view.index_fill_(0, keep.to(view.device), True)

    def applied_mask(self, i: int) -> torch.Tensor | None:
        """[d_out] bool: rows of target ``i`` that got a gradient since the last reset (None: no backward)."""
        if self._applied is None:
            return None
        start, d, _ = self._offset[i]
        return self._applied[start : start + d].clone()

    def reset_applied(self) -> None:
        if self._applied is not None:
            self._applied.zero_()
