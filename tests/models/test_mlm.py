"""The masked-LM family: masking, the masked-position head, MIGU's statistic, end-task copies."""

from __future__ import annotations

import pytest
import torch
from support.engine_reference import capture_inputs, ref_stat, rows_of
from support.models import TINY_VOCAB, tiny_config

import migu
from migu.models import ModelConfig, build_mlm_family


def _family(tokenizer_dir: str, kind: str = "bert"):
    torch.manual_seed(0)
    return build_mlm_family(ModelConfig(random_init=tiny_config(kind, TINY_VOCAB), tokenizer=tokenizer_dir))


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_masking_fraction_and_special_tokens(tiny_tokenizer_dir: str, kind: str) -> None:
    fam = _family(tiny_tokenizer_dir, kind)
    g = torch.Generator().manual_seed(0)
    blocks = []
    for _ in range(64):
        ids = torch.randint(10, TINY_VOCAB, (32,), generator=g).tolist()
        ids[0], ids[16] = fam.tokenizer.cls_token_id, fam.tokenizer.sep_token_id  # special tokens inside
        special = [int(i in (0, 16)) for i in range(32)]
        blocks.append({"input_ids": ids, "special_tokens_mask": special})
    torch.manual_seed(1)
    batch = fam.collate(blocks)
    labels = batch["labels"]
    masked = labels != -100
    assert abs(masked.float().mean().item() - 0.15 * 30 / 32) < 0.03  # 15% of the 30 ordinary tokens
    assert not masked[:, [0, 16]].any()  # special tokens are never masked
    orig = torch.tensor([b["input_ids"] for b in blocks])
    assert torch.equal(labels[masked], orig[masked])  # labels are the original tokens
    share = (batch["input_ids"][masked] == fam.tokenizer.mask_token_id).float().mean().item()
    assert 0.7 < share < 0.9  # 80% of the chosen tokens become [MASK]


def test_loss_at_masked_positions_equals_the_full_head(tiny_tokenizer_dir: str) -> None:
    fam = _family(tiny_tokenizer_dir)
    model = fam.model.eval()
    ids = torch.randint(10, TINY_VOCAB, (2, 12))
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 7] = 15, 20
    out = fam.forward(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    full = model(input_ids=ids).logits  # [B, L, V]: every position's logits
    ref = torch.nn.functional.cross_entropy(full.reshape(-1, full.shape[-1]), labels.reshape(-1))
    assert out.logits.shape == (2, full.shape[-1])
    torch.testing.assert_close(out.loss, ref)
    # the decoder stays tied to the word embeddings
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


def test_migu_in_the_mlm_stage_excludes_padding_and_not_the_head(tiny_tokenizer_dir: str) -> None:
    fam = _family(tiny_tokenizer_dir)
    masker = migu.attach(fam.model, migu.MIGUConfig(threshold=0.5))
    names = [t.name for t in masker.targets]
    assert names and not any(n.startswith("cls.") for n in names)  # the MLM head is not a default target
    blocks = [
        {"input_ids": [2] + [11 + i] * 9 + [3], "special_tokens_mask": [1] + [0] * 9 + [1]} for i in range(3)
    ]
    blocks.append({"input_ids": [2, 12, 13, 3], "special_tokens_mask": [1, 0, 0, 1]})  # shorter: padded
    torch.manual_seed(0)
    batch = fam.collate(blocks)
    assert batch["attention_mask"][-1].sum() == 4
    name = "bert.encoder.layer.1.intermediate.dense"
    module = dict(fam.model.named_modules())[name]
    with capture_inputs(fam.model, [name]) as xs:
        fam.forward(fam.model, batch).loss.backward()
    ref = ref_stat(rows_of(module.weight), xs[name], [batch["attention_mask"]])
    torch.testing.assert_close(masker.statistics()[name].double(), ref, rtol=1e-4, atol=1e-7)


def test_end_task_family_copies_the_encoder(tiny_tokenizer_dir: str) -> None:
    fam = _family(tiny_tokenizer_dir)
    end = fam.end_task_family(["a", "b", "c"], fam.config)
    assert end.model.backbone is not fam.model.encoder  # a copy: end-task training leaves the MLM model
    for (n, p), (_, q) in zip(
        end.model.backbone.named_parameters(), fam.model.encoder.named_parameters(), strict=True
    ):
        assert torch.equal(p, q), n
    assert end.model.head.proj.out_features == 3


def test_mlm_needs_a_masked_lm_model(tiny_tokenizer_dir: str) -> None:
    with pytest.raises(ValueError, match="no masked-LM head class in transformers"):
        build_mlm_family(ModelConfig(random_init=tiny_config("t5", TINY_VOCAB), tokenizer=tiny_tokenizer_dir))
