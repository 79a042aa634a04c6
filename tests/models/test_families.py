"""Every family on tiny random models: loss, learning, ranking, option restriction, padding, bf16, PEFT."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from support.examples import SENTIMENT, TOPIC, Ex, make_example
from support.models import GENERATIVE, KINDS

from migu import MIGUConfig, attach
from migu.engine.targets import component_of
from migu.models import EncoderFamily, ModelFamily

SHORT = make_example("sentiment", "great", "positive")
LONG = make_example(
    "topic",
    "the central bank raised interest rates again as markets slid for a third straight week",
    "Business",
)


def _target_tokens(fam: ModelFamily, batch: dict[str, torch.Tensor]) -> int:
    """Tokens the loss averages over: answer tokens (generative) or one per example (encoder)."""
    if isinstance(fam, EncoderFamily):
        return int(batch["labels"].numel())
    labels = batch["labels"] if fam.family == "seq2seq" else batch["labels"][:, 1:]
    return int((labels != -100).sum())


@pytest.mark.parametrize("kind", KINDS)
def test_loss_is_finite_and_backprops(kind: str, make_family: Any, toy_examples: list[Ex]) -> None:
    fam = make_family(kind)
    batch = fam.collate(toy_examples)
    assert all(isinstance(v, torch.Tensor) for v in batch.values())
    loss = fam.loss(fam.model, batch)
    assert loss.dim() == 0 and loss.dtype == torch.float32 and math.isfinite(loss.item())
    loss.backward()
    grads = [p.grad for p in fam.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        fam.model(**batch)  # a collated batch is also a valid set of keyword arguments for the model


@pytest.mark.parametrize("kind", KINDS)
def test_a_few_steps_reduce_the_loss(kind: str, make_family: Any, toy_examples: list[Ex]) -> None:
    fam = make_family(kind)
    batch = fam.collate(toy_examples)
    opt = torch.optim.AdamW(fam.model.parameters(), lr=5e-3)
    fam.model.train()
    losses = []
    for _ in range(12):
        loss = fam.loss(fam.model, batch)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("kind", KINDS)
def test_rank_predicts_only_options_and_restores_mode(
    kind: str, make_family: Any, toy_examples: list[Ex]
) -> None:
    fam = make_family(kind)
    fam.model.train()
    preds = fam.predict(fam.model, toy_examples, batch_size=3)
    assert len(preds) == len(toy_examples)
    assert all(p in ex.options for p, ex in zip(preds, toy_examples, strict=True))
    assert fam.model.training
    fam.model.eval()
    fam.predict(fam.model, toy_examples[:2])
    assert not fam.model.training
    assert fam.predict(fam.model, []) == []


@pytest.mark.parametrize("kind", KINDS)
def test_option_scores_shape(kind: str, make_family: Any, toy_examples: list[Ex]) -> None:
    fam = make_family(kind)
    with torch.no_grad():
        scores = fam.option_scores(fam.model, toy_examples, batch_size=5)
    assert [len(s) for s in scores] == [len(ex.options) for ex in toy_examples]
    assert all(math.isfinite(x) and x <= 0 for s in scores for x in s)  # log-probabilities


@pytest.mark.parametrize("kind", KINDS)
def test_padding_does_not_change_scores_or_loss(kind: str, make_family: Any) -> None:
    fam = make_family(kind)
    fam.model.eval()
    with torch.no_grad():
        alone = fam.option_scores(fam.model, [SHORT])[0]
        together = fam.option_scores(fam.model, [SHORT, LONG])[0]
        assert together == pytest.approx(alone, abs=1e-4)
        assert fam.predict(fam.model, [SHORT]) == fam.predict(fam.model, [SHORT, LONG])[:1]
        # The batch loss is a token-weighted mean: padding must not enter it.
        b_short, b_long, b_both = fam.collate([SHORT]), fam.collate([LONG]), fam.collate([SHORT, LONG])
        n_s, n_l = _target_tokens(fam, b_short), _target_tokens(fam, b_long)
        assert _target_tokens(fam, b_both) == n_s + n_l
        expected = (fam.loss(fam.model, b_short) * n_s + fam.loss(fam.model, b_long) * n_l) / (n_s + n_l)
        assert fam.loss(fam.model, b_both).item() == pytest.approx(expected.item(), abs=1e-4)


@pytest.mark.parametrize("kind", GENERATIVE)
def test_generate_mode(kind: str, make_family: Any, toy_examples: list[Ex]) -> None:
    fam = make_family(kind, eval_mode="generate", max_target_length=3)
    fam.model.eval()
    preds = fam.predict(fam.model, toy_examples, batch_size=3)
    assert len(preds) == len(toy_examples) and all(isinstance(p, str) and p == p.strip() for p in preds)
    # Batched generation (left padding for decoder-only) equals one-by-one generation.
    assert preds == [fam.predict(fam.model, [ex])[0] for ex in toy_examples]


@pytest.mark.parametrize("kind", GENERATIVE)
def test_generate_returns_off_label_text_as_is(kind: str, make_family: Any) -> None:
    fam = make_family(kind, eval_mode="generate", max_target_length=4)
    fam.model.eval()
    pred = fam.predict(fam.model, [SHORT])[0]  # an untrained model babbles
    with torch.no_grad():
        gen = fam.generate(fam.model, [SHORT])[0]
    assert pred == gen and pred not in SHORT.options


@pytest.mark.parametrize("kind", GENERATIVE)
def test_generative_targets(kind: str, make_family: Any) -> None:
    fam = make_family(kind)
    batch = fam.collate([SHORT, LONG])
    labels = batch["labels"]
    for row, ex in enumerate((SHORT, LONG)):
        answer = fam.answer_ids(ex.label)
        assert answer[-1] == fam.eos_id
        real = labels[row][labels[row] != -100].tolist()
        assert real == answer  # loss only on the answer (+EOS): prompt and padding are -100
    if fam.family == "seq2seq":
        assert torch.equal(batch["decoder_attention_mask"], (labels != -100).long())
    else:
        # The answer directly follows the prompt, right-padded.
        n_real = batch["attention_mask"].sum(dim=1)
        for row in range(2):
            last = int(n_real[row]) - 1
            assert labels[row, last] == fam.eos_id and batch["input_ids"][row, last] == fam.eos_id
            assert (labels[row, last + 1 :] == -100).all()


def test_causal_answer_tokenized_in_context(make_family: Any) -> None:
    fam = make_family("gpt2")
    prompt_ids = fam.tokenizer("Answer:", add_special_tokens=False)["input_ids"]
    joined = fam.tokenizer("Answer: Business", add_special_tokens=False)["input_ids"]
    assert prompt_ids + fam.answer_ids("Business")[:-1] == joined


def test_encoder_never_predicts_a_non_option(make_family: Any) -> None:
    fam = make_family("bert")
    fam.model.eval()
    sports = fam.label_space.index("Sports")
    with torch.no_grad():
        fam.model.head.proj.bias[sports] = 1e4  # "Sports" dominates every unrestricted logit
        batch = fam.collate([SHORT])
        free = fam.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert free.argmax(-1).item() == sports
        restricted = fam.model(**batch).logits
    assert torch.isinf(restricted[0, [fam.label_space.index(t) for t in TOPIC]]).all()
    assert fam.predict(fam.model, [SHORT])[0] in SENTIMENT
    assert math.isfinite(fam.loss(fam.model, batch).item())  # -inf non-options do not poison the loss
    assert fam.predict(fam.model, [LONG]) == ["Sports"]  # ...but it wins where it is an option


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_encoder_loss_is_ce_over_options_only(kind: str, make_family: Any) -> None:
    fam = make_family(kind, pooling="cls")
    fam.model.eval()
    batch = fam.collate([SHORT])
    with torch.no_grad():
        out = fam.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = out.logits[0, [fam.label_space.index(s) for s in SENTIMENT]]
        expected = -torch.log_softmax(logits, -1)[SENTIMENT.index(SHORT.label)]
        assert fam.loss(fam.model, batch).item() == pytest.approx(expected.item(), abs=1e-5)


def test_encoder_module_names(make_family: Any) -> None:
    fam = make_family("bert")
    names = dict(fam.model.named_modules())
    assert "bert.encoder.layer.0.attention.self.query" in names
    assert "bert.pooler" not in names  # pooled by us: no unused weights under DDP
    assert component_of("classifier.proj") is None
    masker = attach(fam.model, MIGUConfig(threshold=0.5))
    try:
        targets = [t.name for t in masker.targets]
        assert targets and not any(n.startswith("classifier") for n in targets)
    finally:
        masker.detach()
    assert fam.spec.head_modules == ("classifier",) and fam.spec.lora_target_modules == ("query", "value")


@pytest.mark.parametrize(
    ("kind", "targets", "task_type"),
    [
        ("t5", ("q", "v"), "SEQ_2_SEQ_LM"),
        ("llama", ("q_proj", "v_proj"), "CAUSAL_LM"),
        ("gpt2", ("c_attn",), "CAUSAL_LM"),
        ("roberta", ("query", "value"), None),
    ],
)
def test_spec(kind: str, targets: tuple[str, ...], task_type: str | None, make_family: Any) -> None:
    spec = make_family(kind).spec
    assert spec.lora_target_modules == targets and spec.task_type == task_type


@pytest.mark.parametrize("kind", KINDS)
def test_works_through_a_peft_wrapper(kind: str, make_family: Any, toy_examples: list[Ex]) -> None:
    fam = make_family(kind)
    spec = fam.spec
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=list(spec.lora_target_modules),
        modules_to_save=list(spec.head_modules) or None,
        task_type=spec.task_type,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT notes GPT-2's Conv1D layout
        model = get_peft_model(fam.model, lora)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    masker = attach(model, MIGUConfig(threshold=0.5), opt)
    try:
        batch = fam.collate(toy_examples)
        loss = fam.loss(model, batch)
        loss.backward()
        masker.apply()
        opt.step()
        assert math.isfinite(loss.item())
        lora_grads = [p.grad for n, p in model.named_parameters() if "lora_" in n and p.grad is not None]
        assert lora_grads
    finally:
        masker.detach()
    preds = fam.predict(model, toy_examples)
    assert all(p in ex.options for p, ex in zip(preds, toy_examples, strict=True))


@pytest.mark.parametrize("kind", KINDS)
def test_bf16(kind: str, make_family: Any, toy_examples: list[Ex]) -> None:
    fam = make_family(kind, dtype="bf16")
    assert all(p.dtype == torch.bfloat16 for p in fam.model.parameters())
    loss = fam.loss(fam.model, fam.collate(toy_examples[:4]))
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    loss.backward()
    preds = fam.predict(fam.model, toy_examples[:4])
    assert all(p in ex.options for p, ex in zip(preds, toy_examples[:4], strict=True))


def test_bf16_generate(make_family: Any) -> None:
    fam = make_family("llama", dtype="bf16", eval_mode="generate", max_target_length=2)
    assert len(fam.predict(fam.model, [SHORT, LONG])) == 2


def test_generate_warns_when_labels_cannot_fit(make_family: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="migu.models"):
        make_family(
            "t5",
            tokenizer="minilm",
            eval_mode="generate",
            max_target_length=1,
            label_space=("very long label",),
        )
    assert "max_target_length=1" in caplog.text
