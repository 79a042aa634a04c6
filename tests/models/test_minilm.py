"""The packaged all-MiniLM-L6-v2 loads offline as the default encoder-family model."""

from __future__ import annotations

import math

import torch
from support.examples import LABEL_SPACE, TOY_ROWS, make_example

from migu.models import EncoderFamily, ModelConfig, build_family


def test_packaged_minilm_loads_and_runs() -> None:
    fam = build_family(ModelConfig(), LABEL_SPACE)
    assert isinstance(fam, EncoderFamily) and fam.model_type == "bert"
    assert fam.model.backbone.config.num_hidden_layers == 6 and fam.model.backbone.config.hidden_size == 384
    assert all(p.dtype == torch.float32 for p in fam.model.parameters())
    examples = [make_example(*row) for row in TOY_ROWS[:4]]
    loss = fam.loss(fam.model, fam.collate(examples))
    assert math.isfinite(loss.item())
    preds = fam.predict(fam.model, examples)
    assert all(p in ex.options for p, ex in zip(preds, examples, strict=True))
    # Pretrained weights (not a random init): the embeddings carry the checkpoint's values.
    emb = fam.model.backbone.embeddings.word_embeddings.weight
    assert emb.shape == (30522, 384) and emb.std().item() > 0.03
