"""ModelConfig validation, name resolution, family detection and build-time errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.examples import LABEL_SPACE, make_example
from support.models import tiny_config
from transformers import AutoConfig

from migu.models import HUB_ALIASES, ModelConfig, build_family, detect_family, minilm_dir, resolve_model_name


def test_defaults_are_valid_and_point_at_packaged_minilm() -> None:
    cfg = ModelConfig()
    assert cfg.name == "minilm" and cfg.family == "auto" and cfg.eval_mode == "rank"
    path = Path(resolve_model_name(cfg.name))
    assert path == minilm_dir() and (path / "config.json").is_file()
    assert cfg.tokenizer_source == str(path)


def test_hub_aliases_resolve() -> None:
    assert resolve_model_name("t5-large") == "google-t5/t5-large" == HUB_ALIASES["t5-large"]
    assert resolve_model_name("org/some-model") == "org/some-model"  # hub ids pass through untouched
    ModelConfig(name="google-t5/t5-large")  # syntactically fine; nothing is downloaded here


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", ""),
        ("name", "not a model!"),
        ("name", "./no/such/model/dir"),
        ("name", "/no/such/dir"),
        ("family", "decoder"),
        ("max_length", 0),
        ("max_length", True),
        ("max_length", "256"),
        ("max_target_length", 0),
        ("eval_mode", "greedy"),
        ("dtype", "fp16"),
        ("pooling", "max"),
        ("random_init", {"hidden_size": 8}),
        ("random_init", "t5"),
        ("tokenizer", ""),
        ("tokenizer", "/no/such/tokenizer"),
    ],
)
def test_bad_field_raises_naming_it(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{field: value})


def test_unknown_random_model_type() -> None:
    with pytest.raises(ValueError, match="random_init"):
        build_family(ModelConfig(random_init={"model_type": "no-such-arch"}), LABEL_SPACE)


def test_local_dir_without_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot load the model"):
        build_family(ModelConfig(name=str(tmp_path)), LABEL_SPACE)


@pytest.mark.parametrize(
    ("kind", "family"),
    [("bert", "encoder"), ("roberta", "encoder"), ("t5", "seq2seq"), ("llama", "causal"), ("gpt2", "causal")],
)
def test_detect_family(kind: str, family: str) -> None:
    kwargs = tiny_config(kind)
    assert detect_family(AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)) == family


def test_encoder_cannot_generate() -> None:
    with pytest.raises(ValueError, match="eval_mode"):
        build_family(ModelConfig(random_init=tiny_config("bert"), eval_mode="generate"), LABEL_SPACE)


def test_family_mismatch() -> None:
    with pytest.raises(ValueError, match="family"):
        build_family(ModelConfig(random_init=tiny_config("bert"), family="seq2seq"), LABEL_SPACE)


def test_empty_label_space() -> None:
    with pytest.raises(ValueError, match="label_space"):
        build_family(ModelConfig(random_init=tiny_config("bert")), [])


def test_tokenizer_larger_than_vocab() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        build_family(ModelConfig(random_init=tiny_config("bert", vocab_size=100)), LABEL_SPACE)


def test_encoder_option_outside_label_space(make_family: Any) -> None:
    fam = make_family("bert", label_space=("positive", "negative"))
    with pytest.raises(ValueError, match="label space"):
        fam.collate([make_example("topic", "goal!", "Sports")])


def test_label_not_among_options(make_family: Any) -> None:
    fam = make_family("t5")
    ex = make_example("sentiment", "fine", "positive")
    bad = type(ex)(ex.task, ex.input, ex.sentence, "Sports", ex.options)
    with pytest.raises(ValueError, match="not among its options"):
        fam.collate([bad])
