"""Instruction sets: JSONL rows (two formats), file:line errors, sampling, CL_Benchmark sets."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from support.data import REAL_ROOT, needs_real_data

from migu.data import DataError, get_set
from migu.data.instructions import load_instruction_set, read_jsonl


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_instruction_response_and_messages_rows(tmp_path: Path) -> None:
    spec = get_set("magicoder_evol")
    rows = read_jsonl(
        spec, _write(tmp_path / "a.jsonl", [{"instruction": "add", "response": "def f(): pass"}])
    )
    assert (
        rows[0].turns == (("user", "add"), ("assistant", "def f(): pass"))
        and rows[0].response == "def f(): pass"
    )
    chat = replace(spec, format="messages")
    turns = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "ciao"},
    ]
    (row,) = read_jsonl(chat, _write(tmp_path / "b.jsonl", [{"messages": turns}]))
    assert row.response == "ciao" and row.prompt[-1] == ("user", "bye") and len(row.prompt) == 4


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ('{"instruction": "x", "response": "y"', r"a\.jsonl:2: malformed JSON"),
        ('{"instruction": "x"}', r"a\.jsonl:2: missing field\(s\) \['response'\]"),
        ('{"instruction": "x", "response": 3}', r"a\.jsonl:2: 'instruction' and 'response' must be strings"),
        ("[1, 2]", r"a\.jsonl:2: a row must be a JSON object"),
    ],
)
def test_bad_rows_name_the_file_and_line(tmp_path: Path, line: str, match: str) -> None:
    path = _write(tmp_path / "a.jsonl", [{"instruction": "ok", "response": "ok"}, line])
    with pytest.raises(DataError, match=match):
        read_jsonl(get_set("magicoder_evol"), path)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    spec = get_set("magicoder_evol")
    with pytest.raises(DataError, match=r"a\.jsonl: no rows"):
        read_jsonl(spec, _write(tmp_path / "a.jsonl", [""]))
    with pytest.raises(
        DataError, match=r"instruction set 'magicoder_evol': file .*data-evol_instruct.*not found"
    ):
        load_instruction_set("magicoder_evol", tmp_path)
    chat = replace(spec, format="messages")
    bad = [{"messages": [{"role": "user", "content": "hi"}]}]
    with pytest.raises(DataError, match="the last turn must be the assistant's"):
        read_jsonl(chat, _write(tmp_path / "c.jsonl", bad))


def test_fraction_is_a_seeded_sample(tmp_path: Path) -> None:
    d = tmp_path / "magicoder"
    d.mkdir()
    _write(
        d / "data-evol_instruct-decontaminated.jsonl",
        [{"instruction": f"q{i}", "response": f"a{i}"} for i in range(50)],
    )
    a = load_instruction_set("magicoder_evol", tmp_path, seed=1)
    b = load_instruction_set("magicoder_evol", tmp_path, seed=1)
    c = load_instruction_set("magicoder_evol", tmp_path, seed=2)
    assert len(a.train) == 10 and a.train == b.train and a.train != c.train  # 20% of 50, seeded
    assert a.info["rows"] == 50 and a.info["train"] == 10


@needs_real_data
def test_cl_benchmark_tasks_as_instruction_sets() -> None:
    assert REAL_ROOT is not None
    d = load_instruction_set("demo_agnews", REAL_ROOT, seed=3)
    assert len(d.train) == 48 and len(d.held_out) == 8
    assert d.train[0].turns[0][1].endswith("Answer:") and d.train[0].response in (
        "World",
        "Sports",
        "Business",
        "Science or Technology",
    )
    held = {c.turns[0][1] for c in d.held_out}
    assert not held & {c.turns[0][1] for c in d.train}  # disjoint
