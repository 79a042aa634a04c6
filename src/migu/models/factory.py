"""Build a run's :class:`ModelFamily` from a :class:`ModelConfig`: load (or randomly build) the model."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from ..validation import invalid
from .base import FamilyName, ModelFamily
from .config import ModelConfig, resolve_model_name
from .encoder import EncoderClassifier, EncoderFamily
from .generative import CausalFamily, Seq2SeqFamily
from .mlm import MaskedLM, MaskedLMFamily
from .sft import SFTFamily

log = logging.getLogger(__name__)

# Encoder-only model types that also have a causal-LM head class in transformers (BertLMHeadModel, ...):
# listed so "auto" does not mistake them for decoders.
ENCODER_TYPES = frozenset(
    {
        "bert",
        "roberta",
        "xlm-roberta",
        "xlm-roberta-xl",
        "roberta-prelayernorm",
        "camembert",
        "electra",
        "ernie",
        "megatron-bert",
        "data2vec-text",
        "distilbert",
        "albert",
        "deberta",
        "deberta-v2",
        "mpnet",
        "modernbert",
    }
)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def detect_family(config: PretrainedConfig) -> FamilyName:
    """encoder / seq2seq / causal from a model config (is_encoder_decoder, then model_type)."""
    model_type = getattr(config, "model_type", "")
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    if model_type in ENCODER_TYPES:
        return "encoder"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal"
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder"
    raise ValueError(
        f"cannot tell the family of model_type={model_type!r} "
        f"(architectures={getattr(config, 'architectures', None)}): set family='encoder'|'seq2seq'|'causal'"
    )


def _from_pretrained(loader: Any, source: str, what: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained`` with a ValueError that names the field when nothing loads."""
    try:
        return loader.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:  # missing files / no hub access / a dir without a model config
        raise ValueError(
            f"cannot load the {what} {source!r}: not a model directory, and not reachable as a hub id "
            f"({err}). Use name='minilm' (packaged, offline), a local directory, or a hub id with access."
        ) from err


def load_tokenizer(config: ModelConfig) -> PreTrainedTokenizerBase:
    """The run's tokenizer, from ``config.tokenizer`` or ``config.name``."""
    field = "tokenizer" if config.tokenizer else "name"
    return _from_pretrained(AutoTokenizer, config.tokenizer_source, f"tokenizer (model.{field})")


def model_config(config: ModelConfig) -> PretrainedConfig:
    """The HF config of ``config``: built for ``random_init``, else read from the model's files."""
    if config.random_init is not None:
        kwargs = dict(config.random_init)
        model_type = kwargs.pop("model_type")
        try:
            return AutoConfig.for_model(model_type, **kwargs)
        except (ValueError, KeyError) as err:
            raise ValueError(
                f"random_init: cannot build a config for model_type={model_type!r}: {err}"
            ) from err
    return _from_pretrained(AutoConfig, resolve_model_name(config.name), "model (model.name)")


def _check_family(family: FamilyName, hf_config: PretrainedConfig) -> None:
    enc_dec = bool(getattr(hf_config, "is_encoder_decoder", False))
    if (family == "seq2seq") != enc_dec:
        kind = "an encoder-decoder" if enc_dec else "not an encoder-decoder"
        raise ValueError(f"family={family!r} but model_type={hf_config.model_type!r} is {kind}")


def _load_model(config: ModelConfig, family: FamilyName, hf_config: PretrainedConfig) -> PreTrainedModel:
    auto = {"encoder": AutoModel, "seq2seq": AutoModelForSeq2SeqLM, "causal": AutoModelForCausalLM}[family]
    dtype = _DTYPES[config.dtype]
    if config.random_init is not None:
        model = auto.from_config(hf_config)
    else:
        model = _from_pretrained(
            auto, resolve_model_name(config.name), "model (model.name)", config=hf_config, dtype=dtype
        )
    return model.to(dtype)


def build_family(config: ModelConfig, label_space: Sequence[str]) -> ModelFamily:
    """Load the tokenizer and model of ``config`` and wrap them in their family.

    ``label_space`` is the union of every task's label strings in the run (the encoder
    family's shared head has one output per label; generative families use it for checks).
    """
    labels = list(dict.fromkeys(label_space))
    if not labels or not all(isinstance(lab, str) and lab for lab in labels):
        raise invalid("label_space", "a non-empty sequence of non-empty strings", label_space)
    hf_config = model_config(config)
    family: FamilyName = detect_family(hf_config) if config.family == "auto" else config.family
    _check_family(family, hf_config)
    if family == "encoder" and config.eval_mode != "rank":
        raise invalid(
            "eval_mode", "rank for the encoder family (generate needs a generative family)", config.eval_mode
        )
    tokenizer = load_tokenizer(config)
    vocab = getattr(hf_config, "vocab_size", None)
    if isinstance(vocab, int) and len(tokenizer) > vocab:
        raise ValueError(
            f"tokenizer {config.tokenizer_source!r} has {len(tokenizer)} tokens but the model's "
            f"vocab_size is {vocab}: ids would index past the embedding"
        )
    model = _load_model(config, family, hf_config)
    model_type = str(hf_config.model_type)
    log.info(
        "model %s (%s, family=%s, %s, %.1fM params)",
        config.name if config.random_init is None else f"random {model_type}",
        type(model).__name__,
        family,
        config.dtype,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    if family == "encoder":
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # we pool ourselves; unused weights would trip DDP's unused-parameter check
        clf = EncoderClassifier(model, len(labels), config.pooling).to(_DTYPES[config.dtype])
        return EncoderFamily(clf, tokenizer, config, labels, model_type)
    if family == "seq2seq":
        return Seq2SeqFamily(model, tokenizer, config, labels, model_type)
    return CausalFamily(model, tokenizer, config, labels, model_type)


def build_mlm_family(config: ModelConfig, mlm_probability: float = 0.15) -> MaskedLMFamily:
    """Load (or randomly build) ``AutoModelForMaskedLM`` for ``config`` (continual pre-training).

    A checkpoint without an MLM head (the packaged MiniLM is a ``BertModel``) gets the encoder's
    weights and a new head: the prediction transform is freshly initialized and the decoder is tied
    to the word embeddings (the model's ``tie_word_embeddings``).
    """
    hf_config = model_config(config)
    model_type = str(hf_config.model_type)
    if model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise ValueError(
            f"model.name={config.name!r} (model_type {model_type!r}) has no masked-LM head class in "
            "transformers: continual pre-training needs a BERT/RoBERTa-family model"
        )
    tokenizer = load_tokenizer(config)
    vocab = getattr(hf_config, "vocab_size", None)
    if isinstance(vocab, int) and len(tokenizer) > vocab:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {vocab}")
    if config.random_init is not None:
        hf = AutoModelForMaskedLM.from_config(hf_config)
    else:
        hf = _from_pretrained(
            AutoModelForMaskedLM, resolve_model_name(config.name), "model (model.name)", config=hf_config
        )
    model = MaskedLM(hf).to(_DTYPES[config.dtype])
    log.info(
        "masked LM %s (%s, %.1fM params)",
        config.name if config.random_init is None else f"random {model_type}",
        type(hf).__name__,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return MaskedLMFamily(model, tokenizer, config, mlm_probability)


def build_sft_family(config: ModelConfig, **options: Any) -> SFTFamily:
    """Load (or randomly build) ``AutoModelForCausalLM`` for instruction tuning (``SFTFamily`` options:
    template, overlong, packing)."""
    hf_config = model_config(config)
    family: FamilyName = detect_family(hf_config) if config.family == "auto" else config.family
    if family != "causal":
        raise ValueError(
            f"instruction tuning needs a decoder-only causal LM; model.name={config.name!r} is {family} "
            f"(model_type {hf_config.model_type!r})"
        )
    tokenizer = load_tokenizer(config)
    vocab = getattr(hf_config, "vocab_size", None)
    if isinstance(vocab, int) and len(tokenizer) > vocab:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {vocab}")
    model = _load_model(config, "causal", hf_config)
    log.info(
        "causal LM %s (%s, %.1fM params) for instruction tuning",
        config.name if config.random_init is None else f"random {hf_config.model_type}",
        type(model).__name__,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return SFTFamily(model, tokenizer, config, **options)
