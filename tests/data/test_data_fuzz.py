"""Issue 17, fuzzing the CL_Benchmark reader: any labels.json / train.json / test.json content (bad
JSON, wrong shapes, unknown labels, binary bytes, missing files) either loads or fails with a
DataError naming the file or the task; never another exception."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from migu.data import DataError, TaskData, load_task

LABELS = ["World", "Sports", "Business", "Science or Technology"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
labels = st.sampled_from([*LABELS, "-", "other"]) | st.text(max_size=4) | json_values
good_row = st.fixed_dictionaries({"sentence": st.text(max_size=12), "label": labels})
odd_row = st.dictionaries(st.sampled_from(["sentence", "label", "x"]), json_values, max_size=3)
row = good_row | odd_row | json_values
split = st.lists(row, max_size=6).map(json.dumps)
label_lists = st.lists(st.sampled_from(LABELS) | st.text(max_size=5), max_size=5)
label_file = label_lists.map(json.dumps) | json_values.map(json.dumps)


# A file's content: JSON of the right shape, any JSON, any text, raw bytes, or no file at all.
def content(shaped: st.SearchStrategy[str]) -> st.SearchStrategy[bytes | None]:
    return (
        shaped.map(str.encode)
        | json_values.map(lambda v: json.dumps(v).encode())
        | st.text(max_size=30).map(str.encode)
        | st.binary(max_size=30)
        | st.none()
    )


def _check(files: dict[str, bytes | None], train_n: int | None, test_n: int | None, keep: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        task_dir = Path(tmp) / "TC" / "agnews"
        task_dir.mkdir(parents=True)
        for name, data in files.items():
            if data is not None:
                (task_dir / name).write_bytes(data)
        try:
            task = load_task("agnews", tmp, train_n=train_n, test_n=test_n, keep_unlabeled=keep)
        except DataError as exc:
            msg = str(exc)
            assert "agnews" in msg, f"{msg!r} names neither the file nor the task"
            return
        assert isinstance(task, TaskData) and task.train and task.test
        assert all(ex.label in task.labels for ex in task.train)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {"labels.json": content(label_file), "train.json": content(split), "test.json": content(split)}
    ),
    st.none() | st.integers(1, 5),
    st.none() | st.integers(1, 5),
    st.booleans(),
)
@example({"labels.json": b'["a", "b"]', "train.json": b"[" * 5000, "test.json": None}, None, None, False)
@example({"labels.json": b'["a"]', "train.json": b"\xff\xfe", "test.json": b"[]"}, None, None, False)
@example(
    {"labels.json": b'["a"]', "train.json": b'[{"sentence": "s", "label": "a"}]', "test.json": None},
    None,
    None,
    False,
)  # one row: too few to carve
def test_any_task_files_load_or_fail_with_a_data_error(
    files: dict[str, bytes | None], train_n: int | None, test_n: int | None, keep: bool
) -> None:
    _check(files, train_n, test_n, keep)
