"""Supervised finetuning (LLM instruction tuning): conversations rendered, tokenized with the loss
on the assistant's tokens only, optionally packed, for a causal LM (+ LoRA through the methods).

Rendering: the tokenizer's chat template when it has one (``apply_chat_template``; the assistant
tokens of turn k are those the full render adds after the render up to turn k with the generation
prompt), else this plain template, one segment per turn::

    ### Instruction:
    {user}

    ### Response:
    {assistant}</s>

(``### System:`` for system turns; segments joined by a blank line, each tokenized on its own, the
assistant's content and EOS labelled). Generation conditions on the prompt turns plus the response
header (or the template's generation prompt) and decodes greedily.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from ..data.instructions import Conversation
from .base import chunks, lora_targets_for, model_device, pad_labels, to_device
from .config import ModelConfig
from .generative import IGNORE, answer_output
from .spec import FamilyOutput, ModelSpec

log = logging.getLogger(__name__)

PLAIN_HEADERS = {"system": "### System:\n", "user": "### Instruction:\n", "assistant": "### Response:\n"}
SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Encoded:
    """One tokenized training example: ids and labels (-100 on everything but assistant tokens)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


class SFTFamily:
    """A causal LM trained on conversations; scored by generation (exact match, HumanEval)."""

    family = "causal_sft"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        config: ModelConfig,
        *,
        template: Literal["auto", "chat", "plain"] = "auto",
        overlong: Literal["truncate", "drop"] = "truncate",
        packing: bool = False,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.model_type = str(model.config.model_type)
        self.max_length = config.max_length
        self.overlong = overlong
        self.packing = packing
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if template == "chat" and not has_chat:
            raise ValueError(
                f"instruct.template='chat' but tokenizer {config.tokenizer_source!r} has no chat template"
            )
        self.use_chat = has_chat and template != "plain"
        if tokenizer.eos_token_id is None and tokenizer.sep_token is not None:
            log.info(
                "tokenizer %s has no EOS: its separator %r ends responses",
                config.tokenizer_source,
                tokenizer.sep_token,
            )
            tokenizer.eos_token = tokenizer.sep_token  # BERT-style tokenizers (the CPU demo's)
        if tokenizer.eos_token_id is None:
            raise ValueError(
                f"tokenizer {config.tokenizer_source!r} has no EOS token: responses could never end"
            )
        if tokenizer.pad_token_id is None:
            log.warning(
                "tokenizer %s has no pad token: padding with EOS (masked out)", config.tokenizer_source
            )
            tokenizer.pad_token = tokenizer.eos_token
        self.stats = {"rows": 0, "truncated": 0, "dropped": 0}

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(lora_target_modules=lora_targets_for(self.model_type), task_type="CAUSAL_LM")

    # ------------------------------------------------------------------ tokenization
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _bos(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return [bos] if bos is not None else []

    def _plain(
        self, turns: Sequence[tuple[str, str]], generation_prompt: bool
    ) -> tuple[list[int], list[int]]:
        ids, labels = self._bos(), [IGNORE] * len(self._bos())
        for k, (role, content) in enumerate(turns):
            head = self._ids((SEPARATOR if k else "") + PLAIN_HEADERS[role])
            body = self._ids(content)
            ids += head + body
            if role == "assistant":
                body = [*body, self.tokenizer.eos_token_id]
                ids.append(self.tokenizer.eos_token_id)
                labels += [IGNORE] * len(head) + body
            else:
                labels += [IGNORE] * (len(head) + len(body))
        if generation_prompt:
            head = self._ids((SEPARATOR if turns else "") + PLAIN_HEADERS["assistant"])
            ids += head
            labels += [IGNORE] * len(head)
        return ids, labels

    def _chat(self, turns: Sequence[tuple[str, str]]) -> tuple[list[int], list[int]]:
        messages = [{"role": r, "content": c} for r, c in turns]
        ids = list(self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
        labels = [IGNORE] * len(ids)
        for k, (role, _) in enumerate(turns):
            if role != "assistant":
                continue
            before = list(
                self.tokenizer.apply_chat_template(
                    messages[:k], tokenize=True, add_generation_prompt=True, return_dict=False
                )
            )
            upto = list(
                self.tokenizer.apply_chat_template(messages[: k + 1], tokenize=True, return_dict=False)
            )
            if ids[: len(upto)] != upto or upto[: len(before)] != before:
                raise ValueError(
                    "the tokenizer's chat template does not render conversations prefix by prefix, so the "
                    "assistant tokens cannot be found: set instruct.template=plain"
                )
            labels[len(before) : len(upto)] = ids[len(before) : len(upto)]
        return ids, labels

    def encode(self, rows: Sequence[Conversation]) -> list[Encoded]:
        """Training examples (overlong ones truncated at the end or dropped, both counted)."""
        out: list[Encoded] = []
        for row in rows:
            ids, labels = self._chat(row.turns) if self.use_chat else self._plain(row.turns, False)
            self.stats["rows"] += 1
            if len(ids) > self.max_length:
                first = next((i for i, v in enumerate(labels) if v != IGNORE), len(labels))
                if self.overlong == "drop" or first >= self.max_length - 1:
                    self.stats["dropped"] += 1  # the prompt alone fills the budget: nothing to learn
                    continue
                ids, labels = ids[: self.max_length], labels[: self.max_length]
                self.stats["truncated"] += 1
            out.append(Encoded(tuple(ids), tuple(labels)))
        if not out:
            raise ValueError(
                f"every one of {len(rows)} rows is longer than model.max_length={self.max_length} tokens "
                "before its response: raise max_length"
            )
        return self.pack(out) if self.packing else out

    def pack(self, rows: Sequence[Encoded]) -> list[Encoded]:
        """Greedy packing: consecutive examples share a sequence up to ``max_length`` tokens (no row
        is split; examples in one pack attend to each other, the usual naive packing)."""
        packs: list[Encoded] = []
        ids: list[int] = []
        labels: list[int] = []
        for r in rows:
            if ids and len(ids) + len(r.input_ids) > self.max_length:
                packs.append(Encoded(tuple(ids), tuple(labels)))
                ids, labels = [], []
            ids += r.input_ids
            labels += r.labels
        if ids:
            packs.append(Encoded(tuple(ids), tuple(labels)))
        return packs

    def prompt_ids(self, row: Conversation) -> list[int]:
        """What generation conditions on: the prompt turns and the response header."""
        turns = row.prompt
        if self.use_chat:
            messages = [{"role": r, "content": c} for r, c in turns]
            return list(
                self.tokenizer.apply_chat_template(
                    messages, tokenize=True, add_generation_prompt=True, return_dict=False
                )
            )
        return self._plain(turns, generation_prompt=True)[0]

    # ------------------------------------------------------------------ training
    def collate(self, rows: Sequence[Encoded]) -> dict[str, Tensor]:
        enc = self.tokenizer.pad(
            {"input_ids": [list(r.input_ids) for r in rows]},
            padding=True,
            padding_side="right",
            return_attention_mask=True,
            return_tensors="pt",
        )
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": pad_labels([r.labels for r in rows], IGNORE),
        }

    def forward(self, model: nn.Module, batch: dict[str, Tensor]) -> FamilyOutput:
        batch = to_device(batch, model_device(model))
        # labels are not passed: the model would compute a second full-vocabulary loss
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return answer_output(logits[:, :-1], batch["labels"][:, 1:])  # next-token loss on the response

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def generate(
        self, model: nn.Module, rows: Sequence[Conversation], max_new_tokens: int, batch_size: int
    ) -> list[str]:
        """Greedy responses (stripped) to each row's prompt."""
        was_training = model.training
        model.eval()
        device = model_device(model)
        out: list[str] = []
        try:
            for part in chunks(list(rows), batch_size):
                prompts = [self.prompt_ids(r)[-self.max_length :] for r in part]
                enc = self.tokenizer.pad(
                    {"input_ids": prompts},
                    padding=True,
                    padding_side="left",
                    return_attention_mask=True,
                    return_tensors="pt",
                )
                gen = model.generate(
                    input_ids=enc["input_ids"].to(device),
                    attention_mask=enc["attention_mask"].to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    eos_token_id=self.tokenizer.eos_token_id,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
                new = gen[:, enc["input_ids"].shape[1] :].tolist()
                out += [s.strip() for s in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        finally:
            model.train(was_training)
        return out

    def exact_match(
        self, model: nn.Module, rows: Sequence[Conversation], max_new_tokens: int, batch_size: int
    ) -> float:
        """Share of rows whose greedy response equals the reference (whitespace-stripped)."""
        if not rows:
            raise ValueError("exact match over zero rows is undefined")
        preds = self.generate(model, rows, max_new_tokens, batch_size)
        return sum(p == r.response.strip() for p, r in zip(preds, rows, strict=True)) / len(rows)
