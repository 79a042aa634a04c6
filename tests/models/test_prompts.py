"""Prompt truncation: the sentence is shortened first, the instruction and "Answer:" survive."""

from __future__ import annotations

from typing import Any

import pytest
from support.examples import Ex, make_example

from migu.models import fit_prompt

LONG_SENTENCE = " ".join(["the market moved sideways while traders waited"] * 12)


def _synthetic(n: int = 20) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """ids 0..n-1; first and last special; token j covers chars [2j, 2j+1)."""
    ids = list(range(n))
    special = [1] + [0] * (n - 2) + [1]
    offsets = [(0, 0)] + [(2 * j, 2 * j + 1) for j in range(1, n - 1)] + [(0, 0)]
    return ids, special, offsets


def test_fit_prompt_keeps_short_prompts() -> None:
    ids, special, offsets = _synthetic()
    assert fit_prompt(ids, special, offsets, (10, 29), 20, "head") == ids


def test_fit_prompt_cuts_the_end_of_the_sentence_first() -> None:
    ids, special, offsets = _synthetic()
    span = (10, 29)  # tokens 5..14
    out = fit_prompt(ids, special, offsets, span, 15, "head")
    assert out == [*range(10), 15, 16, 17, 18, 19]
    assert fit_prompt(ids, special, offsets, span, 15, "tail") == out  # side only matters after the sentence


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        ("head", [0, 1, 2, 3, 4, 8, 9, 10, 11, 12, 13, 14, 15, 16, 19]),
        ("tail", [0, 3, 4, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]),
    ],
)
def test_fit_prompt_then_cuts_a_side_keeping_special_tokens(keep: str, expected: list[int]) -> None:
    ids, special, offsets = _synthetic()
    out = fit_prompt(ids, special, offsets, (10, 15), 15, keep)  # sentence = tokens 5..7: 3 of 5 needed
    assert out == expected and len(out) == 15


def test_fit_prompt_without_offsets_or_span() -> None:
    ids, special, _ = _synthetic()
    assert fit_prompt(ids, special, None, (10, 29), 10, "head") == [0, 1, 2, 3, 4, 5, 6, 7, 8, 19]
    assert fit_prompt(ids, special, None, None, 10, "tail") == [0, 11, 12, 13, 14, 15, 16, 17, 18, 19]


@pytest.mark.parametrize("kind", ["bert", "t5", "gpt2"])
def test_long_sentence_keeps_instruction_options_and_answer(kind: str, make_family: Any) -> None:
    fam = make_family(kind, tokenizer="minilm", max_length=40)
    ex = make_example("sentiment", LONG_SENTENCE, "negative")
    batch = fam.collate([ex, make_example("sentiment", "ok", "positive")])
    if kind == "gpt2":  # labels are -100 on the prompt and on padding
        prompt_len = int((batch["labels"][0] == -100).sum() - (batch["attention_mask"][0] == 0).sum())
    else:
        prompt_len = int(batch["attention_mask"][0].sum())
    assert prompt_len == 40
    text = fam.tokenizer.decode(batch["input_ids"][0, :prompt_len].tolist())
    assert text.startswith("[CLS] what is the sentiment of the following text?")
    assert "the market moved" in text  # the sentence is shortened, not dropped
    assert "option : positive, negative" in text.replace(" ,", ",")
    assert text.endswith("answer : [SEP]" if kind != "gpt2" else "answer :")  # causal drops the [SEP]


@pytest.mark.parametrize(("kind", "kept"), [("t5", "what is the"), ("gpt2", "answer :")])
def test_unlocatable_sentence_falls_back_to_a_side(kind: str, kept: str, make_family: Any) -> None:
    fam = make_family(kind, tokenizer="minilm", max_length=16)
    base = make_example("sentiment", LONG_SENTENCE, "negative")
    ex = Ex(base.task, base.input, "not in the prompt", base.label, base.options)
    ids = fam.encode_prompts(
        [ex], keep="tail" if kind == "gpt2" else "head", drop_trailing_special=kind == "gpt2"
    )[0]
    assert len(ids) == 16
    assert kept in fam.tokenizer.decode(ids)


def test_causal_prompt_limit_leaves_room_for_the_answer(make_family: Any) -> None:
    fam = make_family("gpt2", tokenizer="minilm", max_length=1000)  # tiny gpt2 has 256 positions
    longest = max(len(fam.answer_ids(lab)) for lab in fam.label_space)
    ex = make_example("sentiment", " ".join([LONG_SENTENCE] * 10), "negative")
    assert fam.collate([ex])["input_ids"].shape[1] <= 256
    assert fam._prompt_limit == 256 - longest


def test_sentence_is_located_before_the_final_answer() -> None:
    from migu.models.base import _sentence_span

    ex = Ex("t", "Is it an A?\nOption: yes, no \nA\nAnswer:", "A", "yes", ("yes", "no"))
    start, end = _sentence_span(ex)
    assert ex.input[start:end] == "A" and ex.input[end:] == "\nAnswer:"
    assert _sentence_span(Ex("t", "x\nAnswer:", "missing", "yes", ("yes",))) is None


def test_benchmark_example_type_fits(make_family: Any) -> None:
    data = pytest.importorskip("migu.data.cl_benchmark")
    prompt = "What is the sentiment?\nOption: positive, negative \nnice film\nAnswer:"
    ex = data.Example("sst", prompt, "nice film", "positive", ("positive", "negative"))
    fam = make_family("t5")
    assert fam.collate([ex])["input_ids"].shape[0] == 1
    assert fam.predict(fam.model, [ex])[0] in ex.options
