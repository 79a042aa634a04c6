"""Which weights MIGU watches: resolve module names of HF/PyTorch/PEFT models into targets.

A target is one weight matrix whose output rows get a magnitude statistic and a mask. Plain
linears (``nn.Linear`` and GPT-2's transposed ``Conv1D``) are one target each; a PEFT LoRA layer
gives two per trainable adapter: ``lora_A`` (statistic |A x|, length r) and ``lora_B``
(statistic |W0 x + s B A x|, the whole layer output, length d_out), W0 staying frozen.
"""

from __future__ import annotations

import fnmatch
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .tokens import Stream, StreamResolver


def _loaded_class(module: str, name: str) -> type | None:
    """A class of a library module if that module is loaded, else None. Why not import it: an
    instance of the class cannot exist before its module is imported, so a model without PEFT
    layers never pays for importing peft (seconds) just to learn it has none."""
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    return cls if isinstance(cls, type) else None


def _hf_conv1d() -> type | None:
    """transformers' GPT-2 style linear (weight [d_in, d_out])."""
    return _loaded_class("transformers.pytorch_utils", "Conv1D")


def _lora_layer() -> type | None:
    """peft's LoRA layer wrapper."""
    return _loaded_class("peft.tuners.lora", "LoraLayer")


# A module inside a numbered transformer block ("encoder.layer.3.", "layers.0.", "h.11.", "block.2.").
_IN_BLOCK = re.compile(r"(?:^|\.)\d+\.")
# Components by module-name suffix, across T5, BERT/RoBERTa/MiniLM, Llama/Mistral/Qwen, GPT-2,
# GPT-NeoX, OPT/BART and DistilBERT naming.
_COMPONENT_RES: dict[str, re.Pattern[str]] = {
    "qkv": re.compile(
        r"(?:^|\.)(?:q|k|v|query|key|value|q_proj|k_proj|v_proj|c_attn|query_key_value|qkv_proj|Wqkv"
        r"|q_lin|k_lin|v_lin)$"
    ),
    "o": re.compile(
        r"(?:^|\.)(?:o|o_proj|out_proj|out_lin|attention\.output\.dense|attn\.c_proj|attention\.dense)$"
    ),
    "ffn": re.compile(
        r"(?:^|\.)(?:wi|wo|wi_0|wi_1|gate_proj|up_proj|down_proj|fc1|fc2|c_fc|mlp\.c_proj|intermediate\.dense"
        r"|(?<!attention\.)output\.dense|dense_h_to_4h|dense_4h_to_h|lin1|lin2)$"
    ),
}


@dataclass
class Target:
    """One masked weight.

    ``hook_module`` is the module whose forward output is the statistic's source; ``stat_bias``
    is subtracted from that output when the magnitude must leave the bias out.
    """

    name: str
    weight: nn.Parameter
    bias: nn.Parameter | None
    stat_bias: torch.Tensor | None
    row_dim: int  # dim of `weight` that indexes output rows: 0 for nn.Linear, 1 for Conv1D
    d_out: int
    stream: Stream  # "main" (encoder / decoder-only tokens) or "decoder" (seq2seq decoder + LM head)
    hook_module: nn.Module
    adapter: str | None = (
        None  # the PEFT adapter of a lora_A / lora_B target (hook_module: its LoRA layer for B)
    )


def component_of(name: str) -> str | None:
    """The block component ('qkv', 'o', 'ffn') a module name belongs to, or None."""
    if not _IN_BLOCK.search(name):
        return None
    for comp, pattern in _COMPONENT_RES.items():
        if pattern.search(name):
            return comp
    return None


def _is_plain_linear(module: nn.Module) -> bool:
    conv1d = _hf_conv1d()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


def is_lora_layer(module: nn.Module) -> bool:
    """A PEFT LoRA layer (the wrapper holding base_layer, lora_A and lora_B)."""
    layer = _lora_layer()
    return layer is not None and isinstance(module, layer) and hasattr(module, "lora_A")


def _pattern_match(name: str, patterns: Iterable[str]) -> bool:
    for p in patterns:
        if name == p or name.endswith("." + p):
            return True
        if any(ch in p for ch in "*?[") and fnmatch.fnmatchcase(name, p):
            return True
    return False


def _plain_target(name: str, module: nn.Module, stream: Stream) -> Target:
    conv1d_cls = _hf_conv1d()
    conv1d = conv1d_cls is not None and isinstance(module, conv1d_cls)
    row_dim = 1 if conv1d else 0
    bias = module.bias if isinstance(getattr(module, "bias", None), nn.Parameter) else None
    return Target(
        name=name,
        weight=module.weight,
        bias=bias,
        stat_bias=bias,
        row_dim=row_dim,
        d_out=module.weight.shape[row_dim],
        stream=stream,
        hook_module=module,
    )


def _lora_targets(name: str, module: nn.Module, stream: Stream) -> list[Target]:
    """Targets of one PEFT LoRA layer: lora_A/lora_B of every adapter with Linear factors."""
    out: list[Target] = []
    base = module.get_base_layer()
    base_bias = base.bias if isinstance(getattr(base, "bias", None), nn.Parameter) else None
    for adapter, lora_a in module.lora_A.items():
        lora_b = module.lora_B[adapter]
        if not (isinstance(lora_a, nn.Linear) and isinstance(lora_b, nn.Linear)):
            continue  # embedding / conv LoRA variants are not transformer linears
        a_bias = lora_a.bias if isinstance(lora_a.bias, nn.Parameter) else None
        a_name = f"{name}.lora_A.{adapter}"
        out.append(
            Target(a_name, lora_a.weight, a_bias, a_bias, 0, lora_a.out_features, stream, lora_a, adapter)
        )
        b_bias = lora_b.bias if isinstance(lora_b.bias, nn.Parameter) else None
        # B is judged by the whole layer output h = W0 x + b0 + s B A x (+ b_B); the paper's
        # magnitude leaves the bias out, so b0 is what gets subtracted.
        b_name = f"{name}.lora_B.{adapter}"
        out.append(
            Target(b_name, lora_b.weight, b_bias, base_bias, 0, lora_b.out_features, stream, module, adapter)
        )
    return out


def resolve_targets(
    model: nn.Module,
    targets: str | tuple[str, ...],
    components: tuple[str, ...] = ("qkv", "o", "ffn"),
) -> list[Target]:
    """Find the weights MIGU masks; a clear ValueError when nothing matches."""
    stream_for = StreamResolver(model)
    lora_children: set[str] = set()
    found: list[Target] = []
    linear_names: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in lora_children):
            continue  # base_layer / lora_A / lora_B are handled by their LoRA wrapper
        is_lora = is_lora_layer(module)
        if is_lora:
            lora_children.add(name + ".")
        elif not _is_plain_linear(module):
            continue
        linear_names.append(name)
        if targets == "all-linear":
            selected = True
        elif targets == "default":
            selected = component_of(name) in components
        else:
            selected = _pattern_match(name, targets)
        if not selected:
            continue
        stream = stream_for(name, module)
        if is_lora:
            found.extend(_lora_targets(name, module, stream))
            base = module.get_base_layer()
            if _is_plain_linear(base) and base.weight.requires_grad:
                found.append(_plain_target(name + ".base_layer", base, stream))
        else:
            found.append(_plain_target(name, module, stream))
    if not found:
        sample = ", ".join(linear_names[:8]) or "none"
        raise ValueError(
            f"MIGU found no target layers for targets={targets!r} components={components!r} in "
            f"{type(model).__name__}. Linear modules present ({len(linear_names)}): {sample}"
            f"{' ...' if len(linear_names) > 8 else ''}. "
            "Pass targets='all-linear' or a list of name patterns."
        )
    return found
