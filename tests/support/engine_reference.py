"""Slow, obviously-correct references for the engine tests (float64, explicit loops).

Nothing here imports migu: the references are written from the specification (method.md), so a
test comparing the engine against them fails when the engine drifts from the specification.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from fractions import Fraction

import torch
from torch import nn


@contextlib.contextmanager
def capture_inputs(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record the first positional input of each named module at every forward call."""
    modules = dict(model.named_modules())
    store: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = []
    for n in names:

        def hook(module: nn.Module, args: tuple, name: str = n) -> None:
            store[name].append(args[0].detach().clone())

        handles.append(modules[n].register_forward_pre_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def rows_of(weight: torch.Tensor, row_dim: int = 0) -> torch.Tensor:
    """[d_out, d_in] float64 rows: nn.Linear stores [d_out, d_in], GPT-2 Conv1D [d_in, d_out]."""
    w = weight.detach().double()
    return w if row_dim == 0 else w.t()


def token_outputs(rows: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
    """Per token: the vector (w_i . x) over i, one explicit dot product per row, float64."""
    flat = x.detach().double().reshape(-1, x.shape[-1])
    out = []
    for t in range(flat.shape[0]):
        out.append(torch.stack([torch.dot(rows[i], flat[t]) for i in range(rows.shape[0])]))
    return out


def ref_stat(
    rows: torch.Tensor,
    xs: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor | None] | None = None,
    normalize: bool = True,
    bias: torch.Tensor | None = None,
    extra: Sequence[list[torch.Tensor]] | None = None,
) -> torch.Tensor:
    """The mean over real tokens of (L1-normalized) |w_i . x (+ b_i)|, float64 [d_out].

    Args:
        rows: [d_out, d_in] weight rows.
        xs: the layer inputs of every forward call (any leading shape).
        masks: per call, the 1/0 real-token mask over the leading shape (None = all real).
        normalize: divide each token's magnitudes by their sum.
        bias: added to w_i . x before the absolute value (None = left out).
        extra: per call, per token, a vector added to the output before |.| (LoRA's s B A x).
    """
    total = torch.zeros(rows.shape[0], dtype=torch.float64)
    count = 0
    for call, x in enumerate(xs):
        m = masks[call] if masks is not None else None
        flat_mask = m.reshape(-1).tolist() if m is not None else None
        outs = token_outputs(rows, x)
        for t, y in enumerate(outs):
            if flat_mask is not None and not flat_mask[t]:
                continue
            if extra is not None:
                y = y + extra[call][t]
            if bias is not None:
                y = y + bias.detach().double()
            a = y.abs()
            if normalize:
                a = a / a.sum()
            total += a
            count += 1
    assert count > 0, "reference over zero tokens"
    return total / count


def expected_masked(threshold: float, d_out: int) -> int:
    """floor(T * d_out) with T read as the decimal the user wrote (0.29 * 100 = 29, exactly)."""
    return math.floor(Fraction(str(threshold)) * d_out)


def ref_keep(stat: torch.Tensor, threshold: float) -> torch.Tensor:
    """Top d_out - floor(T d_out) rows by value, ties to the lower index (plain Python sort)."""
    vals = [float(v) for v in stat]
    d = len(vals)
    k = d - expected_masked(threshold, d)
    order = sorted(range(d), key=lambda i: (-vals[i], i))
    keep = torch.zeros(d, dtype=torch.bool)
    keep[order[:k]] = True
    return keep


def ref_quantile(stat: torch.Tensor, q: float) -> float:
    """Linear-interpolation quantile (numpy/torch default), by hand."""
    s = sorted(float(v) for v in stat)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def assert_keep_matches(keep: torch.Tensor, ref: torch.Tensor, threshold: float, rtol: float = 1e-5) -> None:
    """``keep`` is ref_keep(ref, T), up to swaps between rows whose reference values are equal
    within ``rtol`` (float32 engine vs float64 reference). The kept count must be exact."""
    expected = ref_keep(ref, threshold)
    keep = keep.detach().cpu()
    assert keep.dtype == torch.bool
    assert int(keep.sum()) == int(expected.sum()), (int(keep.sum()), int(expected.sum()))
    diff = (keep != expected).nonzero().flatten().tolist()
    if diff:
        cut = float(ref[expected].min())
        for i in diff:
            assert abs(float(ref[i]) - cut) <= rtol * abs(cut), f"row {i}: {float(ref[i])} vs cut {cut}"


def ref_cluster_keep(
    stat: torch.Tensor, assign: torch.Tensor, threshold: float, partial: str
) -> torch.Tensor:
    """MIGU+Cluster by hand: clusters by mean statistic (descending, ties to the lower cluster id)
    are kept whole while they fit in k = d - floor(T d) rows; the cluster that does not fit is
    masked (``drop``), kept whole (``whole``, and nothing after it), or gives its best rows by
    statistic (ties to the lower row) until exactly k rows are kept (``fill``)."""
    vals = [float(v) for v in stat]
    ids = [int(c) for c in assign]
    d = len(vals)
    k = d - expected_masked(threshold, d)
    members: dict[int, list[int]] = {}
    for row, c in enumerate(ids):
        members.setdefault(c, []).append(row)
    score = {c: sum(vals[r] for r in rows) / len(rows) for c, rows in members.items()}
    kept: list[int] = []
    for c in sorted(members, key=lambda c: (-score[c], c)):
        rows = members[c]
        if len(kept) + len(rows) <= k:
            kept += rows
            continue
        if partial == "whole" and len(kept) < k:
            kept += rows
        elif partial == "fill":
            kept += sorted(rows, key=lambda r: (-vals[r], r))[: k - len(kept)]
        break
    keep = torch.zeros(d, dtype=torch.bool)
    keep[kept] = True
    return keep


def ref_example_stats(
    rows: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """[B, d_out] float64: each example's statistic (``ref_stat`` over that example's tokens alone),
    for one forward call's input ``x`` [B, S, d_in] and real-token mask [B, S]."""
    return torch.stack(
        [
            ref_stat(rows, [x[b : b + 1]], [mask[b : b + 1]] if mask is not None else None, bias=bias)
            for b in range(x.shape[0])
        ]
    )


class ToyBlock(nn.Module):
    def __init__(self, d: int, f: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.o_proj = nn.Linear(d, d)
        self.up_proj = nn.Linear(d, f)
        self.down_proj = nn.Linear(f, d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = torch.tanh(self.q_proj(h)) * self.k_proj(h) + self.v_proj(h)
        h = h + self.o_proj(a)
        return h + self.down_proj(torch.relu(self.up_proj(h)))


class ToyLM(nn.Module):
    """A pure-PyTorch token model with Llama-like module names (layers.N.q_proj ...)."""

    def __init__(self, vocab: int = 32, d: int = 8, f: int = 12, n_layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(ToyBlock(d, f) for _ in range(n_layers))
        self.lm_head = nn.Linear(d, vocab)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        h = self.embed(input_ids)
        for layer in self.layers:
            h = layer(h)
        logits = self.lm_head(h)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(
                logits.flatten(0, 1), labels.flatten(), ignore_index=-100
            )
        return out


@torch.no_grad()
def randomize_biases(model: nn.Module, std: float = 0.1, seed: int = 123) -> nn.Module:
    """HF initializes biases to 0; give them values so that leaving them out is visible."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("bias") and p.dim() == 1:
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * std)
    return model
