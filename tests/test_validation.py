"""``migu.validation``: the one validation helper, and every layer that uses it naming the field."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from migu.validation import (
    ConfigError,
    ValidationError,
    build_dataclass,
    check_bool,
    check_choice,
    check_int,
    check_list,
    check_number,
    check_strings,
    config_errors,
    invalid,
)


# ---------------------------------------------------------------------------- the message shape
def test_invalid_has_the_one_message_shape() -> None:
    err = invalid("train.lr", "a number > 0", "abc")
    assert isinstance(err, ValidationError) and isinstance(err, ValueError)
    assert str(err) == "train.lr must be a number > 0, got 'abc'"
    assert issubclass(ConfigError, ValidationError)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: check_int(0, "n", minimum=1), "n must be a positive integer, got 0"),
        (lambda: check_int(-1, "n", minimum=0), "n must be an integer >= 0, got -1"),
        (lambda: check_int(9, "n", maximum=8), "n must be an integer <= 8, got 9"),
        (lambda: check_int(9, "n", minimum=0, maximum=8), "n must be an integer in [0, 8], got 9"),
        (lambda: check_int("3", "n"), "n must be an integer, got '3'"),
        (lambda: check_int(0, "n", minimum=1, none=True), "n must be a positive integer or null, got 0"),
        (lambda: check_number(0, "x", low=0, low_open=True), "x must be a number > 0, got 0"),
        (lambda: check_number(-1, "x", low=0), "x must be a number >= 0, got -1"),
        (lambda: check_number(2, "x", high=1), "x must be a number <= 1, got 2"),
        (lambda: check_number(1, "x", low=0, high=1, high_open=True), "x must be a number in [0, 1), got 1"),
        (lambda: check_number(0, "x", low=0, high=1, low_open=True), "x must be a number in (0, 1], got 0"),
        (lambda: check_number("a", "x"), "x must be a number, got 'a'"),
        (lambda: check_number("a", "x", none=True), "x must be a number or null, got 'a'"),
        (lambda: check_bool(1, "b"), "b must be true or false, got 1"),
        (lambda: check_bool("yes", "b", none=True), "b must be true or false or null, got 'yes'"),
        (lambda: check_choice("c", "m", ("a", "b")), "m must be one of a, b, got 'c'"),
        (lambda: check_strings([], "s"), "s must be a non-empty list of non-empty strings, got []"),
        (
            lambda: check_list([1, 0], "k", lambda v, f: check_int(v, f, minimum=1), "positive integers"),
            "k must be a non-empty list of positive integers, got [1, 0]",
        ),
    ],
)
def test_exact_messages(call: Any, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        call()
    assert str(info.value) == message


# ---------------------------------------------------------------------------- the checks
@pytest.mark.parametrize("flag", [True, False])
def test_bools_are_not_integers_or_numbers(flag: bool) -> None:
    with pytest.raises(ValidationError, match=rf"n must be an integer, got {flag}"):
        check_int(flag, "n")
    with pytest.raises(ValidationError, match=rf"x must be a number, got {flag}"):
        check_number(flag, "x")
    assert check_bool(flag, "b") is flag


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_never_numbers(bad: float) -> None:
    with pytest.raises(ValidationError, match="x must be a number"):
        check_number(bad, "x")  # no bounds: NaN passes every comparison, so it must be refused first
    with pytest.raises(ValidationError, match="x must be a number >= 0"):
        check_number(bad, "x", low=0.0)


def test_ints_are_numbers_returned_as_float() -> None:
    value = check_number(3, "x", low=0)
    assert value == 3.0 and isinstance(value, float)
    assert check_int(3, "n", minimum=3, maximum=3) == 3
    with pytest.raises(ValidationError):
        check_int(3.0, "n")  # a float is not an integer, even a whole one


def test_bounds_open_and_closed() -> None:
    assert check_number(0, "x", low=0) == 0.0  # closed: the bound itself is in
    assert check_number(1, "x", high=1) == 1.0
    for kwargs in ({"low": 0, "low_open": True}, {"high": 0, "high_open": True}):
        with pytest.raises(ValidationError):
            check_number(0, "x", **kwargs)  # open: the bound is out
    assert check_number(1e-12, "x", low=0, low_open=True) == 1e-12
    assert check_int(1, "n", minimum=1) == 1
    with pytest.raises(ValidationError):
        check_int(0, "n", minimum=1)


def test_none_only_where_allowed() -> None:
    assert check_int(None, "n", none=True) is None
    assert check_number(None, "x", low=0, none=True) is None
    assert check_bool(None, "b", none=True) is None
    assert check_strings(None, "s", none=True) is None
    assert check_list(None, "l", check_int, "integers", none=True) is None
    for call in (
        lambda: check_int(None, "n"),
        lambda: check_number(None, "x"),
        lambda: check_bool(None, "b"),
        lambda: check_strings(None, "s"),
        lambda: check_list(None, "l", check_int, "integers"),
    ):
        with pytest.raises(ValidationError, match=r"got None$"):
            call()


def test_choices_are_compared_by_type() -> None:
    assert check_choice(1, "c", (0, 1, 2)) == 1
    with pytest.raises(ValidationError, match=r"c must be one of 0, 1, 2, got True"):
        check_choice(True, "c", (0, 1, 2))  # True == 1, but it is not the choice 1
    with pytest.raises(ValidationError, match=r"got 1\.0"):
        check_choice(1.0, "c", (0, 1, 2))
    with pytest.raises(ValidationError, match=r"got 1"):
        check_choice(1, "c", (True, False))


def test_strings_and_lists() -> None:
    assert check_strings("q", "s") == ("q",)  # one string alone where single
    assert check_strings(["q", "k"], "s") == ("q", "k")
    for bad in ("q", ["q", ""], ["q", 1], ("",)):
        with pytest.raises(ValidationError):
            check_strings(bad, "s", single=False)
    assert check_list([1, 2], "k", check_int, "integers") == (1, 2)
    assert check_list(3, "k", check_int, "integers", single=True) == (3,)
    assert check_list([0, 0.5], "f", check_number, "numbers") == (0.0, 0.5)
    for bad in ([], 3, "ab", [1, True]):
        with pytest.raises(ValidationError, match=r"k must be a non-empty list of integers"):
            check_list(bad, "k", check_int, "integers")


def test_config_errors_keeps_the_message_and_lets_other_errors_through() -> None:
    with pytest.raises(ConfigError, match=r"^n must be a positive integer, got 0$"), config_errors():
        check_int(0, "n", minimum=1)
    with pytest.raises(ConfigError, match="kept"), config_errors():
        raise ConfigError("kept")
    with pytest.raises(KeyError), config_errors():
        raise KeyError("not a validation error")


# ---------------------------------------------------------------------------- build_dataclass
@dataclass
class _Inner:
    rate: float = 0.5
    mode: Literal["a", "b"] = "a"

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate {self.rate} is out of range")


@dataclass
class _Named:
    steps: int = 1

    def __post_init__(self) -> None:
        check_int(self.steps, "named.steps", minimum=1)  # names its own dotted key


@dataclass
class _Outer:
    n: int = 1
    lr: float = 0.1
    flag: bool = False
    tags: tuple[str, ...] = ()
    inner: _Inner = field(default_factory=_Inner)
    named: _Named | None = None

    def __post_init__(self) -> None:
        check_int(self.n, "n", minimum=0)


def test_build_dataclass_coerces_and_builds_nested_sections() -> None:
    built = build_dataclass(_Outer, {"n": 2, "lr": 1, "tags": ["x"], "inner": {"rate": 1, "mode": "b"}})
    assert built == _Outer(n=2, lr=1.0, tags=("x",), inner=_Inner(rate=1.0, mode="b"))
    assert isinstance(built.lr, float) and isinstance(built.inner.rate, float)
    assert build_dataclass(_Outer, {"named": {"steps": 3}}).named == _Named(3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"bogus": 1},
            "unknown key(s) ['bogus'] in config; known: ['flag', 'inner', 'lr', 'n', 'named', 'tags']",
        ),
        ({"inner": {"bogus": 1}}, "unknown key(s) ['bogus'] in inner; known: ['mode', 'rate']"),
        ({"n": True}, "n must be an integer, got True"),
        ({"n": 1.5}, "n must be an integer, got 1.5"),
        ({"lr": "abc"}, "lr must be a number, got 'abc'"),
        ({"lr": math.nan}, "lr must be a finite number, got nan"),
        ({"flag": 1}, "flag must be true or false, got 1"),
        ({"tags": ["x", 2]}, "tags must be a list of strings, got ['x', 2]"),
        ({"inner": {"rate": "high"}}, "inner.rate must be a number, got 'high'"),
        ({"inner": {"mode": "c"}}, "inner.mode must be one of a, b, got 'c'"),
        ({"inner": 3}, "inner must be a mapping, got int"),
        # a section's own ValueError is prefixed by the section ...
        ({"inner": {"rate": 2}}, "inner: rate 2.0 is out of range"),
        # ... unless it already names its dotted key
        ({"named": {"steps": 0}}, "named.steps must be a positive integer, got 0"),
        # the top level's own check has no prefix to name, so it says "config"
        ({"n": -1}, "config: n must be an integer >= 0, got -1"),
    ],
)
def test_build_dataclass_errors_name_the_dotted_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_dataclass(_Outer, data)
    assert str(info.value) == message


def test_build_dataclass_refuses_a_non_mapping() -> None:
    with pytest.raises(ConfigError, match=r"^config must be a mapping, got list$"):
        build_dataclass(_Outer, [1])


# ---------------------------------------------------------------------------- every layer names the field
def _migu(**kw: Any) -> Any:
    from migu.engine import MIGUConfig

    return MIGUConfig(**kw)


def _cluster(**kw: Any) -> Any:
    from migu.engine import ClusterConfig

    return ClusterConfig(**kw)


def _method(name: str, **kw: Any) -> Any:
    from migu.methods import get_method

    return get_method(name, **kw)


def _model(**kw: Any) -> Any:
    from migu.models import ModelConfig

    return ModelConfig(**kw)


def _humaneval(**kw: Any) -> Any:
    from migu.evals import HumanEvalConfig

    return HumanEvalConfig(**kw)


def _lm_eval(**kw: Any) -> Any:
    from migu.evals.lm_eval_bridge import LmEvalConfig

    return LmEvalConfig(**kw)


def _sandbox(**kw: Any) -> Any:
    from migu.evals import SandboxConfig

    return SandboxConfig(**kw)


def _run(*overrides: str) -> Any:
    from migu.runner.config import load_config

    return load_config(None, ["tasks=[agnews]", *overrides])


def _section(cls_name: str, **kw: Any) -> Any:
    from migu.runner import config

    return getattr(config, cls_name)(**kw)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: _migu(threshold=True), "MIGUConfig.threshold must be a number in [0, 1), got True"),
        (lambda: _migu(threshold=math.nan), "MIGUConfig.threshold must be a number in [0, 1), got nan"),
        (lambda: _migu(mask_bias=1), "MIGUConfig.mask_bias must be true or false, got 1"),
        (lambda: _migu(mode="fast"), "MIGUConfig.mode must be one of grad, strict, got 'fast'"),
        (lambda: _cluster(n_init=0), "ClusterConfig.n_init must be a positive integer, got 0"),
        (
            lambda: _method("ewc", ewc_lambda=-1.0),
            "method 'ewc': option 'ewc_lambda' must be a number >= 0, got -1.0",
        ),
        (lambda: _method("lora", r=True), "method 'lora': option 'r' must be a positive integer, got True"),
        (lambda: _method("ewc", online=1), "method 'ewc': option 'online' must be true or false, got 1"),
        (
            lambda: _method("ft_replay", replay_fraction=math.inf),
            "method 'ft_replay': option 'replay_fraction' must be a number in (0, 1], got inf",
        ),
        (lambda: _model(max_length=True), "max_length must be a positive integer, got True"),
        (lambda: _model(dtype="fp16"), "dtype must be one of fp32, bf16, got 'fp16'"),
        (
            lambda: _humaneval(n_samples=True),
            "HumanEvalConfig.n_samples must be a positive integer, got True",
        ),
        (lambda: _humaneval(top_p=0), "HumanEvalConfig.top_p must be a number in (0, 1], got 0"),
        (lambda: _lm_eval(batch_size=True), "LmEvalConfig.batch_size must be a positive integer, got True"),
        (lambda: _lm_eval(include_defaults=1), "LmEvalConfig.include_defaults must be true or false, got 1"),
        (lambda: _sandbox(timeout_s=math.inf), "SandboxConfig.timeout_s must be a number > 0, got inf"),
        (lambda: _sandbox(workers=True), "SandboxConfig.workers must be a positive integer, got True"),
        (
            lambda: _section("TrainConfig", batch_size=True),
            "train.batch_size must be a positive integer, got True",
        ),
        (lambda: _section("DataConfig", train_n=0), "data.train_n must be a positive integer or null, got 0"),
        (lambda: _run("train.lr=0"), "train.lr must be a number > 0, got 0.0"),
        (lambda: _run("data.train_n=0"), "data.train_n must be a positive integer or null, got 0"),
        (lambda: _run("pretrain.end_task.lr=-1"), "pretrain.end_task.lr must be a number > 0, got -1.0"),
        (lambda: _run("pretrain.block_size=4"), "pretrain.block_size must be an integer >= 8, got 4"),
        (
            lambda: _run("instruct.max_new_tokens=0"),
            "instruct.max_new_tokens must be a positive integer, got 0",
        ),
        (lambda: _run("migu.threshold=1"), "migu: MIGUConfig.threshold must be a number in [0, 1), got 1.0"),
    ],
)
def test_every_layer_names_the_field(build: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        build()
    assert str(info.value) == message
    assert isinstance(info.value, ValidationError)


def test_runner_sections_still_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"^train\.lr must be a number > 0, got 0$"):
        _section("TrainConfig", lr=0)
    with pytest.raises(ConfigError, match=r"^paper\.values must be .*, got \{\}$"):
        _section("PaperConfig", source="x")
