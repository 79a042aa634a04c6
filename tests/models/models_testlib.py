"""Shared pieces of the migu.models tests: tiny random model configs and toy instruction examples."""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migu.models import ModelConfig, ModelFamily, build_family

MINILM_VOCAB = 30522  # the packaged MiniLM (BERT uncased) tokenizer

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


# Dropout off so a forward pass is deterministic in train mode too.
TINY: dict[str, dict[str, Any]] = {
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
}
KINDS = tuple(TINY)
GENERATIVE = ("t5", "llama", "gpt2")


@dataclass(frozen=True)
class Ex:
    """Stand-in for migu.benchmarks.data.Example."""

    task: str
    input: str
    sentence: str
    label: str
    options: tuple[str, ...]


SENTIMENT = ("positive", "negative")
TOPIC = ("World", "Sports", "Business")
LABEL_SPACE = (*SENTIMENT, *TOPIC)


def make_example(task: str, sentence: str, label: str) -> Ex:
    """An instruction prompt like the benchmark's: instruction, sentence, options, "Answer:"."""
    options = SENTIMENT if task == "sentiment" else TOPIC
    prompt = (  # the benchmark's layout: instruction, options, sentence, "Answer:"
        f"What is the {task} of the following text? Choose one from the option.\n"
        f"Option: {', '.join(options)} \n{sentence}\nAnswer:"
    )
    return Ex(task, prompt, sentence, label, options)


TOY_ROWS = [
    ("sentiment", "a wonderful, moving film", "positive"),
    ("sentiment", "dull and far too long", "negative"),
    ("sentiment", "i loved every minute of it", "positive"),
    ("sentiment", "the worst acting this year", "negative"),
    ("topic", "the striker scored twice in the final", "Sports"),
    ("topic", "shares fell after the earnings report", "Business"),
    ("topic", "leaders met for peace talks in geneva", "World"),
    ("topic", "the team won the championship game", "Sports"),
]


def tiny_config(kind: str, vocab_size: int = MINILM_VOCAB) -> dict[str, Any]:
    """``random_init`` kwargs of a tiny ``kind`` model (a key of TINY)."""
    return {**TINY[kind], "vocab_size": vocab_size}


def tiny_family(
    kind: str, tokenizer: str = "minilm", label_space: tuple[str, ...] = LABEL_SPACE, **fields: Any
) -> ModelFamily:
    """A tiny random ``kind`` model in its family; ``tokenizer`` is "minilm" or a tiny-tokenizer dir."""
    import torch

    torch.manual_seed(0)
    fields.setdefault("max_length", 96)
    vocab = MINILM_VOCAB if tokenizer == "minilm" else TINY_VOCAB
    cfg = ModelConfig(random_init=tiny_config(kind, vocab), tokenizer=tokenizer, **fields)
    return build_family(cfg, label_space)
