"""Tiny random Hugging Face models for the tests (built from configs: no network, no weights).

One table, two sizes: ``"engine"`` (hidden 16, FFN 24: shapes small enough to check against the
float64 loop references by hand) and ``"run"`` (hidden 32, long position tables: the prompts of
the family and runner tests fit). Dropout is off everywhere, so a forward pass is deterministic in
train mode too.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from migu.models import ModelConfig, ModelFamily, build_family

from .examples import LABEL_SPACE

Size = Literal["engine", "run"]
ENGINE_VOCAB = 64  # ids of random_batch
MINILM_VOCAB = 30522  # the packaged MiniLM (BERT uncased) tokenizer

TINY: dict[Size, dict[str, dict[str, Any]]] = {
    "engine": {
        "bert": dict(
            model_type="bert",
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=24,
            max_position_embeddings=32,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        "roberta": dict(
            model_type="roberta",
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
            model_type="gpt2",
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
            model_type="llama",
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=24,
            max_position_embeddings=32,
        ),
        "t5": dict(
            model_type="t5",
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
    },
    "run": {
        "bert": dict(
            model_type="bert",
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=48,
            max_position_embeddings=128,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        "roberta": dict(
            model_type="roberta",
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=48,
            max_position_embeddings=130,
            pad_token_id=0,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        "t5": dict(
            model_type="t5",
            d_model=32,
            d_kv=16,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=2,
            d_ff=48,
            dropout_rate=0.0,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=3,
        ),
        "llama": dict(
            model_type="llama",
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=48,
            max_position_embeddings=256,
            bos_token_id=2,
            eos_token_id=3,
        ),
        "gpt2": dict(
            model_type="gpt2",
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=256,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=2,
            eos_token_id=3,
        ),
    },
}
KINDS = tuple(TINY["run"])
GENERATIVE = ("t5", "llama", "gpt2")

_HEADS = ("base", "causal-lm", "seq2seq-lm", "masked-lm", "seq-cls")


def tiny_config(
    kind: str, vocab_size: int = MINILM_VOCAB, size: Size = "run", **overrides: Any
) -> dict[str, Any]:
    """``AutoConfig.for_model`` kwargs (``model_type`` included) of a tiny ``kind`` model: what a
    run config's ``model.random_init`` takes."""
    return {**TINY[size][kind], "vocab_size": vocab_size, **overrides}


def build_tiny_model(kind: str, head: str = "base", seed: int = 0, **overrides: Any) -> nn.Module:
    """A tiny random engine-size model of ``kind`` with the given head (config overrides allowed)."""
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
    overrides.setdefault("vocab_size", ENGINE_VOCAB)
    fields = {**TINY["engine"][kind], **overrides}
    config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(seed)
    return auto.from_config(config)


def random_batch(
    batch: int, seq: int, lengths: list[int] | None = None, seed: int = 0, pad_id: int = 0, low: int = 2
) -> dict[str, torch.Tensor]:
    """input_ids + attention_mask, right-padded to ``seq``; ``lengths`` gives each row's real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, ENGINE_VOCAB, (batch, seq), generator=g)
    lengths = lengths if lengths is not None else [seq] * batch
    if len(lengths) != batch:
        raise ValueError("one length per row")
    mask = (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = ids.masked_fill(mask == 0, pad_id)
    return {"input_ids": ids, "attention_mask": mask}


# A ~120-token WordPiece vocabulary (letters as fallback pieces): output layers 250x smaller than
# MiniLM's, which keeps LM-head tests fast on a busy CPU.
_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = ["what", "is", "the", "of", "following", "text", "choose", "one", "from", "option", "options"]
_WORDS += ["answer", "sentiment", "topic", "positive", "negative", "world", "sports", "business"]
TINY_VOCAB_LIST = list(
    dict.fromkeys(
        _SPECIALS
        + list(string.ascii_lowercase)
        + ["##" + c for c in string.ascii_lowercase]
        + list(string.digits)
        + list(string.punctuation)
        + _WORDS
    )
)
TINY_VOCAB = len(TINY_VOCAB_LIST)


def save_tiny_tokenizer(path: Path) -> Path:
    """Write a BERT-style (uncased WordPiece, [CLS] x [SEP]) fast tokenizer with TINY_VOCAB tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = {w: i for i, w in enumerate(TINY_VOCAB_LIST)}
    tok = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(str(path))
    return path


def tiny_family(
    kind: str, tokenizer: str = "minilm", label_space: tuple[str, ...] = LABEL_SPACE, **fields: Any
) -> ModelFamily:
    """A tiny random ``kind`` model in its family; ``tokenizer`` is "minilm" or a tiny-tokenizer dir."""
    torch.manual_seed(0)
    fields.setdefault("max_length", 96)
    vocab = MINILM_VOCAB if tokenizer == "minilm" else TINY_VOCAB
    cfg = ModelConfig(random_init=tiny_config(kind, vocab), tokenizer=tokenizer, **fields)
    return build_family(cfg, label_space)


# --- decoder-only LMs with in-memory tokenizers (HumanEval, lm-eval, SFT tests) ----------------------


def byte_bpe_tokenizer(texts: list[str], vocab_size: int = 320) -> Any:
    """A byte-level BPE trained in memory on ``texts``: every string round-trips, no download."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def word_tokenizer(text: str) -> Any:
    """A word-level tokenizer trained in memory on ``text``; prepends BOS as Llama's does, and its
    tokens never merge across spaces (so ``a + " " + b`` tokenizes as a's tokens then b's)."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    backend = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[BOS]", "[EOS]"])
    backend.train_from_iterator([text], trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", special_tokens=[("[BOS]", backend.token_to_id("[BOS]"))]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )


def tiny_llama(tokenizer: Any, seed: int = 0, max_positions: int = 1024) -> nn.Module:
    """A 2-layer random LlamaForCausalLM sized to ``tokenizer`` (its bos/eos/pad ids set)."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config)
