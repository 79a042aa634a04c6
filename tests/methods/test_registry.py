"""Registry names, paper aliases, default thresholds and option validation; FT's behaviour."""

from __future__ import annotations

import json
import random

import pytest
from support.methods import step_terms, task_ctx
from torch import nn

from migu.methods import (
    DERPP,
    EWC,
    FT,
    OSF,
    FTReplay,
    IncLoRA,
    LoRA,
    LoRADERPP,
    LoRAEWC,
    LoRALwF,
    LoRAReplay,
    LwF,
    OIncLoRA,
    get_method,
    get_method_class,
    list_methods,
)


def test_list_methods() -> None:
    assert list_methods() == [
        *("ft", "lora", "inclora", "olora", "lora_replay", "ft_replay"),
        *("ewc", "lora_ewc", "lwf", "lora_lwf", "derpp", "lora_derpp", "osf"),
        "das",
    ]


@pytest.mark.parametrize(
    ("name", "cls", "threshold"),
    [
        ("ft", FT, 0.7),
        ("FT", FT, 0.7),
        ("lora", LoRA, 0.7),
        ("LoRA", LoRA, 0.7),
        ("inclora", IncLoRA, 0.7),
        ("IncLoRA", IncLoRA, 0.7),
        ("olora", OIncLoRA, 0.1),
        ("OIncLoRA", OIncLoRA, 0.1),
        ("oinclora", OIncLoRA, 0.1),
        ("O-LoRA", OIncLoRA, 0.1),
        ("lora_replay", LoRAReplay, 0.4),
        ("LoRAReplay", LoRAReplay, 0.4),
        ("lorareplay", LoRAReplay, 0.4),
        ("ft_replay", FTReplay, 0.4),
        ("FTReplay", FTReplay, 0.4),
        ("ewc", EWC, 0.7),
        ("EWC", EWC, 0.7),
        ("lora_ewc", LoRAEWC, 0.7),
        ("LoRAEWC", LoRAEWC, 0.7),
        ("lwf", LwF, 0.7),
        ("LwF", LwF, 0.7),
        ("lora_lwf", LoRALwF, 0.7),
        ("derpp", DERPP, 0.4),
        ("DER++", DERPP, 0.4),
        ("lora_derpp", LoRADERPP, 0.4),
        ("LoRADER++", LoRADERPP, 0.4),
        ("osf", OSF, 0.7),
        ("OSF", OSF, 0.7),
    ],
)
def test_names_and_thresholds(name: str, cls: type, threshold: float) -> None:
    method = get_method(name)
    assert type(method) is cls
    assert get_method_class(name) is cls
    assert method.default_threshold == threshold
    assert method.name in list_methods()


def test_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown CL method 'gem'"):
        get_method("gem")


@pytest.mark.parametrize(
    ("name", "options", "bad"),
    [
        ("ft", {"r": 8}, "r"),
        ("lora", {"rank": 8}, "rank"),
        ("lora", {"r": 0}, "r"),
        ("lora", {"r": True}, "r"),
        ("lora", {"alpha": 0}, "alpha"),
        ("lora", {"dropout": 1.0}, "dropout"),
        ("lora", {"target_modules": []}, "target_modules"),
        ("inclora", {"target_modules": [""]}, "target_modules"),
        ("olora", {"lambda1": -0.1}, "lambda1"),
        ("olora", {"lambda2": float("nan")}, "lambda2"),
        ("lora_replay", {"replay_fraction": 0.0}, "replay_fraction"),
        ("ft_replay", {"replay_fraction": 1.5}, "replay_fraction"),
        ("ft_replay", {"replay_seed": -1}, "replay_seed"),
    ],
)
def test_bad_options_name_the_option(name: str, options: dict, bad: str) -> None:
    with pytest.raises(ValueError, match=f"'{bad}'"):
        get_method(name, **options)


def test_options_resolved_and_json_safe() -> None:
    method = get_method("OIncLoRA", r=4, target_modules=["q", "k"], lambda2=0.1)
    assert (method.r, method.target_modules, method.lambda1, method.lambda2) == (4, ("q", "k"), 0.5, 0.1)
    assert method.options == {
        "r": 4,
        "alpha": 32.0,
        "dropout": 0.05,
        "target_modules": ["q", "k"],
        "lambda1": 0.5,
        "lambda2": 0.1,
    }
    json.dumps(method.options)
    # keyword arguments work too, and each instance owns its state
    assert LoRA(r=2).r == 2
    a, b = get_method("lora_replay"), get_method("lora_replay")
    assert a._buffer is not b._buffer


def test_ft_trains_everything() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    model[0].weight.requires_grad_(False)
    ft = get_method("ft")
    assert ft.prepare_model(model, None) is model  # type: ignore[arg-type]
    ft.on_task_start(task_ctx(model, 0, "a"))
    assert all(p.requires_grad for p in model.parameters())
    rows = ["x", "y"]
    assert ft.training_examples(task_ctx(None, 0, "t", rows), random.Random(0)) == rows
    batch = {}
    assert step_terms(ft, model, 0, batch, None) == {}
    assert ft.state_dict() == {}
