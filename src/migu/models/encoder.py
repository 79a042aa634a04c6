"""Encoder family (BERT, RoBERTa, MiniLM): a transformer encoder plus one shared label head.

The head is a single linear layer over the union of every task's label strings, so no task id
is needed; training and prediction only compare the current example's options (other labels'
logits are set to -inf), which is how a task-label-free encoder stays comparable to ranking the
options with a generative model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import SequenceClassifierOutput

from .base import ExampleLike, ModelFamily, chunks, lora_targets_for, model_device, to_device
from .config import ModelConfig
from .spec import FamilyOutput, ModelSpec

log = logging.getLogger(__name__)

HEAD_NAME = "classifier"  # outside every numbered block: MIGU's default targets never match it


class LabelHead(nn.Module):
    """Dropout and one linear layer from the pooled representation to every label of the run."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, init_std: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden_size, num_labels)
        nn.init.normal_(self.proj.weight, std=init_std)
        nn.init.zeros_(self.proj.bias)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.proj(self.dropout(pooled))


class EncoderClassifier(nn.Module):
    """Encoder + shared label head in one module, so one keyword call gives loss and logits.

    The encoder sits under its Hugging Face prefix (``bert``, ``roberta``, ...) as in
    ``*ForSequenceClassification``, so its modules keep HF's names
    (``bert.encoder.layer.0.attention.self.query``); the head is ``classifier.proj``.
    """

    def __init__(self, encoder: PreTrainedModel, num_labels: int, pooling: str) -> None:
        super().__init__()
        prefix = getattr(encoder, "base_model_prefix", "") or "encoder"
        if prefix == HEAD_NAME:
            prefix = "encoder"
        self.backbone_name = prefix
        self.add_module(prefix, encoder)
        self.config = encoder.config
        self.pooling = pooling
        hidden = int(encoder.config.hidden_size)
        dropout = getattr(encoder.config, "classifier_dropout", None)
        if dropout is None:
            dropout = getattr(encoder.config, "hidden_dropout_prob", 0.1)
        init_std = float(getattr(encoder.config, "initializer_range", 0.02))
        self.add_module(HEAD_NAME, LabelHead(hidden, num_labels, float(dropout), init_std))

    @property
    def backbone(self) -> PreTrainedModel:
        """The wrapped Hugging Face encoder."""
        return getattr(self, self.backbone_name)

    @property
    def head(self) -> LabelHead:
        """The shared label head."""
        return getattr(self, HEAD_NAME)

    def pool(self, hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
        """[CLS] vector, or the mean over real (non-padding) tokens."""
        if self.pooling == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            return hidden.mean(dim=1)
        m = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        option_mask: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> SequenceClassifierOutput:
        """Logits over the label space (fp32; -inf outside ``option_mask``) and the CE loss if ``labels``."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = self.pool(hidden.float(), attention_mask).to(hidden.dtype)  # bf16: average in fp32
        logits = self.head(pooled).float()
        if option_mask is not None:
            logits = logits.masked_fill(~option_mask.bool(), float("-inf"))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


class EncoderFamily(ModelFamily):
    """Classification with an encoder: restricted argmax over the example's options."""

    family = "encoder"

    def __init__(
        self,
        model: EncoderClassifier,
        tokenizer: PreTrainedTokenizerBase,
        config: ModelConfig,
        label_space: Sequence[str],
        model_type: str,
    ) -> None:
        super().__init__(model, tokenizer, config, label_space, model_type)
        if config.eval_mode != "rank":
            raise ValueError(f"eval_mode={config.eval_mode!r}: the encoder family only supports 'rank'")
        self._index = {label: i for i, label in enumerate(self.label_space)}
        if tokenizer.pad_token_id is None:
            raise ValueError(f"tokenizer {config.tokenizer_source!r} has no pad token")
        max_pos = getattr(model.config, "max_position_embeddings", None)
        offset = 2 if model_type in ("roberta", "xlm-roberta", "camembert") else 0  # RoBERTa's padding_idx+1
        if isinstance(max_pos, int) and max_pos - offset < self._prompt_limit:
            log.warning(
                "max_length=%d exceeds the encoder's %d positions: clipped", self._prompt_limit, max_pos
            )
            self._prompt_limit = max_pos - offset

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(lora_target_modules=lora_targets_for(self.model_type), head_modules=(HEAD_NAME,))

    def _option_mask(self, examples: Sequence[ExampleLike]) -> Tensor:
        mask = torch.zeros(len(examples), len(self.label_space), dtype=torch.bool)
        for i, ex in enumerate(examples):
            for opt in ex.options:
                if opt not in self._index:
                    raise ValueError(
                        f"option {opt!r} of task {ex.task!r} is not in the run's label space "
                        f"({len(self.label_space)} labels): the shared head has no row for it"
                    )
                mask[i, self._index[opt]] = True
        return mask

    def _inputs(self, examples: Sequence[ExampleLike]) -> dict[str, Tensor]:
        ids = self.encode_prompts(examples, keep="head")
        input_ids, attention = self.pad_ids(ids)
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "option_mask": self._option_mask(examples),
        }

    def collate(self, examples: Sequence[ExampleLike]) -> dict[str, Tensor]:
        self.check_options(examples)
        batch = self._inputs(examples)
        batch["labels"] = torch.tensor([self._index[ex.label] for ex in examples], dtype=torch.long)
        return batch

    def forward(self, model: nn.Module, batch: dict[str, Tensor]) -> FamilyOutput:
        out = model(**to_device(batch, model_device(model)))
        return FamilyOutput(loss=out.loss, logits=out.logits)  # logits [B, n_labels], -inf off-option

    def option_scores(
        self, model: nn.Module, examples: Sequence[ExampleLike], batch_size: int = 32
    ) -> list[list[float]]:
        """Log-softmax over the example's options of the head's logits."""
        device = model_device(model)
        out: list[list[float]] = []
        for part in chunks(examples, batch_size):
            logits = model(**to_device(self._inputs(part), device)).logits
            logp = torch.log_softmax(logits, dim=-1).cpu()
            for i, ex in enumerate(part):
                out.append([float(logp[i, self._index[opt]]) for opt in ex.options])
        return out
