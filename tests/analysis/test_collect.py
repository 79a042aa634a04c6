"""Choosing checkpoints, thresholds, layers and rows for an analysis (no model needed)."""

from __future__ import annotations

import pytest
from support.results import run_results

from migu.analysis.collect import (
    base_layer_name,
    checkpoint_indices,
    default_layer,
    layer_component,
    match_layer,
    resolve_threshold,
    run_label,
    sample_rows,
    short_layers,
)
from migu.analysis.magnitudes import pick_row

BERT = [
    f"bert.encoder.layer.{b}.{m}"
    for b in range(6)
    for m in (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    )
]


def test_default_layer_is_first_ffn_linear_of_last_block() -> None:
    assert default_layer(BERT) == "bert.encoder.layer.5.intermediate.dense"
    t5 = [
        "encoder.block.0.layer.1.DenseReluDense.wi",
        "encoder.block.0.layer.1.DenseReluDense.wo",
        "decoder.block.1.layer.0.SelfAttention.q",
        "decoder.block.1.layer.2.DenseReluDense.wi",
        "decoder.block.1.layer.2.DenseReluDense.wo",
    ]
    assert default_layer(t5) == "decoder.block.1.layer.2.DenseReluDense.wi"
    assert default_layer(["x.0.q_only"]) == "x.0.q_only"  # no FFN: the last layer


def test_match_layer() -> None:
    assert match_layer(BERT, "layer.5.intermediate.dense") == "bert.encoder.layer.5.intermediate.dense"
    assert match_layer(BERT, BERT[0]) == BERT[0]
    with pytest.raises(ValueError, match="ambiguous"):
        match_layer(BERT, "intermediate.dense")
    with pytest.raises(ValueError, match="matches none"):
        match_layer(BERT, "layer.9.intermediate.dense")


def test_layer_names_and_labels() -> None:
    assert base_layer_name("base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.task_1") == (
        "base_model.model.bert.encoder.layer.0.attention.self.query"
    )
    assert layer_component("m.bert.encoder.layer.0.attention.self.query.lora_B.default") == "qkv"
    assert layer_component(BERT[4]) == "ffn"
    assert short_layers(BERT[:2]) == ["0 attention.self.query", "0 attention.self.key"]
    both = ["encoder.block.0.layer.0.SelfAttention.q", "decoder.block.3.layer.2.DenseReluDense.wi"]
    assert short_layers(both) == ["enc 0 layer.0.SelfAttention.q", "dec 3 layer.2.DenseReluDense.wi"]


def test_checkpoint_indices() -> None:
    tasks = ["a", "b", "c"]
    assert checkpoint_indices("last", tasks) == [2, 2, 2]
    assert checkpoint_indices("last", tasks, finished=2) == [1, 1, 1]
    assert checkpoint_indices("own", tasks) == [0, 1, 2]
    assert checkpoint_indices("b", tasks) == [1, 1, 1]
    assert checkpoint_indices("0", tasks) == [0, 0, 0]
    with pytest.raises(ValueError, match="out of range"):
        checkpoint_indices(3, tasks)
    with pytest.raises(ValueError, match="'own' needs every task"):
        checkpoint_indices("own", tasks, finished=2)
    with pytest.raises(ValueError, match="use 'last', 'own'"):
        checkpoint_indices("final", tasks)


def test_threshold_resolution() -> None:
    assert resolve_threshold(run_results(migu=None)) == 0.7  # no MIGU: the paper's T
    assert resolve_threshold(run_results(migu={"threshold": 0.4})) == 0.4
    assert resolve_threshold(run_results(migu={"threshold": 0.0})) == 0.7  # T = 0 keeps every row
    assert resolve_threshold(run_results(migu={"threshold": 0.4}), 0.9) == 0.9
    assert resolve_threshold(run_results("olora", migu=None)) == 0.1  # the method's own paper T
    with pytest.raises(ValueError):
        resolve_threshold(run_results(), 1.0)
    with pytest.raises(ValueError, match="keeps every row"):
        resolve_threshold(run_results(), 0.0)
    assert run_label(run_results("ft", migu=None)) == "FT"
    assert run_label(run_results("lora", migu={"threshold": 0.7})) == "LoRA+MIGU (T=0.7)"


def test_row_sampling_is_seeded() -> None:
    rows = list(range(50))
    assert sample_rows(rows, 10, 0) == sample_rows(rows, 10, 0)
    assert sample_rows(rows, 10, 0) != sample_rows(rows, 10, 1)
    assert sample_rows(rows, 80, 0) == rows
    assert pick_row(rows, 3, 0) == pick_row(rows, 3, 0)
    assert len({pick_row(rows, i, 0) for i in range(50)}) == 50  # one permutation
