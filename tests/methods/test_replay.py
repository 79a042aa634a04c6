"""Replay: per past task round-half-up(fraction * n) rows, drawn from its training rows only; resumable."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import pytest
from support.methods import ENCODER_SPEC, task_ctx, tiny_encoder
from torch import nn

from migu.data.cl_benchmark import Example
from migu.methods import FTReplay, LoRAReplay, get_method, replay_count
from migu.methods.replay import ReplayMixin

# Replay saves only the row types it knows (ROW_TYPES, issue 17.8): the benchmark's Example.
Row = Example


SIZES = {"dbpedia": 150, "amazon": 80, "yahoo": 60, "agnews": 30}
MODEL = nn.Linear(2, 2)  # FT/replay hooks never look at the model


def _split(task: str, n: int) -> list[Row]:
    # test rows share sentences with training rows: only identity tells them apart
    return [Row(task, f"Q {task} {i}", f"s{i}", f"l{i % 3}", ("l0", "l1", "l2")) for i in range(n)]


def _tasks() -> tuple[list[str], dict[str, list[Row]], dict[str, list[Row]]]:
    names = list(SIZES)
    return names, {t: _split(t, n) for t, n in SIZES.items()}, {t: _split(t, 20) for t in SIZES}


@pytest.mark.parametrize(
    ("fraction", "n", "k"),
    [
        (0.02, 0, 0),
        (0.02, 10, 1),  # 0.2 -> at least one row
        (0.02, 24, 1),
        (0.02, 25, 1),  # 0.5 -> 1 (half up)
        (0.02, 100, 2),
        (0.02, 149, 3),
        (0.02, 175, 4),  # 3.5 -> 4 (half up, despite 3.5000000000000004)
        (0.5, 3, 2),  # 1.5 -> 2
        (1.0, 7, 7),
        (0.3, 10, 3),
    ],
)
def test_replay_count_rounding(fraction: float, n: int, k: int) -> None:
    assert replay_count(fraction, n) == k


@pytest.mark.parametrize("cls", [LoRAReplay, FTReplay])
def test_replayed_rows_are_past_training_rows(cls: type[ReplayMixin]) -> None:
    names, train, test = _tasks()
    method = cls()
    test_ids = {id(r) for rows in test.values() for r in rows}
    for i, task in enumerate(names):
        rows = method.training_examples(task_ctx(None, i, "t", train[task]), random.Random(0))
        own, replayed = rows[: len(train[task])], rows[len(train[task]) :]
        assert all(a is b for a, b in zip(own, train[task], strict=True))
        per_task = {t: [r for r in replayed if r.task == t] for t in names}
        for j, past in enumerate(names):
            expected = replay_count(0.02, SIZES[past]) if j < i else 0
            assert len(per_task[past]) == expected, (task, past)
            train_ids = {id(r) for r in train[past]}
            assert all(id(r) in train_ids for r in per_task[past])
        assert len(replayed) == sum(replay_count(0.02, SIZES[t]) for t in names[:i])
        assert not any(id(r) in test_ids for r in rows)
        method.on_task_end(task_ctx(MODEL, i, task, train[task]))
    assert method.replay_counts() == {"dbpedia": 3, "amazon": 2, "yahoo": 1, "agnews": 1}


def test_sample_is_seeded() -> None:
    names, train, _ = _tasks()

    def draw(seed: int) -> list[list[int]]:
        m = FTReplay(replay_seed=seed, replay_fraction=0.1)
        for i, t in enumerate(names):
            m.on_task_end(task_ctx(MODEL, i, t, train[t]))
        return [rec["indices"] for rec in m.state_dict()["replay"]]

    assert draw(0) == draw(0)
    assert draw(0) != draw(1)


@pytest.mark.parametrize("cls", [LoRAReplay, FTReplay])
def test_state_dict_round_trip(cls: type[ReplayMixin]) -> None:
    names, train, _ = _tasks()
    method = cls(replay_fraction=0.05)
    for i, t in enumerate(names[:3]):
        method.on_task_end(task_ctx(MODEL, i, t, train[t]))
    expected = method.replay_rows(3)
    state = json.loads(json.dumps(method.state_dict()))

    # restored from the checkpoint alone: equal rows, same type (tuples back), in the same order
    cold = cls(replay_fraction=0.05)
    cold.load_state_dict(state)
    assert cold.replay_rows(3) == expected
    assert all(type(r) is Row and isinstance(r.options, tuple) for r in cold.replay_rows(3))

    # the runner's resume: on_task_end replayed first, then the state: the very same row objects
    warm = cls(replay_fraction=0.05)
    for i, t in enumerate(names[:3]):
        warm.on_task_end(task_ctx(MODEL, i, t, train[t]))
    warm.load_state_dict(state)
    assert all(a is b for a, b in zip(warm.replay_rows(3), expected, strict=True))
    assert (
        warm.training_examples(task_ctx(None, 3, "t", train["agnews"]), random.Random(0))[
            len(train["agnews"]) :
        ]
        == expected
    )


def test_round_trip_with_benchmark_example_type() -> None:
    data = pytest.importorskip("migu.data.cl_benchmark")
    rows = [data.Example("cb", f"in {i}", f"s{i}", "yes", ("yes", "no")) for i in range(60)]
    method = get_method("lora_replay", replay_fraction=0.05)
    method.on_task_end(task_ctx(MODEL, 0, "cb", rows))
    restored = get_method("lora_replay", replay_fraction=0.05)
    restored.load_state_dict(json.loads(json.dumps(method.state_dict())))
    assert restored.replay_rows(1) == method.replay_rows(1) and len(restored.replay_rows(1)) == 3


def test_plain_json_rows() -> None:
    rows = [{"sentence": f"s{i}", "label": "a"} for i in range(50)]
    method = FTReplay()
    method.on_task_end(task_ctx(MODEL, 0, "t", rows))
    restored = FTReplay()
    restored.load_state_dict(json.loads(json.dumps(method.state_dict())))
    assert (
        restored.replay_rows(1)
        == method.replay_rows(1)
        == [rows[i] for i in method.state_dict()["replay"][0]["indices"]]
    )


def test_lora_replay_is_lora_with_a_buffer() -> None:
    model = tiny_encoder()
    method = LoRAReplay()
    method.prepare_model(model, ENCODER_SPEC)
    method.on_task_start(task_ctx(model, 0, "a"))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if ".default." in n or n.startswith("classifier.")
    }
    method.on_task_end(task_ctx(model, 0, "a", list(range(100))))
    assert set(method.state_dict()) == {"adapters", "replay"}
    assert method.training_examples(task_ctx(None, 1, "t", []), random.Random(0)) == method.replay_rows(1)


def test_saved_row_types_come_from_a_fixed_table_never_an_import() -> None:
    """Issue 17.8: a tampered method_state.json cannot make migu import a module it names."""
    import sys

    from migu.data.instructions import Conversation

    convs = [Conversation((("user", f"q{i}"), ("assistant", f"a{i}")), f"f:{i}") for i in range(50)]
    method = FTReplay()
    method.on_task_end(task_ctx(MODEL, 0, "t", convs))
    restored = FTReplay()
    restored.load_state_dict(json.loads(json.dumps(method.state_dict())))
    assert restored.replay_rows(1) == method.replay_rows(1)  # nested tuples back as tuples

    state = json.loads(json.dumps(method.state_dict()))
    state["replay"][0]["row_type"] = "this:Thing"  # importing `this` would print the Zen of Python
    assert "this" not in sys.modules
    with pytest.raises(ValueError, match=r"unknown row type 'this:Thing'"):
        FTReplay().load_state_dict(state)
    assert "this" not in sys.modules

    @dataclass(frozen=True)
    class Unknown:
        x: int

    with pytest.raises(ValueError, match="cannot be saved with a checkpoint"):
        FTReplay().on_task_end(task_ctx(MODEL, 0, "t", [Unknown(i) for i in range(10)]))


@pytest.mark.parametrize(
    ("legacy", "module"),
    [("benchmarks.data:Example", "cl_benchmark"), ("benchmarks.instructions:Conversation", "instructions")],
)
def test_checkpoints_from_before_the_data_package_rename_still_load(legacy: str, module: str) -> None:
    """Replay states saved when the data package was ``migu.benchmarks`` name their rows by the old
    module path: they load as the same rows; new states name the new path."""
    from migu.data.cl_benchmark import Example
    from migu.data.instructions import Conversation

    row = (
        Example("t", "in", "s", "a", ("a", "b"))
        if module == "cl_benchmark"
        else Conversation((("user", "q"), ("assistant", "a")), "f:0")
    )
    method = FTReplay()
    method.on_task_end(task_ctx(MODEL, 0, "t", [row] * 50))
    state = json.loads(json.dumps(method.state_dict()))
    assert state["replay"][0]["row_type"] == f"migu.data.{module}:{type(row).__name__}"
    state["replay"][0]["row_type"] = f"migu.{legacy}"
    restored = FTReplay()
    restored.load_state_dict(state)
    assert restored.replay_rows(1) == method.replay_rows(1)
