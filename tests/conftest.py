"""Shared fixtures: tiny random Hugging Face models built from configs (no network, no weights)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

VOCAB = 64

# Small enough to run a forward/backward in milliseconds on CPU; dropout off so runs are deterministic.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "bert": dict(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    ),
    "roberta": dict(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=40,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=1,
    ),
    "gpt2": dict(
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=32,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    ),
    "llama": dict(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=24,
        max_position_embeddings=32,
    ),
    "t5": dict(
        d_model=16,
        d_kv=8,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        d_ff=24,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
    ),
}

_HEADS = ("base", "causal-lm", "seq2seq-lm", "masked-lm", "seq-cls")


def build_tiny_model(kind: str, head: str = "base", seed: int = 0, **overrides: Any) -> nn.Module:
    """A tiny random model of family ``kind`` (a key of TINY_CONFIGS) with the given head."""
    import transformers

    if head not in _HEADS:
        raise ValueError(f"head must be one of {_HEADS}, got {head!r}")
    auto = {
        "base": transformers.AutoModel,
        "causal-lm": transformers.AutoModelForCausalLM,
        "seq2seq-lm": transformers.AutoModelForSeq2SeqLM,
        "masked-lm": transformers.AutoModelForMaskedLM,
        "seq-cls": transformers.AutoModelForSequenceClassification,
    }[head]
    config = transformers.AutoConfig.for_model(kind, vocab_size=VOCAB, **{**TINY_CONFIGS[kind], **overrides})
    torch.manual_seed(seed)
    return auto.from_config(config)


def random_batch(
    batch: int, seq: int, lengths: list[int] | None = None, seed: int = 0, pad_id: int = 0, low: int = 2
) -> dict[str, torch.Tensor]:
    """input_ids + attention_mask, right-padded to ``seq``; ``lengths`` gives each row's real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, VOCAB, (batch, seq), generator=g)
    lengths = lengths if lengths is not None else [seq] * batch
    if len(lengths) != batch:
        raise ValueError("one length per row")
    mask = (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = ids.masked_fill(mask == 0, pad_id)
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    # Tiny models gain nothing from intra-op threads, and on a shared 2-core box the threads of
    # concurrent processes fight (steps measured 20x slower): one thread keeps the suite fast.
    torch.set_num_threads(1)


@pytest.fixture
def tiny_model() -> Callable[..., nn.Module]:
    """``tiny_model(kind, head="base", seed=0, **config_overrides)``: see :func:`build_tiny_model`."""
    return build_tiny_model


@pytest.fixture
def make_batch() -> Callable[..., dict[str, torch.Tensor]]:
    """``make_batch(batch, seq, lengths=None, seed=0, pad_id=0)``: see :func:`random_batch`."""
    return random_batch
