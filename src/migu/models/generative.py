"""Generative families: seq2seq (T5) and decoder-only (Llama, GPT-2) models answering in text.

Training maximises the likelihood of ``label + EOS``. Evaluation either ranks the options by
the summed log-likelihood of ``option + EOS`` (rank: never off-label) or greedily generates and
compares the stripped text with the options (generate: the paper's exact-match protocol, an
off-label answer counts as wrong).

Ranking uses the *unnormalised* sum over the option's tokens, EOS included: it is the log
probability that the model emits exactly this option and stops, the quantity greedy decoding
approximates, so rank and generate agree on what a "right answer" is. Length normalisation would
favour long labels whose later tokens are near-certain once the first is chosen.
"""

from __future__ import annotations

import functools
import logging
from abc import abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase
from transformers.modeling_outputs import BaseModelOutput

from .base import (
    ExampleLike,
    ModelFamily,
    chunks,
    inner_model,
    lora_targets_for,
    model_device,
    pad_labels,
    to_device,
)
from .config import ModelConfig
from .spec import FamilyOutput, ModelSpec

log = logging.getLogger(__name__)

IGNORE = -100


def _token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """log p(target) at every position with a real target (``!= -100``), in fp32: [N]."""
    mask = targets != IGNORE
    picked = logits[mask].float()  # [N, V]: only real target positions are upcast
    return torch.log_softmax(picked, dim=-1).gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)


def answer_output(logits: Tensor, targets: Tensor) -> FamilyOutput:
    """Token-weighted mean cross entropy over real targets (fp32), with the [N, V] fp32 logits of
    those N positions: the loss reads them anyway, so distillation gets them for free."""
    mask = targets != IGNORE
    picked = logits[mask].float()  # [N, V]: only real target positions are upcast
    return FamilyOutput(loss=F.cross_entropy(picked, targets[mask]), logits=picked)


def _per_example(scores: Sequence[float], examples: Sequence[ExampleLike]) -> list[list[float]]:
    """Flat (example, option) scores back into one list per example, in option order."""
    out: list[list[float]] = []
    pos = 0
    for ex in examples:
        out.append(list(scores[pos : pos + len(ex.options)]))
        pos += len(ex.options)
    return out


class GenerativeFamily(ModelFamily):
    """Shared pieces: EOS/pad resolution, label tokenization, generation settings."""

    peft_task_type: str = ""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        config: ModelConfig,
        label_space: Sequence[str],
        model_type: str,
    ) -> None:
        super().__init__(model, tokenizer, config, label_space, model_type)
        self._answer_cache: dict[str, list[int]] = {}
        eos = tokenizer.eos_token_id
        if eos is None:
            eos = tokenizer.sep_token_id  # BERT-style tokenizers (tests) end a sequence with [SEP]
        if eos is None:
            eos = getattr(model.config, "eos_token_id", None)
            eos = eos[0] if isinstance(eos, list) else eos
        if eos is None:
            raise ValueError(
                f"tokenizer {config.tokenizer_source!r} and the model config define no EOS token"
            )
        self.eos_id = int(eos)
        if tokenizer.pad_token_id is None:
            # Decoder-only tokenizers (GPT-2, Llama) often have none: padding is masked out anyway.
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.convert_ids_to_tokens(self.eos_id)
        self.pad_id = int(tokenizer.pad_token_id)
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = self.pad_id
        gen_cfg = getattr(model, "generation_config", None)
        if gen_cfg is not None and gen_cfg.pad_token_id is None:
            gen_cfg.pad_token_id = self.pad_id
        if config.eval_mode == "generate":
            too_long = [
                lab for lab in self.label_space if len(self.answer_ids(lab)) - 1 > config.max_target_length
            ]
            if too_long:
                log.warning(
                    "max_target_length=%d is shorter than %d label(s) (e.g. %r): generate mode can never "
                    "produce them exactly",
                    config.max_target_length,
                    len(too_long),
                    too_long[0],
                )

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(lora_target_modules=lora_targets_for(self.model_type), task_type=self.peft_task_type)

    def answer_ids(self, label: str) -> list[int]:
        """Token ids of a label as the model must emit it, EOS included (cached per label)."""
        if label not in self._answer_cache:
            self._answer_cache[label] = [*self._label_ids(label), self.eos_id]
        return self._answer_cache[label]

    @abstractmethod
    def _label_ids(self, label: str) -> list[int]:
        """The label's tokens as they follow the prompt (no special tokens)."""

    def _generate_kwargs(self) -> dict[str, object]:
        return {
            "max_new_tokens": self.config.max_target_length,
            "do_sample": False,
            "num_beams": 1,
            "eos_token_id": self.eos_id,
            "pad_token_id": self.pad_id,
        }

    def _decode(self, ids: Tensor) -> list[str]:
        return [s.strip() for s in self.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)]


class Seq2SeqFamily(GenerativeFamily):
    """Encoder-decoder (T5): prompt in, label text out."""

    family = "seq2seq"
    peft_task_type = "SEQ_2_SEQ_LM"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        config: ModelConfig,
        label_space: Sequence[str],
        model_type: str,
    ) -> None:
        super().__init__(model, tokenizer, config, label_space, model_type)
        if getattr(model.config, "decoder_start_token_id", None) is None:
            model.config.decoder_start_token_id = self.pad_id  # T5's convention
            log.info("decoder_start_token_id missing: set to the pad id %d", self.pad_id)
        gen_cfg = getattr(model, "generation_config", None)
        if gen_cfg is not None and gen_cfg.decoder_start_token_id is None:
            gen_cfg.decoder_start_token_id = model.config.decoder_start_token_id

    def _label_ids(self, label: str) -> list[int]:
        return self.tokenizer(label, add_special_tokens=False)["input_ids"]

    def _prompts(self, examples: Sequence[ExampleLike]) -> tuple[Tensor, Tensor]:
        ids = self.encode_prompts(examples, keep="head")
        return self.pad_ids(ids)

    @staticmethod
    def _targets(answers: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        labels = pad_labels(answers, IGNORE)
        return labels, (labels != IGNORE).long()

    def collate(self, examples: Sequence[ExampleLike]) -> dict[str, Tensor]:
        self.check_options(examples)
        input_ids, attention = self._prompts(examples)
        labels, dec_mask = self._targets([self.answer_ids(ex.label) for ex in examples])
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            "decoder_attention_mask": dec_mask,
        }

    def forward(self, model: nn.Module, batch: dict[str, Tensor]) -> FamilyOutput:
        batch = to_device(batch, model_device(model))
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            decoder_attention_mask=batch["decoder_attention_mask"],
        )
        return answer_output(out.logits, batch["labels"])

    def option_scores(
        self, model: nn.Module, examples: Sequence[ExampleLike], batch_size: int = 32
    ) -> list[list[float]]:
        """Summed log-likelihood of ``option + EOS``; the encoder runs once per prompt, the decoder
        once over every (example, option) pair of the batch."""
        device = model_device(model)
        out: list[list[float]] = []
        for part in chunks(examples, batch_size):
            input_ids, attention = self._prompts(part)
            input_ids, attention = input_ids.to(device), attention.to(device)
            owner = [i for i, ex in enumerate(part) for _ in ex.options]
            labels, dec_mask = self._targets([self.answer_ids(o) for ex in part for o in ex.options])
            labels, dec_mask = labels.to(device), dec_mask.to(device)
            # get_encoder() is the T5 model's own method: DDP / compile wrappers do not forward it
            encoder = inner_model(model).get_encoder()
            hidden = encoder(input_ids=input_ids, attention_mask=attention).last_hidden_state
            idx = torch.tensor(owner, device=device)
            logits = model(
                encoder_outputs=BaseModelOutput(last_hidden_state=hidden[idx]),
                attention_mask=attention[idx],
                labels=labels,
                decoder_attention_mask=dec_mask,
            ).logits
            logp = torch.zeros(labels.shape, dtype=torch.float32, device=device)
            logp[labels != IGNORE] = _token_logprobs(logits, labels)
            out.extend(_per_example(logp.sum(dim=1).tolist(), part))
        return out

    def generate(self, model: nn.Module, examples: Sequence[ExampleLike], batch_size: int = 32) -> list[str]:
        device = model_device(model)
        out: list[str] = []
        for part in chunks(examples, batch_size):
            input_ids, attention = self._prompts(part)
            gen = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), **self._generate_kwargs()
            )
            out.extend(self._decode(gen))
        return out


class CausalFamily(GenerativeFamily):
    """Decoder-only (Llama, GPT-2): ``prompt + " " + label + EOS``, loss on the answer only.

    Training and ranking pad on the right (positions of real tokens stay 0..n-1 without
    ``position_ids``); generation pads on the left, where ``generate`` derives positions from the
    attention mask. The prompt keeps its tail when it must be cut, so "Answer:" always sits
    right before the answer.
    """

    family = "causal"
    peft_task_type = "CAUSAL_LM"
    _ANCHOR = "Answer:"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        config: ModelConfig,
        label_space: Sequence[str],
        model_type: str,
    ) -> None:
        super().__init__(model, tokenizer, config, label_space, model_type)
        max_pos = getattr(model.config, "max_position_embeddings", None) or getattr(
            model.config, "n_positions", None
        )
        longest = max((len(self.answer_ids(lab)) for lab in self.label_space), default=1)
        if isinstance(max_pos, int) and self._prompt_limit + longest > max_pos:
            self._prompt_limit = max(max_pos - longest, 1)
            log.warning(
                "max_length=%d + answer (%d tokens) exceeds the model's %d positions: prompts clipped to %d",
                config.max_length,
                longest,
                max_pos,
                self._prompt_limit,
            )

    @functools.cached_property
    def _anchor_ids(self) -> list[int]:
        return self.tokenizer(self._ANCHOR, add_special_tokens=False)["input_ids"]

    def _label_ids(self, label: str) -> list[int]:
        """`` label`` tokenized as it continues a prompt ending in "Answer:".

        Tokenizing the label in context (and keeping only its part) gives the same ids as
        tokenizing the joined text, for BPE (GPT-2) and SentencePiece (Llama) alike.
        """
        joined = self.tokenizer(f"{self._ANCHOR} {label}", add_special_tokens=False)["input_ids"]
        anchor = self._anchor_ids
        if joined[: len(anchor)] == anchor and len(joined) > len(anchor):
            return joined[len(anchor) :]
        return self.tokenizer(f" {label}", add_special_tokens=False)["input_ids"]

    def _prompt_ids(self, examples: Sequence[ExampleLike]) -> list[list[int]]:
        # Trailing special tokens ([SEP], an appended EOS) would sit between the prompt and its answer.
        return self.encode_prompts(examples, keep="tail", drop_trailing_special=True)

    def _sequences(self, prompts: Sequence[list[int]], answers: Sequence[list[int]]) -> dict[str, Tensor]:
        seqs = [p + a for p, a in zip(prompts, answers, strict=True)]
        labels = [[IGNORE] * len(p) + a for p, a in zip(prompts, answers, strict=True)]
        input_ids, attention = self.pad_ids(seqs)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": pad_labels(labels, IGNORE)}

    def collate(self, examples: Sequence[ExampleLike]) -> dict[str, Tensor]:
        self.check_options(examples)
        return self._sequences(self._prompt_ids(examples), [self.answer_ids(ex.label) for ex in examples])

    def _logits(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        # labels are not passed: the model would compute a second full-vocabulary loss.
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def forward(self, model: nn.Module, batch: dict[str, Tensor]) -> FamilyOutput:
        batch = to_device(batch, model_device(model))
        logits = self._logits(model, batch)
        return answer_output(logits[:, :-1], batch["labels"][:, 1:])

    def option_scores(
        self, model: nn.Module, examples: Sequence[ExampleLike], batch_size: int = 32
    ) -> list[list[float]]:
        """Summed log-likelihood of `` option + EOS`` after the prompt; forward passes hold at most
        ``batch_size`` (example, option) sequences, since each carries the full prompt."""
        device = model_device(model)
        prompts = self._prompt_ids(examples)
        pairs = [(i, o) for i, ex in enumerate(examples) for o in ex.options]
        scores: list[float] = []
        for part in chunks(pairs, batch_size):
            batch = self._sequences([prompts[i] for i, _ in part], [self.answer_ids(o) for _, o in part])
            batch = to_device(batch, device)
            logits = self._logits(model, batch)
            targets = batch["labels"][:, 1:]
            logp = torch.zeros(targets.shape, dtype=torch.float32, device=device)
            logp[targets != IGNORE] = _token_logprobs(logits[:, :-1], targets)
            scores.extend(logp.sum(dim=1).tolist())
        return _per_example(scores, examples)

    def generate(self, model: nn.Module, examples: Sequence[ExampleLike], batch_size: int = 32) -> list[str]:
        device = model_device(model)
        out: list[str] = []
        for part in chunks(examples, batch_size):
            prompts = self._prompt_ids(part)
            input_ids, attention = (t.to(device) for t in self.pad_ids(prompts, side="left"))
            gen = model.generate(input_ids=input_ids, attention_mask=attention, **self._generate_kwargs())
            out.extend(self._decode(gen[:, input_ids.shape[1] :]))
        return out
