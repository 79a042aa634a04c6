"""The interface the runner trains and evaluates through, and the tokenization shared by families.

A family turns instruction examples into tensors, a loss and label predictions for one model
type. ``loss`` and ``predict`` take the model as an argument because a CL method may have
wrapped ``family.model`` (PEFT, DDP); they call it with keyword arguments so MIGU's forward
pre-hook sees ``attention_mask`` / ``decoder_attention_mask`` / ``labels`` and can exclude
padding from its statistics.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedTokenizerBase

from .config import ModelConfig
from .spec import FamilyOutput, ModelSpec

log = logging.getLogger(__name__)

FamilyName = Literal["encoder", "seq2seq", "causal"]

# The authors' LoRA targets (q and v) per model type; others fall back to PEFT's own table.
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "t5": ("q", "v"),
    "mt5": ("q", "v"),
    "umt5": ("q", "v"),
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "xlm-roberta": ("query", "value"),
    "electra": ("query", "value"),
    "distilbert": ("q_lin", "v_lin"),
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "gpt2": ("c_attn",),
    "gpt_neox": ("query_key_value",),
}


def lora_targets_for(model_type: str) -> tuple[str, ...]:
    """Default LoRA target module names for a model type (q and v projections)."""
    if model_type in LORA_TARGETS:
        return LORA_TARGETS[model_type]
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_map
    except ImportError:  # pragma: no cover - peft is a dependency
        peft_map = {}
    if model_type in peft_map:
        return tuple(peft_map[model_type])
    log.warning("no default LoRA targets known for model_type=%r; using ('q_proj', 'v_proj')", model_type)
    return ("q_proj", "v_proj")


class ExampleLike(Protocol):
    """What a family reads from an example (``migu.data.cl_benchmark.Example`` fits)."""

    @property
    def task(self) -> str: ...
    @property
    def input(self) -> str: ...  # the full instruction prompt, options and "Answer:" included
    @property
    def sentence(self) -> str: ...  # the row's text, a substring of ``input``
    @property
    def label(self) -> str: ...
    @property
    def options(self) -> tuple[str, ...]: ...  # the task's label strings


def pad_labels(seqs: Sequence[Sequence[int]], value: int = -100) -> Tensor:
    """Stack ragged label lists into a [B, T] long tensor, right-padded with ``value`` (ignored)."""
    return pad_sequence(
        [torch.as_tensor(list(s), dtype=torch.long) for s in seqs], batch_first=True, padding_value=value
    )


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless module)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def inner_model(model: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel / torch.compile wrappers (which hide its own methods,
    e.g. ``get_encoder()``); the model itself when unwrapped."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """Move a batch's tensors (no-op when already there)."""
    return {k: v.to(device) for k, v in batch.items()}


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most ``size`` items."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def fit_prompt(
    ids: list[int],
    special: list[int],
    offsets: list[tuple[int, int]] | None,
    span: tuple[int, int] | None,
    max_len: int,
    keep: Literal["head", "tail"],
) -> list[int]:
    """Shorten a prompt's ids to ``max_len`` without losing its instruction or its options.

    First the row's sentence (the char ``span`` of the prompt) loses tokens from its end, so the
    instruction before it and the option list and "Answer:" after it survive. If that is not
    enough (or the sentence cannot be located) the remaining non-special tokens are cut from
    the end (``keep="head"``) or from the start (``keep="tail"``), special tokens
    (BOS/CLS/SEP/EOS) always kept.
    """
    excess = len(ids) - max_len
    if excess <= 0:
        return ids
    keep_mask = [True] * len(ids)
    if span is not None and offsets is not None:
        start, end = span
        inside = [j for j, (s, e) in enumerate(offsets) if not special[j] and s < end and e > start]
        for j in inside[max(len(inside) - excess, 0) :]:
            keep_mask[j] = False
        excess -= min(excess, len(inside))
    if excess > 0:
        body = [j for j in range(len(ids)) if keep_mask[j] and not special[j]]
        cut = body[len(body) - excess :] if keep == "head" else body[:excess]
        for j in cut:
            keep_mask[j] = False
    out = [t for t, k in zip(ids, keep_mask, strict=True) if k]
    if len(out) > max_len:  # only special tokens left to cut: the budget is absurdly small
        out = out[:max_len] if keep == "head" else out[len(out) - max_len :]
    return out


def _sentence_span(ex: ExampleLike) -> tuple[int, int] | None:
    """Char span of the row's sentence in its prompt: the last occurrence before the final "Answer:"
    (the benchmark puts it after the instruction and options), or None if it is not there."""
    if not ex.sentence:
        return None
    answer = ex.input.rfind("Answer:")
    start = ex.input.rfind(ex.sentence, 0, answer if answer > 0 else len(ex.input))
    return (start, start + len(ex.sentence)) if start >= 0 else None


class ModelFamily(ABC):
    """One model type's tensors, loss and predictions for instruction-formatted classification."""

    family: FamilyName

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        config: ModelConfig,
        label_space: Sequence[str],
        model_type: str,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.label_space: tuple[str, ...] = tuple(dict.fromkeys(label_space))
        self.model_type = model_type
        self._prompt_limit = config.max_length

    # ------------------------------------------------------------------ interface
    @abstractmethod
    def collate(self, examples: Sequence[ExampleLike]) -> dict[str, Tensor]:
        """A training batch (tensors only) for ``loss``."""

    @abstractmethod
    def forward(self, model: nn.Module, batch: dict[str, Tensor]) -> FamilyOutput:
        """Loss (mean, fp32) and logits of a training batch; ``model`` may wrap ``self.model`` (PEFT, DDP)."""

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """Mean training loss of a batch, in fp32."""
        return self.forward(model, batch).loss

    @abstractmethod
    def option_scores(
        self, model: nn.Module, examples: Sequence[ExampleLike], batch_size: int = 32
    ) -> list[list[float]]:
        """Per example, one score per option (in ``ex.options`` order); higher is better."""

    def generate(self, model: nn.Module, examples: Sequence[ExampleLike], batch_size: int = 32) -> list[str]:
        """Greedy generations, stripped (generative families only)."""
        raise ValueError(f"eval_mode='generate' needs a generative family, not {self.family!r}")

    @property
    def spec(self) -> ModelSpec:
        """What CL methods need to know: default LoRA targets, head modules, PEFT task type."""
        return ModelSpec(lora_target_modules=lora_targets_for(self.model_type))

    # ------------------------------------------------------------------ shared
    def pad_ids(
        self, seqs: Sequence[Sequence[int]], side: Literal["left", "right"] = "right"
    ) -> tuple[Tensor, Tensor]:
        """[B, T] input ids padded with the tokenizer's pad token on ``side``, and the attention mask."""
        enc = self.tokenizer.pad(
            {"input_ids": [list(s) for s in seqs]},
            padding=True,
            padding_side=side,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return enc["input_ids"], enc["attention_mask"]

    def predict(self, model: nn.Module, examples: Sequence[ExampleLike], batch_size: int = 32) -> list[str]:
        """Predicted label strings: the best-scored option (rank) or the exact generation (generate).

        Runs under ``torch.no_grad`` in eval mode and restores the model's training mode.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not examples:
            return []
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                if self.config.eval_mode == "generate":
                    return self.generate(model, examples, batch_size)
                scores = self.option_scores(model, examples, batch_size)
                return [
                    ex.options[max(range(len(s)), key=s.__getitem__)]
                    for ex, s in zip(examples, scores, strict=True)
                ]
        finally:
            model.train(was_training)

    def encode_prompts(
        self,
        examples: Sequence[ExampleLike],
        keep: Literal["head", "tail"],
        drop_trailing_special: bool = False,
    ) -> list[list[int]]:
        """Token ids of each prompt, fitted to the prompt budget (see :func:`fit_prompt`)."""
        texts = [ex.input for ex in examples]
        try:
            enc = self.tokenizer(
                texts, add_special_tokens=True, return_special_tokens_mask=True, return_offsets_mapping=True
            )
            offsets: list[Any] = enc["offset_mapping"]
        except (NotImplementedError, ValueError, TypeError, KeyError):  # tokenizer without offsets
            enc = self.tokenizer(texts, add_special_tokens=True, return_special_tokens_mask=True)
            offsets = [None] * len(texts)
        out: list[list[int]] = []
        for i, ex in enumerate(examples):
            ids, special, offs = list(enc["input_ids"][i]), list(enc["special_tokens_mask"][i]), offsets[i]
            if drop_trailing_special:
                while ids and special[-1]:
                    ids.pop()
                    special.pop()
                    if offs is not None:
                        offs = offs[: len(ids)]
            out.append(fit_prompt(ids, special, offs, _sentence_span(ex), self._prompt_limit, keep))
        return out

    def check_options(self, examples: Sequence[ExampleLike]) -> None:
        """Every example must have options and its label among them."""
        for ex in examples:
            if not ex.options:
                raise ValueError(f"example of task {ex.task!r} has no options")
            if ex.label not in ex.options:
                raise ValueError(
                    f"label {ex.label!r} of task {ex.task!r} is not among its options {ex.options}"
                )
