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

Scale (docs/scale.md): under FSDP2 the gradients are DTensors and ``apply()`` writes each rank's
shard of the global mask; a ``torch.compile`` wrapper is unwrapped (the statistic traces into the
graph); where the optimizer steps inside ``backward()`` (DeepSpeed) ``install_grad_hooks()``
masks in the backward instead.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from . import scale
from .config import MIGUConfig
from .cut import ClusterLayout, cluster_split, num_kept, quantile_keep, topk_split
from .sparse import SparseBackward
from .strict import StrictRestore, inner_optimizer
from .targets import Target, resolve_targets
from .tokens import TokenMasks

log = logging.getLogger(__name__)

# Tokens whose outputs sum to (almost) zero would divide by zero in the L1 normalization.
_EPS = 1e-12
# The statistic reads a layer output in token chunks of at most this many fp32 bytes: |y - b| never
# exists at full size (no [N, d_out] fp32 copy of the output, also under bf16). On CPU the chunk
# lives in one persistent scratch buffer (a fresh multi-MB allocation costs page faults); budgets
# from 128 KB to 16 MB gave the same step time on MiniLM (bench/bench_step.py).
_CHUNK_BYTES_CPU = 4 << 20
_CHUNK_BYTES_DEVICE = 64 << 20


_SPARSE_COMPILE = (
    "MIGUConfig(sparse_backward=True) does not run under torch.compile: its autograd function reads "
    "the step's statistic from Python in the backward, one graph break per layer. Use the dense path "
    "(sparse_backward=False), which compiles with no graph break, or do not compile."
)


_Owner = tuple[nn.Module, str] | None  # (module, attribute name) registering a parameter


def _owner(root: nn.Module, param: torch.Tensor | None) -> _Owner:
    """(module, attribute name) under ``root`` that registers ``param``, or None."""
    if param is None:
        return None
    for module in root.modules():
        for name, p in module.named_parameters(recurse=False):
            if p is param:
                return module, name
    return None


def _distributed_world() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class Masker:
    """Hooks a model's target weights; see the module docstring. Build it with :func:`attach`."""

    def __init__(self, model: nn.Module, config: MIGUConfig, optimizer: torch.optim.Optimizer | None = None):
        # torch.compile(model) first: hook the original module; the compiled graph runs its hooks.
        model, compiled = scale.unwrap_compiled(model)
        if compiled and config.sparse_backward:
            raise ValueError(_SPARSE_COMPILE)
        scale.refuse_unsupported_wrappers(model)
        self.model = model
        self.config = config
        self.targets: list[Target] = resolve_targets(model, config.targets, config.components)
        for t in self.targets:
            rows = scale.zero3_rows(t.weight, t.row_dim)
            if rows is not None:
                t.d_out = rows  # DeepSpeed ZeRO-3: the local weight is an empty partition
        # Per target: (module, attribute) owning its weight, bias and statistic bias. FSDP2 swaps
        # the registered parameters (unsharded in forward, sharded DTensors between steps, new
        # objects if fully_shard came after attach): the statistic and apply() read them live.
        self._owners: list[tuple[_Owner, _Owner, _Owner]] = [
            (_owner(m, t.weight), _owner(m, t.bias), _owner(m, t.stat_bias))
            for t in self.targets
            for m in (t.hook_module,)
        ]
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
        # Python flags the statistic hook only ever SETS (a store, never a read in the hook):
        # torch.compile replays such stores without guarding on them, so they cost no recompile.
        self._seen = False  # a statistic was collected since attach (apply() needs one)
        self._fresh = False  # the statistic changed since the grad hooks last made masks
        self._compiled_forward = False  # a hook ran inside a torch.compile graph
        self._warned_no_grad = False
        # Backward-time masking (install_grad_hooks): handles, and the cut of the current step.
        self._grad_handles: list[Any] = []
        self._hook_cut: tuple[dict[int, torch.Tensor], dict[int, torch.Tensor | None], set[int]] | None = None
        self._hook_fired: set[int] = set()
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
        # The flat buffer exists from the start: allocated inside a compiled graph instead, the
        # first trace would guard on "no buffer yet" and the second step would recompile.
        self._ensure_buffer(self.targets[0].weight.device)
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
        if self._flat is not None and self._flat.device.type != "meta":  # meta: attached before to_empty()
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
            if torch.compiler.is_compiling():
                self._compiled_forward = True  # traced: a constant store, replayed by the graph's caller
            y = output[0] if isinstance(output, tuple) else output
            if self._examples is not None:  # per_example(): profiles only, the training statistic untouched
                self._examples.setdefault(target.name, []).append(
                    self._example_stats(i, target, y.detach(), cfg)
                )
                return
            self._accumulate(i, target, y.detach(), cfg)

        return hook

    def _chunk_buffer(self, numel: int, device: torch.device) -> torch.Tensor:
        if device.type != "cpu" or torch.compiler.is_compiling():
            # Device: the caching allocator reuses it. Compiled: the compiler plans the buffer, and a
            # persistent scratch would put a guard on its state (a recompile on the second step).
            return torch.empty(numel, dtype=torch.float32, device=device)
        if self._scratch is None or self._scratch.numel() < numel:
            self._scratch = torch.empty(numel, dtype=torch.float32)
        return self._scratch

    @torch.no_grad()
    def _accumulate(self, i: int, target: Target, y: torch.Tensor, cfg: MIGUConfig) -> None:
        d = y.shape[-1]
        if d != target.d_out:
            raise RuntimeError(
                f"MIGU target {target.name}: the layer output has {d} features but the weight has "
                f"{target.d_out} rows (tensor parallelism shards layer outputs: MIGU supports data "
                "parallelism only: DDP, FSDP2, DeepSpeed ZeRO)"
            )
        self._seen = self._fresh = True
        y2 = y.reshape(-1, d)  # [N, d_out], a view for contiguous outputs
        n = y2.shape[0]
        tok, count = self._tokens.weights(target.stream, y.shape[:-1], y.device, n)  # [N] 1 = real token
        bias = self._stat_bias(i, target) if not cfg.stat_bias else None
        fused_sub = bias is not None and y.dtype == torch.float32 and bias.dtype == torch.float32
        if bias is not None and not fused_sub:
            bias = bias.float()  # bf16 outputs: subtract in fp32, as the fp32 reference does
        home = target.weight.device
        # Attached on meta, then to_empty(): the new parameters are adopted at apply(); until then
        # the buffer follows the output.
        self._ensure_buffer(y.device if home.type == "meta" else home)
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
    def _example_stats(self, i: int, target: Target, y: torch.Tensor, cfg: MIGUConfig) -> torch.Tensor:
        """[B, d_out] fp32: each example's statistic (the same magnitude, normalization and real-token
        mean as the training statistic, over that example's tokens only)."""
        d = y.shape[-1]
        b, tok = self._tokens.example_weights(target.stream, y.shape[:-1], y.device)  # B, [B, L] or None
        a = y.reshape(b, -1, d).float()  # [B, L, d_out]
        bias = self._stat_bias(i, target) if not cfg.stat_bias else None
        if bias is not None:
            a = a - bias.float()
        a = a.abs()
        if cfg.normalize:
            a = a / a.sum(-1, keepdim=True).clamp_min(_EPS)
        if tok is None:
            return a.mean(1)
        return torch.einsum("bld,bl->bd", a, tok) / tok.sum(1, keepdim=True).clamp_min(1.0)

    def _stat_bias(self, i: int, target: Target) -> torch.Tensor | None:
        """The bias the statistic leaves out, as registered now (FSDP2: the unsharded one)."""
        owner = self._owners[i][2]
        bias = getattr(*owner) if owner is not None else target.stat_bias
        if bias is None:
            return None
        if scale.is_dtensor(bias):
            # Resharded before this hook ran (fully_shard on the linear itself): gather it. Every rank
            # runs the same forwards under FSDP, so the collective lines up.
            bias = bias.full_tensor()
        return bias.detach()

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
        self._fresh = False
        self._hook_cut = None
        self._hook_fired = set()

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
        gradient clipping and ``optimizer.step()`` (with a ``GradScaler``: after
        ``scaler.unscale_(optimizer)``, see docs/scale.md). Returns ``masks`` ({name:
        BoolTensor[d_out]}, True = row updated), only for targets that had a gradient. With
        ``sparse_backward`` the gradients of the sparse targets are already masked; their mask is
        the rows that got a gradient (the union over micro-batches). After
        :meth:`install_grad_hooks` the backward has masked every gradient: ``apply()`` only closes
        the step (returns the masks of the last backward, resets the statistics).

        FSDP2: a gradient that is a DTensor (``Shard(0)``) gets the rows of the global mask that its
        local shard holds; the statistics are reduced first, as in DDP.
        """
        self.steps += 1
        self._refresh_params()
        if self._compiled_forward and self._sparse is not None:
            raise RuntimeError(_SPARSE_COMPILE)
        if self._grad_handles:
            return self._close_hooked_step()
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
        if with_grad and not self._seen:
            raise RuntimeError(
                "MIGU apply() found gradients but no statistics: run the forward pass of the attached "
                "model (with gradients enabled) before apply(). Under torch.compile: a graph compiled "
                "before attach (this model, or another instance of its class, already ran compiled) "
                "does not call the new hooks, as torch._dynamo.config.skip_nnmodule_hook_guards is on "
                "by default: attach before the first compiled call, or call torch._dynamo.reset()."
            )
        if self._seen and not with_grad and not self._warned_no_grad:
            self._warned_no_grad = True
            log.warning(
                "MIGU apply() found statistics but no gradient on any target: nothing was masked. If "
                "the optimizer step runs inside backward() (DeepSpeed, also through Accelerate), call "
                "masker.install_grad_hooks() once so that the backward masks the gradients."
            )
        keeps, drops, by_mask = self._cut() if self._seen else ({}, {}, set())
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
            if scale.is_dtensor(grad) or scale.is_dtensor(bias_grad):
                self._mask_shards(t, keep, grad, bias_grad)
            elif drop is not None:
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

    def _mask_shards(
        self, t: Target, keep: torch.Tensor, grad: torch.Tensor, bias_grad: torch.Tensor | None
    ) -> None:
        """FSDP2: zero this rank's rows of the global mask in the local gradient shards, in place.

        The slice ``keep[start:stop]`` needs no host sync (the local masked count varies per rank,
        which index_fill_ with global indices would need).
        """
        for g, dim in ((grad, t.row_dim), (bias_grad, 0)):
            if g is None:
                continue
            shard = scale.row_shard(g, dim, f"{t.name} ({'bias' if g is bias_grad else 'weight'} gradient)")
            drop = ~keep[shard.start : shard.stop]  # [local rows] True = masked
            if shard.local.dim() > 1:
                drop = drop.unsqueeze(1) if dim == 0 else drop.unsqueeze(0)  # broadcast over d_in
            shard.local.masked_fill_(drop, 0)

    def _refresh_params(self) -> None:
        """Follow parameters that were replaced after attach (fully_shard swaps in DTensors)."""
        for t, (w_owner, b_owner, _) in zip(self.targets, self._owners, strict=True):
            if w_owner is not None:
                w = getattr(*w_owner)
                if w is not t.weight and isinstance(w, nn.Parameter):
                    t.weight = w
            if b_owner is not None:
                b = getattr(*b_owner)
                if b is not t.bias and isinstance(b, nn.Parameter):
                    t.bias = b

    # ------------------------------------------------------------------ backward-time masking
    def install_grad_hooks(self) -> None:
        """Opt-in: mask each target's gradient inside ``backward()``, before anything reads it.

        For loops with no window between backward and the optimizer step: DeepSpeed steps inside
        ``engine.backward()`` (also through ``accelerator.backward()``) and reduces gradients from
        its own hooks. A tensor hook on each target weight (and masked bias) returns the masked
        gradient before it is accumulated, so DeepSpeed's reduction, DDP's all-reduce and any fp32
        master copy only ever see masked rows. Still call :meth:`apply` once per optimizer step
        (after the last micro-batch's backward, before or after the step): it closes the step.

        Semantics: the masks of a backward come from the statistic accumulated since the last
        ``apply()`` up to and including the latest forward, reduced across ranks (one all_reduce
        per backward, made by the first hook that fires). With one micro-batch per step this is
        exactly ``apply()``. With gradient accumulation, micro-batch m's gradient gets the mask of
        micro-batches 1..m; the last one gets the step's mask (the one ``apply()`` would make),
        earlier ones may keep rows that the step's mask drops.

        Refused: strict mode (it needs the window before the step) and FSDP2 (its sharded
        gradients appear after the backward: use ``apply()``). Sparse-backward targets are
        masked by their own backward and get no hook.
        """
        if self._grad_handles:
            return
        if self.config.mode == "strict":
            raise ValueError(
                "Masker.install_grad_hooks() does not support MIGUConfig.mode='strict': strict mode "
                "saves masked rows between backward and the optimizer step, which backward-time "
                "masking (DeepSpeed) does not have. Use mode='grad'."
            )
        self._refresh_params()
        if any(scale.is_dtensor(t.weight) for t in self.targets):
            raise ValueError(
                "Masker.install_grad_hooks() is not for FSDP2 (DTensor parameters): its gradients are "
                "reduced and sharded after the backward, where apply() masks them. Call apply()."
            )
        for i, t in enumerate(self.targets):
            if i in self._sparse_set:
                continue
            params = [(t.weight, t.row_dim)]
            if self.config.mask_bias and t.bias is not None:
                params.append((t.bias, 0))
            for p, dim in params:
                if p.requires_grad:
                    self._grad_handles.append(p.register_hook(self._make_grad_hook(i, dim)))
        log.info("MIGU masks in the backward: %d gradient hooks", len(self._grad_handles))

    def remove_grad_hooks(self) -> None:
        """Back to masking in :meth:`apply`."""
        for h in self._grad_handles:
            h.remove()
        self._grad_handles = []
        self._hook_cut = None
        self._hook_fired = set()

    def _make_grad_hook(self, i: int, dim: int):
        cfg = self.config

        def hook(grad: torch.Tensor) -> torch.Tensor | None:
            if cfg.skip_first_task and self.task_index == 0:
                return None
            keeps, drops, by_mask = self._backward_cut()
            self._hook_fired.add(i)
            drop = drops[i]
            # Out of place: a tensor hook must not modify its argument (autograd may still use it).
            if drop is not None:
                return grad.index_fill(dim, drop.to(grad.device), 0)
            if i not in by_mask:
                return None  # a fixed-count cut with no masked row (T = 0)
            row = keeps[i].to(device=grad.device, dtype=grad.dtype)
            if grad.dim() > 1:
                row = row.unsqueeze(1) if dim == 0 else row.unsqueeze(0)  # broadcast over d_in
            return grad * row

        return hook

    def _backward_cut(self) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor | None], set[int]]:
        """The cut for the running backward: made once per new statistic, all targets together."""
        if self._hook_cut is not None and not self._fresh:
            return self._hook_cut
        if not self._seen:
            raise RuntimeError(
                "MIGU gradient hook: a backward ran with no statistic; run the forward pass of the "
                "attached model (with gradients enabled) before backward()."
            )
        assert self._flat is not None
        # _cut() sums the statistics across ranks in place; later micro-batches of this step add
        # their local sums, so the local sums come back afterwards (one copy of the flat buffer).
        local = self._flat.clone() if _distributed_world() > 1 else None
        self._hook_cut = self._cut()
        if local is not None:
            self._flat.copy_(local)
        self._fresh = False
        return self._hook_cut

    def _close_hooked_step(self) -> dict[str, torch.Tensor]:
        """apply() after install_grad_hooks(): the masks the backward used; statistics reset."""
        if self.config.skip_first_task and self.task_index == 0:
            self.masks = {
                t.name: torch.ones(t.d_out, dtype=torch.bool, device=t.weight.device)
                for t in self.targets
                if t.weight.requires_grad
            }
        else:
            self.masks = {}
            if self._hook_cut is not None:
                keeps = self._hook_cut[0]
                for i in sorted(self._hook_fired):
                    t = self.targets[i]
                    self.masks[t.name] = keeps[i].to(t.weight.device)
        if self._sparse is not None:
            for i in self._sparse_set:
                applied = self._sparse.applied_mask(i)
                if applied is not None:
                    self.masks[self.targets[i].name] = applied
            self._sparse.reset_applied()
        self.reset()
        self._tokens.clear()
        return self.masks

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """ValueError unless ``optimizer`` updates the target weights whose gradients MIGU masks.

        Catches the mixed-precision hazard where the optimizer steps fp32 master copies: masking
        the model's (bf16) gradients after they were copied to the masters, or masking tensors the
        optimizer never reads, leaves the masked rows free to move.
        """
        inner = inner_optimizer(optimizer)
        held = {id(p) for group in inner.param_groups for p in group["params"]}
        self._refresh_params()
        missing = [t.name for t in self.targets if t.weight.requires_grad and id(t.weight) not in held]
        if missing:
            raise ValueError(
                f"the optimizer does not update {len(missing)} of the {len(self.targets)} MIGU target "
                f"weights (e.g. {missing[0]}): MIGU masks model.param.grad, so an optimizer over other "
                "tensors (fp32 master copies) never sees the masks. Mask before the gradients are "
                "copied to the masters and give the copies' optimizer the masked gradients, or build "
                "the optimizer over the model's parameters (autocast keeps them fp32)."
            )

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
        self.remove_grad_hooks()
        self._strict.remove()
        self._flat = None
        self._seen = False
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
