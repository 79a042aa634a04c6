"""LoRA: the model keeps its class and call signature; base weights never change, LoRA and heads do."""

from __future__ import annotations

import json

import pytest
import torch
from peft.tuners.lora import LoraLayer
from support.methods import (
    ENCODER_SPEC,
    FAMILIES,
    logits,
    run_task,
    snapshot,
    t5_batch,
    task_ctx,
    tiny_encoder,
    tiny_t5,
    trainable,
)

from migu.methods import LoRA, get_method
from migu.models import ModelSpec


@pytest.mark.parametrize("family", list(FAMILIES))
def test_prepare_model_keeps_class_kwargs_and_output(family: str) -> None:
    make, batch_fn, spec = FAMILIES[family]
    model, batch = make(), batch_fn()
    before = logits(model, batch)
    cls = type(model)
    method = get_method("lora")
    assert method.prepare_model(model, spec) is model
    assert type(model) is cls
    # B starts at zero, so the wrapped model, called with the family's own kwargs, gives the same output
    assert torch.equal(logits(model, batch), before)
    assert model(**batch).loss is not None


@pytest.mark.parametrize("family", list(FAMILIES))
def test_base_frozen_lora_and_heads_train(family: str) -> None:
    make, batch_fn, spec = FAMILIES[family]
    model = make()
    method = LoRA()
    method.prepare_model(model, spec)
    start = snapshot(model)
    lora_params = {n: p for n, p in model.named_parameters() if "lora_" in n}
    heads = {n for n in start if n.startswith("classifier.")}
    assert lora_params and all(".default." in n for n in lora_params)

    for i in range(2):
        run_task(method, model, i, batch_fn(seed=i))
        expected = set(lora_params) | heads
        method.on_task_start(task_ctx(model, i, f"task{i}"))
        assert trainable(model) == expected

    after = dict(model.named_parameters())
    for n, value in start.items():
        changed = not torch.equal(after[n], value)
        if "lora_B" in n or n in heads:
            assert changed, n
        elif "lora_" not in n:
            assert not changed, f"base weight {n} moved"
    assert all(after[n] is p for n, p in lora_params.items())  # one adapter, the same across tasks
    assert method.adapters == ["default"]


def test_heads_trainable_in_encoder_family() -> None:
    model = tiny_encoder()
    LoRA().prepare_model(model, ENCODER_SPEC)
    assert model.classifier.weight.requires_grad and model.classifier.bias.requires_grad
    assert not model.embed.weight.requires_grad


def test_target_modules_option_overrides_spec() -> None:
    model = tiny_encoder()
    LoRA(target_modules=["key"]).prepare_model(model, ENCODER_SPEC)
    names = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    assert names == ["layer.0.attention.key", "layer.1.attention.key"]


def test_unknown_head_is_an_error() -> None:
    spec = ModelSpec(lora_target_modules=("query",), head_modules=("nope",))
    with pytest.raises(ValueError, match="'nope'"):
        LoRA().prepare_model(tiny_encoder(), spec)


def test_seq2seq_generate_still_works() -> None:
    model, batch = tiny_t5(), t5_batch()
    method = LoRA()
    method.prepare_model(model, FAMILIES["t5"][2])
    run_task(method, model, 0, batch)
    model.eval()
    out = model.generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=2
    )
    assert out.shape[0] == batch["input_ids"].shape[0]


def test_state_round_trip_and_structure_check() -> None:
    method = LoRA()
    method.prepare_model(tiny_t5(), FAMILIES["t5"][2])
    state = json.loads(json.dumps(method.state_dict()))
    method.load_state_dict(state)
    with pytest.raises(ValueError, match="adapters"):
        method.load_state_dict({"adapters": ["default", "other"]})
    with pytest.raises(RuntimeError, match="prepare_model"):
        LoRA().on_task_start(task_ctx(tiny_t5(), 0, "a"))
