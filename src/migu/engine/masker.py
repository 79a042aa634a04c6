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

MIGU+Cluster (``MIGUConfig(cluster=...)``): after ``masker.set_clusters({name: LongTensor[d_out]})``
those targets are cut per cluster (``cut.cluster_split``) from the same statistic; targets without
clusters keep the plain top-k cut.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .config import MIGUConfig
from .cut import ClusterLayout, cluster_split, num_kept, quantile_keep, topk_split
from .sparse import SparseBackward
from .strict import StrictRestore
from .targets import Target, resolve_targets
from .tokens import TokenMasks

log = logging.getLogger(__name__)

# Tokens whose outputs sum to (almost) zero would divide by zero in the L1 normalization.
_EPS = 1e-12
# The statistic reads a layer output in token chunks of at most this many fp32 bytes: |y - b| never
# exists at full size (no [N, d_out] fp32 copy of the output, also under bf16). On CPU the chunk
# lives in one persistent scratch buffer (a fresh multi-MB allocation costs page faults); budgets
# from 128 KB to 16 MB measured the same on MiniLM (README, performance).
_CHUNK_BYTES_CPU = 4 << 20
_CHUNK_BYTES_DEVICE = 64 << 20


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
        self._strict = StrictRestore()
        self._tokens = TokenMasks(model, config.exclude_padding)
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
        self._count_index: list[torch.Tensor] = []  # per group: its targets' count slots (device tensor)
        self._scratch: torch.Tensor | None = None  # CPU chunk buffer of the statistic (see _CHUNK_BYTES_CPU)
        self._sparse: SparseBackward | None = None
        self._sparse_set: frozenset[int] = frozenset()
        # MIGU+Cluster: the assignments as set, and per width group (index into _groups) the
        # clustered targets' places in the group, those places as a tensor (None = the whole group)
        # and their layout.
        self._clusters: dict[str, torch.Tensor] = {}
        self._cluster_groups: dict[int, tuple[list[int], torch.Tensor | None, ClusterLayout]] = {}
        self._examples: dict[str, list[torch.Tensor]] | None = None  # per_example() recording
        if config.cluster is not None:
            for t in self.targets:
                if t.weight.requires_grad:
                    config.cluster.clusters_for(t.d_out, t.name)  # a clear error now, not at clustering
        self._handles.append(model.register_forward_pre_hook(self._tokens.capture, with_kwargs=True))
        for i, t in enumerate(self.targets):
            self._handles.append(t.hook_module.register_forward_hook(self._make_hook(i)))
        if config.sparse_backward:
            # After the hooks: the stand-in modules share the originals' hook dicts, so they fire.
            self._sparse = SparseBackward(self)
            self._sparse_set = frozenset(self._sparse.indices)
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
        self._count_index = [torch.tensor(idx, device=device) for _, idx in self._groups]

    # ------------------------------------------------------------------ forward
    def _make_hook(self, i: int):
        target = self.targets[i]
        cfg = self.config

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if not (torch.is_grad_enabled() or self._force_collect):
                return  # evaluation forward passes do not feed the statistic
            if not target.weight.requires_grad:
                return  # frozen (e.g. an old task's LoRA): never masked, so never measured
            y = output[0] if isinstance(output, tuple) else output
            if self._examples is not None:  # per_example(): profiles only, the training statistic untouched
                self._examples.setdefault(target.name, []).append(
                    self._example_stats(target, y.detach(), cfg)
                )
                return
            self._accumulate(i, target, y.detach(), cfg)

        return hook

    def _chunk_buffer(self, numel: int, device: torch.device) -> torch.Tensor:
        if device.type != "cpu":
            return torch.empty(numel, dtype=torch.float32, device=device)  # the caching allocator reuses it
        if self._scratch is None or self._scratch.numel() < numel:
            self._scratch = torch.empty(numel, dtype=torch.float32)
        return self._scratch

    @torch.no_grad()
    def _accumulate(self, i: int, target: Target, y: torch.Tensor, cfg: MIGUConfig) -> None:
        d = y.shape[-1]
        y2 = y.reshape(-1, d)  # [N, d_out], a view for contiguous outputs
        n = y2.shape[0]
        tok, count = self._tokens.weights(target.stream, y.shape[:-1], y.device, n)  # [N] 1 = real token
        bias = target.stat_bias.detach() if not cfg.stat_bias and target.stat_bias is not None else None
        fused_sub = bias is not None and y.dtype == torch.float32 and bias.dtype == torch.float32
        if bias is not None and not fused_sub:
            bias = bias.float()  # bf16 outputs: subtract in fp32, as the fp32 reference does
        self._ensure_buffer(target.weight.device)
        into = self._stat_views[i]  # [d_out] fp32 slot of this target in the flat buffer
        # Usually the chunks add straight into the flat buffer (no per-layer temporary, no extra add);
        # a sparse target also needs this forward's statistic alone, and a model split over devices
        # sums on the output's device first.
        direct = i not in self._sparse_set and into.device == y.device
        budget = _CHUNK_BYTES_CPU if y.device.type == "cpu" else _CHUNK_BYTES_DEVICE
        rows = max(1, min(n, budget // (4 * d)))
        buf = self._chunk_buffer(rows * (d + 1), y.device)  # [rows * d_out | rows] fp32
        stat: torch.Tensor | None = into if direct else None
        for s in range(0, n, rows):  # one chunk (one pass) unless the output is large
            yc = y2[s : s + rows]
            r = yc.shape[0]
            a = buf[: r * d].view(r, d)  # [r, d_out] fp32; never written into the model's output
            if fused_sub:
                torch.sub(yc, bias, out=a).abs_()  # |w_i . x|: the bias left out
            elif bias is None and yc.dtype == torch.float32:
                torch.abs(yc, out=a)  # no bias (T5, Llama): one read, one write
            else:
                a.copy_(yc)  # fp32 even under bf16, one chunk at a time
                if bias is not None:
                    a.sub_(bias)
                a.abs_()
            w = tok[s : s + r] if tok is not None else None  # [r]
            if cfg.normalize:
                # n_t = a_t / sum_j a_tj per token, summed with token weights as one mat-vec:
                # sum_t m_t n_t = (m / rowsum)^T a, without materializing n.
                inv = torch.sum(a, 1, out=buf[rows * d : rows * d + r]).clamp_min_(_EPS).reciprocal_()  # [r]
                w = inv if w is None else inv.mul_(w)
            if w is None:
                part = a.sum(0)  # [d_out]
                stat = part if stat is None else stat.add_(part)
            else:
                stat = torch.mv(a.t(), w) if stat is None else stat.addmv_(a.t(), w)  # [d_out]
        assert stat is not None and self._count_view is not None
        if not direct:
            into.add_(stat.to(into.device))
        self._count_view[i].add_(count.to(self._count_view.device))
        if i in self._sparse_set:
            assert self._sparse is not None
            self._sparse.add(i, stat, count)  # this forward's statistic, read by the sparse backward

    @torch.no_grad()
    def _example_stats(self, target: Target, y: torch.Tensor, cfg: MIGUConfig) -> torch.Tensor:
        """[B, d_out] fp32: each example's statistic (the same magnitude, normalization and real-token
        mean as the training statistic, over that example's tokens only)."""
        d = y.shape[-1]
        b, tok = self._tokens.example_weights(target.stream, y.shape[:-1], y.device)  # B, [B, L] or None
        a = y.reshape(b, -1, d).float()  # [B, L, d_out]
        if not cfg.stat_bias and target.stat_bias is not None:
            a = a - target.stat_bias.detach().float()
        a = a.abs()
        if cfg.normalize:
            a = a / a.sum(-1, keepdim=True).clamp_min(_EPS)
        if tok is None:
            return a.mean(1)
        return torch.einsum("bld,bl->bd", a, tok) / tok.sum(1, keepdim=True).clamp_min(1.0)

    # ------------------------------------------------------------------ public API
    @contextlib.contextmanager
    def per_example(self) -> Iterator[dict[str, list[torch.Tensor]]]:
        """Record each example's statistic per target instead of accumulating (co-magnitude profiles).

        Yields ``{target name: [[B, d_out] fp32 per forward call, ...]}``; collects under
        ``torch.no_grad()`` too, and leaves the training statistic untouched.
        """
        record: dict[str, list[torch.Tensor]] = {}
        prev_force, prev_rec = self._force_collect, self._examples
        self._force_collect, self._examples = True, record
        try:
            yield record
        finally:
            self._force_collect, self._examples = prev_force, prev_rec

    @property
    def clusters(self) -> dict[str, torch.Tensor]:
        """The cluster assignment per target as set ({name: LongTensor[d_out]}); empty = plain MIGU."""
        return dict(self._clusters)

    def set_clusters(self, clusters: Mapping[str, torch.Tensor]) -> None:
        """Cut these targets per cluster from now on (replacing earlier clusters; ``{}`` clears).

        Args:
            clusters: {target name: [d_out] integer cluster ids in [0, d_out)}; targets left out keep
                the plain top-k cut. Needs ``MIGUConfig.cluster`` (its ``partial`` rule).
        """
        if clusters and self.config.cluster is None:
            raise ValueError("set_clusters needs MIGUConfig(cluster=...): it holds the partial-cluster rule")
        by_name = {t.name: i for i, t in enumerate(self.targets)}
        unknown = sorted(set(clusters) - set(by_name))
        if unknown:
            raise ValueError(
                f"set_clusters: unknown target(s) {unknown[:5]}{' ...' if len(unknown) > 5 else ''}; "
                f"targets are masker.targets names, e.g. {self.targets[0].name!r}"
            )
        checked: dict[str, torch.Tensor] = {}
        for name, ids in clusters.items():
            t = self.targets[by_name[name]]
            if not torch.is_tensor(ids) or ids.dtype.is_floating_point or ids.dtype == torch.bool:
                raise ValueError(f"set_clusters: {name!r} needs an integer tensor of cluster ids")
            if tuple(ids.shape) != (t.d_out,):
                raise ValueError(f"set_clusters: {name!r} needs shape ({t.d_out},), got {tuple(ids.shape)}")
            if int(ids.min()) < 0 or int(ids.max()) >= t.d_out:
                raise ValueError(f"set_clusters: {name!r} cluster ids must be in [0, {t.d_out})")
            checked[name] = ids.detach().to(device=t.weight.device, dtype=torch.long).clone()
        self._clusters = checked
        self._cluster_groups = {}
        for g, (_, idx) in enumerate(self._groups):
            places = [p for p, i in enumerate(idx) if self.targets[i].name in checked]
            if not places:
                continue
            assign = torch.stack([checked[self.targets[idx[p]].name] for p in places])  # [m, d]
            rows = None if len(places) == len(idx) else torch.tensor(places, device=assign.device)
            self._cluster_groups[g] = (places, rows, ClusterLayout.build(assign))
        log.info("MIGU clusters set for %d of %d targets", len(checked), len(self.targets))

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

    def _cut(self) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor | None], set[int]]:
        """Per target: [d_out] bool keep mask, the [t] masked row indices of a fixed-count cut (top-k,
        cluster ``fill``) or None, and the targets whose data-dependent count (quantile, cluster
        ``drop``/``whole``) is applied by multiplying with the mask."""
        assert self._flat is not None and self._count_view is not None
        if _distributed_world() > 1:
            dist.all_reduce(self._flat, op=dist.ReduceOp.SUM)  # ONE collective for all layers
        keeps: dict[int, torch.Tensor] = {}
        drops: dict[int, torch.Tensor | None] = {}
        by_mask: set[int] = set()
        threshold = self.config.threshold
        offset = 0
        for g, ((d, idx), count_index) in enumerate(zip(self._groups, self._count_index, strict=True)):
            n = len(idx)
            sums = self._flat[offset : offset + n * d].view(n, d)  # the group is one block: no stack copy
            offset += n * d
            stats = sums / self._count_view[count_index].clamp_min(1.0).unsqueeze(1)  # [n, d] means
            drop: torch.Tensor | None = None
            clustered = self._cluster_groups.get(g)
            if clustered is None or clustered[1] is not None:  # some targets of the group cut by row
                if self.config.cut == "quantile":
                    keep = quantile_keep(stats, threshold)  # [n, d] bool
                    by_mask.update(idx)
                else:
                    keep, drop = topk_split(stats, threshold)  # [n, d] bool, [n, t]
                for row, i in enumerate(idx):
                    keeps[i] = keep[row]
                    drops[i] = drop[row] if drop is not None else None
            if clustered is not None:
                assert self.config.cluster is not None
                places, rows, layout = clustered
                if layout.assign.device != stats.device:  # built on the weights' device: move once
                    rows = rows.to(stats.device) if rows is not None else None
                    layout = layout.to(stats.device)
                    self._cluster_groups[g] = (places, rows, layout)
                sub = stats if rows is None else stats.index_select(0, rows)  # [m, d]
                keep, drop = cluster_split(sub, layout, threshold, self.config.cluster.partial)
                multiply = drop is None and num_kept(threshold, d) < d  # drop/whole: no fixed masked count
                for row, p in enumerate(places):
                    i = idx[p]
                    keeps[i] = keep[row]
                    drops[i] = drop[row] if drop is not None else None
                    if multiply:
                        by_mask.add(i)
        return keeps, drops, by_mask

    def compute_masks(self) -> dict[str, torch.Tensor]:
        """Masks from the accumulated statistics (after the cross-rank average), without applying."""
        if self._flat is None:
            return {}
        keeps, _, _ = self._cut()
        return {self.targets[i].name: keeps[i] for i in range(len(self.targets))}

    def apply(self) -> dict[str, torch.Tensor]:
        """Turn the cached statistics into row masks and mask the gradients; reset statistics.

        Call once per optimizer step, after ``backward()`` of the last micro-batch and before
        gradient clipping and ``optimizer.step()``. Returns ``masks`` ({name: BoolTensor[d_out]},
        True = row updated), only for targets that had a gradient. With ``sparse_backward`` the
        gradients of the sparse targets are already masked; their mask is the rows that got a
        gradient (the union over micro-batches).
        """
        self.steps += 1
        with_grad = [i for i, t in enumerate(self.targets) if t.weight.grad is not None]
        if self.config.skip_first_task and self.task_index == 0:
            self.masks = {
                t.name: torch.ones(t.d_out, dtype=torch.bool, device=t.weight.device)
                for t in (self.targets[i] for i in with_grad)
            }
            self.reset()
            if self._sparse is not None:
                self._sparse.reset_applied()
            return self.masks
        if with_grad and self._flat is None:
            raise RuntimeError(
                "MIGU apply() found gradients but no statistics: run the forward pass of the attached "
                "model (with gradients enabled) before apply()."
            )
        keeps, drops, by_mask = self._cut() if self._flat is not None else ({}, {}, set())
        self.masks = {}
        grads: list[torch.Tensor] = []
        factors: list[torch.Tensor] = []
        self._strict.clear()
        mask_bias = self.config.mask_bias
        for i in with_grad:
            t = self.targets[i]
            grad = t.weight.grad
            assert grad is not None
            bias_grad = t.bias.grad if mask_bias and t.bias is not None else None
            if i in self._sparse_set:
                assert self._sparse is not None
                applied = self._sparse.applied_mask(i)
                if applied is not None:  # masked in the backward already
                    self.masks[t.name] = applied
                    continue
            keep = keeps[i].to(t.weight.device)
            self.masks[t.name] = keep
            drop = drops[i]
            if drop is not None:
                # Zero the masked rows in place: index_fill_ writes t rows and reads nothing, where a
                # multiply by the 0/1 mask reads and writes all d_out rows.
                drop = drop.to(grad.device)
                grad.index_fill_(t.row_dim, drop, 0)
                if bias_grad is not None:
                    bias_grad.index_fill_(0, drop, 0)
            elif i in by_mask:  # a data-dependent count (quantile, cluster drop/whole): multiply by the mask
                row = keep.to(grad.dtype)
                grads.append(grad)
                factors.append(row.unsqueeze(1) if t.row_dim == 0 else row.unsqueeze(0))  # over d_in
                if bias_grad is not None:
                    grads.append(bias_grad)
                    factors.append(row)
            if self.config.mode == "strict":
                self._strict.save(t, keep, drops[i], mask_bias)
        if grads:
            torch._foreach_mul_(grads, factors)  # in-place, one fused launch for all layers
        self.reset()
        if self._sparse is not None:
            self._sparse.reset_applied()
        self._tokens.clear()
        return self.masks

    # ------------------------------------------------------------------ strict mode
    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The (innermost) optimizer strict mode is bound to, if any."""
        return self._strict.optimizer

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Register the step hook strict mode needs to restore masked rows after the step.

        Wrappers (Accelerate's AcceleratedOptimizer) are unwrapped: the inner optimizer's step fires
        the hooks and its state holds the moments.
        """
        self._strict.bind(optimizer)

    # ------------------------------------------------------------------ teardown
    def detach(self) -> None:
        """Remove every hook; the model is exactly as before attach()."""
        if self._sparse is not None:
            self._sparse.uninstall()  # the original nn.Linear modules go back into their parents
            self._sparse, self._sparse_set = None, frozenset()
        for h in self._handles:
            h.remove()
        self._handles = []
        self._strict.remove()
        self._flat = None
        self._stat_views = []
        self._count_view = None
        self._tokens.clear()

    def __repr__(self) -> str:
        return (
            f"Masker(targets={len(self.targets)}, threshold={self.config.threshold}, mode={self.config.mode})"
        )


def attach(
    model: nn.Module, config: MIGUConfig | None = None, optimizer: torch.optim.Optimizer | None = None
) -> Masker:
    """Attach MIGU to ``model``; returns the :class:`Masker` (``apply()`` at each optimizer step)."""
    return Masker(model, config or MIGUConfig(), optimizer)
