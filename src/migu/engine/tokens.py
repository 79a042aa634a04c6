"""Which tokens are real: padding masks captured per forward call, and which stream each target reads.

The statistic averages over real tokens only (``exclude_padding``). Two token streams exist:

- ``main``: the encoder's tokens (encoder-decoder models) or the only tokens (encoders, decoder-only
  LMs); real where ``attention_mask`` is 1.
- ``decoder``: the decoder's tokens of an encoder-decoder model; real where
  ``decoder_attention_mask`` is 1, else where ``labels != -100``.

A target reads the stream that actually flows through it: in an encoder-decoder model everything
outside the encoder reads the decoder stream (decoder blocks and the LM head), except the
cross-attention K/V projections, which read the encoder's outputs.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any, Literal

import torch
from torch import nn

Stream = Literal["main", "decoder"]

# Cross-attention K/V read the encoder's tokens, so their padding mask is the encoder's.
_CROSS_KV = re.compile(
    r"(?:EncDecAttention|crossattention|encoder_attn|cross_attn)\.(?:k|v|key|value|k_proj|v_proj)$"
)


def _model_config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is None:  # DDP / DataParallel keep the model in .module
        config = getattr(getattr(model, "module", None), "config", None)
    return config


def is_encoder_decoder(model: nn.Module) -> bool:
    """True for T5/BART-style models (their config says so), also behind PEFT/DDP wrappers."""
    return bool(getattr(_model_config(model), "is_encoder_decoder", False))


class StreamResolver:
    """Assigns each module of a model the token stream its outputs are indexed by."""

    def __init__(self, model: nn.Module) -> None:
        self.enc_dec = is_encoder_decoder(model)
        self._encoder: set[int] | None = None
        if self.enc_dec:
            get_encoder = getattr(model, "get_encoder", None)
            encoder = get_encoder() if callable(get_encoder) else None
            if isinstance(encoder, nn.Module):
                self._encoder = {id(m) for m in encoder.modules()}

    def __call__(self, name: str, module: nn.Module) -> Stream:
        if not self.enc_dec or _CROSS_KV.search(name):
            return "main"
        if self._encoder is not None:
            return "main" if id(module) in self._encoder else "decoder"
        # No get_encoder(): fall back to the module path (a component named "encoder" is the encoder).
        return "main" if "encoder" in name.split(".") else "decoder"


def _forward_parameter_names(model: nn.Module) -> list[str] | None:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    return [
        n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and n != "self"
    ]


class TokenMasks:
    """Captures the real-token masks of each forward call (a forward pre-hook on the root model)
    and hands each layer its [N] token weights, computed once per (stream, shape) and forward."""

    def __init__(self, model: nn.Module, exclude_padding: bool) -> None:
        self.exclude_padding = exclude_padding
        self._forward_params = _forward_parameter_names(model)
        self.masks: dict[str, torch.Tensor | None] = {}
        self._owner: dict[str, torch.Tensor | None] | None = None
        self._cache: dict[tuple, tuple[torch.Tensor | None, torch.Tensor]] = {}

    def capture(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook (``with_kwargs=True``): remember which tokens are real for this call."""
        call = dict(kwargs)
        if args and self._forward_params:
            call.update(zip(self._forward_params, args, strict=False))
        main = call.get("attention_mask")
        main = main if torch.is_tensor(main) else None
        dec = call.get("decoder_attention_mask")
        dec = dec if torch.is_tensor(dec) else None
        enc_dec = is_encoder_decoder(module)
        labels = call.get("labels")
        if dec is None and enc_dec and torch.is_tensor(labels) and labels.dim() == 2:
            # Seq2seq without an explicit decoder mask: decoder position t is real iff labels[t] is, also
            # next to decoder_input_ids (labels shifted right, as DataCollatorForSeq2Seq makes them).
            dec = labels != -100
        # A decoder-only model naming its blocks "decoder" (OPT) reads the main tokens; the decoder
        # of an encoder-decoder never borrows the encoder's mask (equal lengths would make it fit).
        self.masks = {"main": main, "decoder": dec if dec is not None or enc_dec else main}

    def clear(self) -> None:
        self.masks = {}

    def _weights(self, stream: str, lead_shape: torch.Size, device: torch.device) -> torch.Tensor | None:
        """[N] float weights (1 real, 0 padding) over flattened leading dims, or None for all-real."""
        m = self.masks.get(stream) if self.exclude_padding else None
        if m is None:
            return None
        # [B, S] tokens, or the same tokens flattened to [B*S] (OPT's FFN reshapes before fc1/fc2).
        flat = len(lead_shape) == 1 and m.dim() == 2 and m.numel() == lead_shape[0]
        if flat or tuple(m.shape) == tuple(lead_shape):
            return m.reshape(-1).to(device=device, dtype=torch.float32)
        return None  # no token axis (e.g. a pooler on [B, H]): every row counts

    def example_weights(
        self, stream: str, lead_shape: torch.Size, device: torch.device
    ) -> tuple[int, torch.Tensor | None]:
        """(B examples, [B, L] fp32 real-token weights or None = all real) of an output whose leading
        dims ``lead_shape`` hold N = B * L tokens, grouped by example (co-magnitude profiles).

        [B, S, ...] outputs: B = the first dim. Flattened [B*S] tokens (OPT's FFN): B from the
        captured mask. No token axis ([B] rows, e.g. a pooler): every row is one example.
        """
        n = math.prod(lead_shape)
        m = self.masks.get(stream)
        if len(lead_shape) >= 2:
            b = lead_shape[0]
        elif m is not None and m.dim() == 2 and m.numel() == n:
            b = m.shape[0]
        else:
            b = n
        w = self._weights(stream, lead_shape, device)  # [N] or None
        return b, (w.view(b, -1) if w is not None else None)

    def weights(
        self, stream: str, lead_shape: torch.Size, device: torch.device, n: int
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """([N] fp32 token weights or None = all real, real-token count), cached per forward call.

        Every layer of a stream sees the same tokens: the reshape/cast and the sum run once per
        (stream, shape, device) and forward, not once per layer.
        """
        if torch.compiler.is_compiling():
            # Inside a compiled graph the compiler dedups the per-layer recomputation, and reading the
            # cache would guard on its (per-forward) state: one recompile on the second step.
            m = self._weights(stream, lead_shape, device)
            count = m.sum() if m is not None else torch.full((), float(n), dtype=torch.float32, device=device)
            return m, count
        if self._owner is not self.masks:  # a new forward call set new token masks
            self._owner, self._cache = self.masks, {}
        key = (stream, tuple(lead_shape), device)
        hit = self._cache.get(key)
        if hit is None:
            m = self._weights(stream, lead_shape, device)
            # torch.full, not new_tensor: no host-to-device copy per call.
            count = m.sum() if m is not None else torch.full((), float(n), dtype=torch.float32, device=device)
            hit = self._cache[key] = (m, count)
        return hit
