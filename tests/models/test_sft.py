"""SFTFamily: rendering, loss on the assistant's tokens only, overlong rows, packing, generation."""

from __future__ import annotations

import pytest
import torch
from support.models import tiny_llama, word_tokenizer

from migu.data.instructions import Conversation
from migu.models import ModelConfig, SFTFamily

IGNORE = -100
TEXT = "### Instruction: Response: System: add two numbers return the sum x y of a b please ok"


def _family(**kw) -> SFTFamily:
    tok = word_tokenizer(TEXT)
    model = tiny_llama(tok, max_positions=256)
    return SFTFamily(model, tok, ModelConfig(name="minilm", max_length=kw.pop("max_length", 64)), **kw)


def _row(user: str, answer: str) -> Conversation:
    return Conversation((("user", user), ("assistant", answer)), "t:0")


def test_plain_template_labels_only_the_response() -> None:
    fam = _family(template="plain")
    (enc,) = fam.encode([_row("add two numbers", "return the sum")])
    ids, labels = list(enc.input_ids), list(enc.labels)
    response = fam.tokenizer("return the sum", add_special_tokens=False)["input_ids"] + [
        fam.tokenizer.eos_token_id
    ]
    labelled = [i for i, v in zip(ids, labels, strict=True) if v != IGNORE]
    assert labelled == response  # the answer and EOS, nothing of the prompt or the headers
    assert labels[: len(ids) - len(response)] == [IGNORE] * (len(ids) - len(response))
    text = fam.tokenizer.decode(ids)
    assert "Instruction" in text and "Response" in text
    prompt = fam.prompt_ids(_row("add two numbers", "return the sum"))
    assert ids[: len(prompt)] == prompt  # generation sees exactly the training prompt


def test_chat_template_marks_every_assistant_turn() -> None:
    fam = _family()
    fam.tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant {% endif %}"
    )
    fam.use_chat = True
    turns = (("user", "add"), ("assistant", "sum"), ("user", "please"), ("assistant", "ok"))
    (enc,) = fam.encode([Conversation(turns, "t:0")])
    labelled = [i for i, v in zip(enc.input_ids, enc.labels, strict=True) if v != IGNORE]
    assert fam.tokenizer.decode(labelled).split() == ["sum", "ok"]


def test_overlong_rows_are_truncated_or_dropped_and_counted() -> None:
    long_prompt = " ".join(["add"] * 40)
    fam = _family(max_length=20, template="plain")
    out = fam.encode([_row(long_prompt, "sum"), _row("add", "return the sum x y a b " * 3)])
    assert fam.stats == {"rows": 2, "truncated": 1, "dropped": 1} and len(out) == 1
    assert len(out[0].input_ids) == 20
    fam = _family(max_length=20, template="plain", overlong="drop")
    with pytest.raises(ValueError, match=r"every one of 1 rows is longer than model\.max_length=20"):
        fam.encode([_row(long_prompt, "sum")])


def test_packing_fills_sequences_without_splitting_rows() -> None:
    fam = _family(max_length=40, template="plain", packing=True)
    rows = [_row("add", "sum")] * 6
    single = _family(max_length=40, template="plain").encode(rows[:1])[0]
    packs = fam.encode(rows)
    assert sum(len(p.input_ids) for p in packs) == 6 * len(single.input_ids)
    assert all(len(p.input_ids) <= 40 for p in packs) and len(packs) < 6


def test_loss_matches_a_hand_computed_next_token_nll() -> None:
    fam = _family(template="plain")
    batch = fam.collate(fam.encode([_row("add two", "sum"), _row("add", "return the sum")]))
    out = fam.forward(fam.model, batch)
    logits = fam.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    lp = torch.log_softmax(logits[:, :-1].float(), -1)
    tgt = batch["labels"][:, 1:]
    mask = tgt != IGNORE
    ref = -lp[mask].gather(-1, tgt[mask].unsqueeze(-1)).mean()
    torch.testing.assert_close(out.loss, ref)
    assert out.logits.shape[0] == int(mask.sum())


def test_exact_match_generation() -> None:
    fam = _family(template="plain")
    rows = [_row("add", "sum"), _row("add two", "ok")]
    preds = fam.generate(fam.model, rows, max_new_tokens=3, batch_size=2)
    assert len(preds) == 2 and all(isinstance(p, str) for p in preds)
    assert fam.generate(fam.model, rows, max_new_tokens=3, batch_size=1) == preds  # left padding
    assert 0.0 <= fam.exact_match(fam.model, rows, 3, 2) <= 1.0
