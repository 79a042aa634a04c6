"""BERT/RoBERTa encoders read by plain ``torch.nn`` introspection: their attention heads and FFN
units (for DAS's gates and soft-masks) and their last hidden states (for DAS's contrastive term and
DER++'s masked-LM targets).

Methods sit below the model families (``tests/test_layers.py``), so nothing here imports
``migu.models``: an encoder is any module with ``embeddings`` and ``encoder.layer.<i>`` whose
layers have Hugging Face's BERT layout (``attention.self.{query,key,value}``,
``attention.output.dense``, ``intermediate.dense``, ``output.dense``), which ``BertModel`` and
``RobertaModel`` share. Gates are forward hooks that scale a module's output; nothing in
transformers is patched, and every hook is removed when its ``with`` block ends.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

UNITS = ("head", "intermediate", "output")  # ContinualLM's head_mask, intermediate_mask, output_mask


@dataclass(frozen=True)
class EncoderLayer:
    """One transformer block's units: ``n_heads`` heads of ``head_dim`` (columns h*d..(h+1)*d of the
    self-attention output), ``intermediate.out_features`` FFN units, ``output.out_features`` outputs."""

    attn_self: nn.Module  # output[0]: the heads' context [B, L, n_heads * head_dim]
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attn_out: nn.Linear  # attention.output.dense: [H, n_heads * head_dim]
    intermediate: nn.Linear  # intermediate.dense: [I, H]
    output: nn.Linear  # output.dense: [H, I]
    n_heads: int
    head_dim: int


@dataclass(frozen=True)
class Encoder:
    """A BERT-layout encoder: the backbone (its output's ``last_hidden_state`` is the representation)
    and its layers in order."""

    backbone: nn.Module
    layers: tuple[EncoderLayer, ...]

    def shapes(self) -> dict[str, tuple[int, int]]:
        """Gate shapes per unit kind: head [L, n_heads], intermediate [L, I], output [L, H]."""
        first = self.layers[0]
        n = len(self.layers)
        return {
            "head": (n, first.n_heads),
            "intermediate": (n, first.intermediate.out_features),
            "output": (n, first.output.out_features),
        }

    @property
    def device(self) -> torch.device:
        return self.layers[0].query.weight.device


def _linear(module: nn.Module, path: str) -> nn.Linear:
    obj: Any = module
    for part in path.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, nn.Linear):
        raise ValueError(f"encoder layer {type(module).__name__} has no linear {path!r} (BERT layout)")
    return obj


def find_encoder(model: nn.Module) -> Encoder:
    """The outermost BERT-layout encoder inside ``model`` (a MaskedLM, maybe DDP-wrapped)."""
    for _, module in model.named_modules():
        layers = getattr(getattr(module, "encoder", None), "layer", None)
        if hasattr(module, "embeddings") and isinstance(layers, nn.ModuleList) and len(layers):
            found = []
            for layer in layers:
                attn_self = getattr(getattr(layer, "attention", None), "self", None)
                if attn_self is None:
                    raise ValueError(f"{type(layer).__name__} has no attention.self (BERT layout)")
                query = _linear(layer, "attention.self.query")
                n_heads = int(getattr(attn_self, "num_attention_heads", 0))
                head_dim = int(getattr(attn_self, "attention_head_size", 0))
                if n_heads < 1 or n_heads * head_dim != query.out_features:
                    raise ValueError(
                        f"{type(attn_self).__name__}: num_attention_heads={n_heads} x "
                        f"attention_head_size={head_dim} != query.out_features={query.out_features}"
                    )
                found.append(
                    EncoderLayer(
                        attn_self=attn_self,
                        query=query,
                        key=_linear(layer, "attention.self.key"),
                        value=_linear(layer, "attention.self.value"),
                        attn_out=_linear(layer, "attention.output.dense"),
                        intermediate=_linear(layer, "intermediate.dense"),
                        output=_linear(layer, "output.dense"),
                        n_heads=n_heads,
                        head_dim=head_dim,
                    )
                )
            return Encoder(module, tuple(found))
    raise ValueError(
        f"{type(model).__name__} has no BERT/RoBERTa encoder (a module with embeddings and "
        "encoder.layer.<i>.attention.self.query ...): DAS and the masked-LM DER++ read one"
    )


def _head_hook(gate: torch.Tensor, head_dim: int):
    """Scale head h's context (columns h*d..(h+1)*d) by gate[h]: as HF's old ``head_mask`` on the
    attention probabilities (after their dropout), since the context is linear in them."""

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        ctx = output[0] if isinstance(output, tuple) else output  # [B, L, n_heads * d]
        scale = gate.to(ctx.dtype).repeat_interleave(head_dim)  # [n_heads * d]
        gated = ctx * scale
        return (gated, *output[1:]) if isinstance(output, tuple) else gated

    return hook


def _unit_hook(gate: torch.Tensor):
    """Scale a linear's output units (last dim) by gate: ContinualLM's intermediate/output masks."""

    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return output * gate.to(output.dtype)

    return hook


@contextmanager
def gated(encoder: Encoder, gates: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Forward passes inside the block run with unit gates: ``gates`` maps a unit kind to an
    [L, n] tensor (kinds left out are not gated).

    head: the self-attention's context per head (``attention.self`` output); intermediate: the
    output of ``intermediate.dense`` before the activation; output: the output of ``output.dense``
    before dropout, residual and LayerNorm (ContinualLM, ``networks/transformers/roberta.py``:
    ``MyRobertaIntermediate.forward``, ``MyRobertaOutput.forward``). Gradients reach the gates.
    """
    unknown = set(gates) - set(UNITS)
    if unknown:
        raise ValueError(f"unknown unit kinds {sorted(unknown)}; known: {UNITS}")
    handles = []
    try:
        for i, layer in enumerate(encoder.layers):
            if "head" in gates:
                hook = _head_hook(gates["head"][i], layer.head_dim)
                handles.append(layer.attn_self.register_forward_hook(hook))
            if "intermediate" in gates:
                handles.append(layer.intermediate.register_forward_hook(_unit_hook(gates["intermediate"][i])))
            if "output" in gates:
                handles.append(layer.output.register_forward_hook(_unit_hook(gates["output"][i])))
        yield
    finally:
        for h in handles:
            h.remove()


def last_hidden(output: Any) -> torch.Tensor:
    """The [B, L, H] last hidden state of a backbone's output (a ModelOutput or a tuple)."""
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None:
        hidden = output[0]
    return hidden


@contextmanager
def capture_hidden(encoder: Encoder) -> Iterator[list[torch.Tensor]]:
    """Collect the backbone's last hidden state ([B, L, H], in the graph) of every forward in the block."""
    seen: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        seen.append(last_hidden(output))

    handle = encoder.backbone.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """[B, H] mean over the real positions of [B, L, H] (all positions without a mask)."""
    if attention_mask is None:
        return hidden.mean(1)
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # [B, L, 1]
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
