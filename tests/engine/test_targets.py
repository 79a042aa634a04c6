"""Which weights MIGU masks (issue 2, point 3): exact default sets per architecture, components,
"all-linear", explicit patterns, a clear error when nothing matches, and frozen layers skipped."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import migu

# Expected default targets per block, written out by hand: (prefix of block i, {suffix: component}).
_BERT_LIKE = {
    "attention.self.query": "qkv",
    "attention.self.key": "qkv",
    "attention.self.value": "qkv",
    "attention.output.dense": "o",
    "intermediate.dense": "ffn",
    "output.dense": "ffn",
}
_LLAMA = {
    "self_attn.q_proj": "qkv",
    "self_attn.k_proj": "qkv",
    "self_attn.v_proj": "qkv",
    "self_attn.o_proj": "o",
    "mlp.gate_proj": "ffn",
    "mlp.up_proj": "ffn",
    "mlp.down_proj": "ffn",
}
_GPT2 = {"attn.c_attn": "qkv", "attn.c_proj": "o", "mlp.c_fc": "ffn", "mlp.c_proj": "ffn"}
_T5_ENC = {
    "layer.0.SelfAttention.q": "qkv",
    "layer.0.SelfAttention.k": "qkv",
    "layer.0.SelfAttention.v": "qkv",
    "layer.0.SelfAttention.o": "o",
    "layer.1.DenseReluDense.wi": "ffn",
    "layer.1.DenseReluDense.wo": "ffn",
}
_T5_DEC = {
    "layer.0.SelfAttention.q": "qkv",
    "layer.0.SelfAttention.k": "qkv",
    "layer.0.SelfAttention.v": "qkv",
    "layer.0.SelfAttention.o": "o",
    "layer.1.EncDecAttention.q": "qkv",
    "layer.1.EncDecAttention.k": "qkv",
    "layer.1.EncDecAttention.v": "qkv",
    "layer.1.EncDecAttention.o": "o",
    "layer.2.DenseReluDense.wi": "ffn",
    "layer.2.DenseReluDense.wo": "ffn",
}


def _expected(kind: str, head: str) -> dict[str, str]:
    """{module name: component} of every default target, for the 2-layer tiny models."""
    blocks: list[tuple[str, dict[str, str]]]
    if kind in ("bert", "roberta"):
        base = f"{kind}." if head != "base" else ""
        blocks = [(f"{base}encoder.layer.{i}.", _BERT_LIKE) for i in range(2)]
    elif kind == "llama":
        blocks = [(f"model.layers.{i}.", _LLAMA) for i in range(2)]
    elif kind == "gpt2":
        blocks = [(f"transformer.h.{i}.", _GPT2) for i in range(2)]
    elif kind == "t5":
        blocks = [(f"encoder.block.{i}.", _T5_ENC) for i in range(2)]
        blocks += [(f"decoder.block.{i}.", _T5_DEC) for i in range(2)]
    else:
        raise AssertionError(kind)
    return {prefix + suffix: comp for prefix, table in blocks for suffix, comp in table.items()}


_MODELS = [
    ("t5", "seq2seq-lm"),
    ("bert", "seq-cls"),
    ("bert", "masked-lm"),
    ("bert", "base"),
    ("roberta", "seq-cls"),
    ("roberta", "masked-lm"),
    ("llama", "causal-lm"),
    ("gpt2", "causal-lm"),
]


def _linear_names(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, nn.Linear | Conv1D)}


@pytest.mark.parametrize(("kind", "head"), _MODELS)
def test_default_targets_are_exactly_qkv_o_ffn(tiny_model, kind, head) -> None:
    model = tiny_model(kind, head=head)
    names = [t.name for t in migu.attach(model).targets]
    assert len(names) == len(set(names))
    expected = _expected(kind, head)
    assert set(names) == set(expected)
    # Everything else is left alone: heads, poolers, classifiers, lm_head (and non-linears).
    assert {"lm_head", "classifier", "bert.pooler.dense", "pooler.dense", "classifier.out_proj"}.isdisjoint(
        names
    )
    assert _linear_names(model) - set(names), "the model has non-target linears (heads) to exclude"


def test_gated_t5_ffn(tiny_model) -> None:
    model = tiny_model("t5", head="seq2seq-lm", feed_forward_proj="gated-gelu")
    names = {t.name for t in migu.attach(model).targets}
    assert {
        "encoder.block.0.layer.1.DenseReluDense.wi_0",
        "encoder.block.0.layer.1.DenseReluDense.wi_1",
    } <= names
    assert "decoder.block.1.layer.2.DenseReluDense.wo" in names
    assert len(names) == 2 * 7 + 2 * 11


@pytest.mark.parametrize(
    ("kind", "head"), [("t5", "seq2seq-lm"), ("bert", "seq-cls"), ("llama", "causal-lm")]
)
@pytest.mark.parametrize("components", [("qkv",), ("o",), ("ffn",), ("qkv", "o"), ("o", "ffn")])
def test_components_subset(tiny_model, kind, head, components) -> None:
    model = tiny_model(kind, head=head)
    names = {t.name for t in migu.attach(model, migu.MIGUConfig(components=components)).targets}
    assert names == {n for n, c in _expected(kind, head).items() if c in components}


@pytest.mark.parametrize(
    ("kind", "head"), [("gpt2", "causal-lm"), ("llama", "causal-lm"), ("t5", "seq2seq-lm")]
)
def test_all_linear_includes_lm_head(tiny_model, kind, head) -> None:
    model = tiny_model(kind, head=head)
    masker = migu.attach(model, migu.MIGUConfig(targets="all-linear"))
    names = {t.name for t in masker.targets}
    assert "lm_head" in names
    assert names == _linear_names(model)
    lm = next(t for t in masker.targets if t.name == "lm_head")
    assert lm.d_out == model.config.vocab_size


def test_all_linear_on_a_classifier_includes_pooler_and_classifier(tiny_model) -> None:
    model = tiny_model("bert", head="seq-cls")
    names = {t.name for t in migu.attach(model, migu.MIGUConfig(targets="all-linear")).targets}
    assert {"bert.pooler.dense", "classifier"} <= names
    assert names == _linear_names(model)


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (["bert.encoder.layer.0.attention.self.query"], {"bert.encoder.layer.0.attention.self.query"}),
        (["attention.self.query"], {f"bert.encoder.layer.{i}.attention.self.query" for i in range(2)}),
        (["*.intermediate.dense"], {f"bert.encoder.layer.{i}.intermediate.dense" for i in range(2)}),
        (
            ["bert.encoder.layer.1.*"],
            {f"bert.encoder.layer.1.{s}" for s in _BERT_LIKE},
        ),
        (
            ["classifier", "value"],
            {"classifier"} | {f"bert.encoder.layer.{i}.attention.self.value" for i in range(2)},
        ),
    ],
)
def test_explicit_name_patterns(tiny_model, patterns, expected) -> None:
    model = tiny_model("bert", head="seq-cls")
    names = {t.name for t in migu.attach(model, migu.MIGUConfig(targets=patterns)).targets}
    assert names == expected


@pytest.mark.parametrize("patterns", [["nonexistent"], ["uery"], ["embeddings.word_embeddings"]])
def test_no_match_raises_a_clear_value_error(tiny_model, patterns) -> None:
    model = tiny_model("bert", head="seq-cls")
    with pytest.raises(ValueError, match="no target layers") as info:
        migu.attach(model, migu.MIGUConfig(targets=patterns))
    assert "bert.encoder.layer.0.attention.self.query" in str(info.value)  # lists what exists


def test_default_targets_on_a_model_without_blocks_raise() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="all-linear"):
        migu.attach(model)
    assert len(migu.attach(model, migu.MIGUConfig(targets="all-linear")).targets) == 2


def test_layers_without_gradient_are_skipped(tiny_model, make_batch) -> None:
    model = tiny_model("bert", head="seq-cls")
    model.bert.encoder.layer[0].requires_grad_(False)
    masker = migu.attach(model, migu.MIGUConfig(threshold=0.5))
    layer0 = {t.name for t in masker.targets if ".layer.0." in t.name}
    layer1 = {t.name for t in masker.targets if ".layer.1." in t.name}
    assert len(layer0) == len(layer1) == 6  # frozen layers are still resolved, just never masked
    batch = make_batch(2, 5, lengths=[5, 3])
    model(**batch, labels=torch.tensor([0, 1])).loss.backward()
    stats = masker.statistics()
    assert all(torch.all(stats[n] == 0) for n in layer0)  # never measured
    assert all(torch.all(stats[n] > 0) for n in layer1)
    masks = masker.apply()
    assert set(masks) == layer1
    for t in masker.targets:
        if t.name in layer0:
            assert t.weight.grad is None
        else:
            assert torch.all(t.weight.grad[~masks[t.name]] == 0)
