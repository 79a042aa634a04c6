"""Masked-LM family (continual pre-training): BERT/RoBERTa post-trained on domain corpora with MLM,
and the end-task classifiers finetuned from copies of the post-trained encoder.

The MLM head runs only at the masked positions (~15% of the tokens): Hugging Face's MLM models
compute every position's vocabulary logits, 6-7x more head FLOPs for the same loss. Batches come
from ``DataCollatorForLanguageModeling`` (80% [MASK], 10% random, 10% kept; special tokens never
masked), over fixed-length blocks of the corpus (``migu.data.corpus``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DataCollatorForLanguageModeling, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import MaskedLMOutput

from .base import lora_targets_for, model_device, to_device
from .config import ModelConfig
from .encoder import EncoderClassifier, EncoderFamily
from .spec import FamilyOutput, ModelSpec

log = logging.getLogger(__name__)

IGNORE = -100
_HEADS = ("cls", "lm_head")  # BERT's BertOnlyMLMHead, RoBERTa's RobertaLMHead


class MaskedLM(nn.Module):
    """An HF masked-LM model's encoder and head, with the head applied at masked positions only.

    The children keep the HF names (``bert``/``roberta`` and ``cls``/``lm_head``), so state-dict
    keys are those of ``*ForMaskedLM`` and MIGU's default targets (the blocks' Q/K/V/O and FFN)
    never include the head; the decoder stays tied to the word embeddings if it was.
    """

    def __init__(self, hf_model: PreTrainedModel) -> None:
        super().__init__()
        prefix = hf_model.base_model_prefix
        head = next((h for h in _HEADS if isinstance(getattr(hf_model, h, None), nn.Module)), None)
        if not prefix or head is None:
            raise ValueError(
                f"{type(hf_model).__name__} has no encoder + MLM head this family knows ({_HEADS})"
            )
        self.backbone_name, self.head_name = prefix, head
        self.add_module(prefix, getattr(hf_model, prefix))
        self.add_module(head, getattr(hf_model, head))
        self.config = hf_model.config

    @property
    def encoder(self) -> PreTrainedModel:
        """The post-trained encoder (``BertModel``/``RobertaModel``) that end tasks start from."""
        return getattr(self, self.backbone_name)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None
    ) -> MaskedLMOutput:
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state  # [B, L, H]
        head = getattr(self, self.head_name)
        if labels is None:
            return MaskedLMOutput(logits=head(hidden))  # [B, L, V]
        picked = labels != IGNORE  # [B, L] the masked positions
        logits = head(hidden[picked]).float()  # [N, V]: the head at masked positions only
        return MaskedLMOutput(loss=F.cross_entropy(logits, labels[picked]), logits=logits)


class MaskedLMFamily:
    """Trains a :class:`MaskedLM` on corpus blocks; builds end-task families from its encoder."""

    family = "masked_lm"

    def __init__(
        self, model: MaskedLM, tokenizer: PreTrainedTokenizerBase, config: ModelConfig, mlm_probability: float
    ) -> None:
        if tokenizer.mask_token is None:
            raise ValueError(f"tokenizer {config.tokenizer_source!r} has no mask token: MLM needs one")
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.model_type = str(model.config.model_type)
        self.collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=mlm_probability)

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(lora_target_modules=lora_targets_for(self.model_type))

    def collate(self, blocks: Sequence[dict[str, list[int]]]) -> dict[str, Tensor]:
        """Masked blocks: input_ids with [MASK]/random/kept tokens, labels -100 except at masked ones."""
        batch = self.collator([dict(b) for b in blocks])  # draws from torch's global RNG (seeded per stage)
        return {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "labels": batch["labels"],
        }

    def forward(self, model: nn.Module, batch: dict[str, Tensor]) -> FamilyOutput:
        out = model(**to_device(batch, model_device(model)))
        return FamilyOutput(loss=out.loss, logits=out.logits)  # logits [N masked, V]

    def end_task_family(self, labels: Sequence[str], config: ModelConfig) -> EncoderFamily:
        """A classifier on a COPY of the post-trained encoder with a new head over ``labels``."""
        encoder = copy.deepcopy(self.model.encoder)
        clf = EncoderClassifier(encoder, len(labels), config.pooling).to(model_device(self.model))
        return EncoderFamily(clf, self.tokenizer, config, list(labels), self.model_type)
