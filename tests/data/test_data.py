"""CL_Benchmark reader on small generated data: prompts, sampling, carving, labels, errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

import migu.data.cl_files as cl_files
import migu.data.splits as splits
from migu.data import (
    DataError,
    Example,
    TaskData,
    format_prompt,
    get_task,
    load_task,
    load_tasks,
    resolve_data_root,
)

AG_LABELS = ["World", "Sports", "Business", "Science or Technology"]
NLI_LABELS = ["neutral", "entailment", "contradiction"]


def rows(prefix: str, n: int, labels: list[str]) -> list[dict[str, str]]:
    """``n`` rows with unique sentences, labels cycling through ``labels``."""
    return [{"sentence": f"{prefix} sentence {i}", "label": labels[i % len(labels)]} for i in range(n)]


def write_task(root: Path, rel: str, labels: Any, **splits: Any) -> Path:
    """A task dir in CL_Benchmark layout; a str split is written verbatim (for broken JSON)."""
    d = root / rel
    d.mkdir(parents=True, exist_ok=True)
    if labels is not None:
        (d / "labels.json").write_text(json.dumps(labels))
    for split, content in splits.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (d / f"{split}.json").write_text(text)
    return d


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    """A small CL_Benchmark with the real data's gaps: dbpedia lacks train, yelp lacks test."""
    root = tmp_path / "CL_Benchmark"
    write_task(
        root,
        "TC/agnews",
        AG_LABELS,
        train=rows("ag-train", 40, AG_LABELS),
        test=rows("ag-test", 30, AG_LABELS),
    )
    write_task(root, "TC/dbpedia", ["Company", "Artist"], test=rows("db", 50, ["Company", "Artist"]))
    yelp = ["very negative", "negative", "neutral", "positive", "very positive"]
    write_task(root, "SC/yelp", yelp, train=rows("yelp", 60, yelp))
    mnli_test = rows("mnli-test", 20, NLI_LABELS) + [
        {"sentence": f"no gold {i}", "label": "-"} for i in range(3)
    ]
    write_task(root, "NLI/MNLI", NLI_LABELS, train=rows("mnli-train", 20, NLI_LABELS), test=mnli_test)
    write_task(root, "TC/yahoo", ["Society & Culture", "Health"])  # labels only, like the real copy
    return root


def sentences(examples: list[Example]) -> set[str]:
    return {e.sentence for e in examples}


# --- prompt format ---------------------------------------------------------------------------


def test_format_prompt_reproduces_o_lora() -> None:
    prompt = format_prompt(get_task("agnews"), "Title: t\nText: x", AG_LABELS)
    assert prompt == (
        "What is the topic of the following paragraph? Choose one from the option.\n"
        "Option: World, Sports, Business, Science or Technology \n"
        "Title: t\nText: x\n"
        "Answer:"
    )


def test_format_prompt_copa_has_no_instruction_or_options() -> None:
    sentence = 'Which sentence is the effect of "x"? Choose one between A and B.\nA: a\nB: b'
    assert format_prompt(get_task("copa"), sentence, ["A", "B"]) == sentence + "\nAnswer:"


def test_examples_carry_prompt_label_and_options_in_labels_json_order(bench: Path) -> None:
    data = load_task("agnews", bench)
    assert isinstance(data, TaskData) and data.name == "agnews"
    assert data.labels == tuple(AG_LABELS)
    ex = data.train[0]
    assert ex.task == "agnews" and ex.options == tuple(AG_LABELS)
    assert ex.input == format_prompt(get_task("agnews"), ex.sentence, AG_LABELS)
    assert ex.label in AG_LABELS
    assert (len(data.train), len(data.test)) == (40, 30)
    assert data.info["train"]["source"] == "train.json" and data.info["test"]["source"] == "test.json"
    assert data.info["carved"] is None
    json.dumps(data.info)  # results writers store it as is


# --- sampling ----------------------------------------------------------------------------------


def test_sampling_is_seeded_and_without_replacement(bench: Path) -> None:
    a = load_task("agnews", bench, train_n=10, test_n=5, seed=1)
    b = load_task("agnews", bench, train_n=10, test_n=5, seed=1)
    c = load_task("agnews", bench, train_n=10, test_n=5, seed=2)
    assert a.train == b.train and a.test == b.test
    assert sentences(a.train) != sentences(c.train)
    assert len(sentences(a.train)) == 10 and len(a.test) == 5
    assert a.info["train"]["used"] == 10 and a.info["train"]["available"] == 40
    assert a.info["train"]["index_digest"] == b.info["train"]["index_digest"]


def test_train_sample_does_not_depend_on_test_size(bench: Path) -> None:
    a = load_task("agnews", bench, train_n=10, test_n=5)
    b = load_task("agnews", bench, train_n=10, test_n=20)
    assert a.train == b.train


def test_oversized_request_is_capped_with_warning(bench: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="migu.data"):
        data = load_task("agnews", bench, train_n=1000)
    assert len(data.train) == 40
    assert data.info["capped"] == [{"role": "train", "requested": 1000, "available": 40, "used": 40}]
    assert "train_n=1000" in caplog.text


@pytest.mark.parametrize("size", [0, -1, 2.5])
def test_non_positive_or_fractional_size_is_an_error(bench: Path, size: object) -> None:
    with pytest.raises(DataError, match="train_n must be a positive int"):
        load_task("agnews", bench, train_n=size)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="test_n must be a positive int"):
        load_task("dbpedia", bench, test_n=size)  # type: ignore[arg-type]


# --- carving -----------------------------------------------------------------------------------


def test_missing_train_is_carved_disjointly_from_test(bench: Path) -> None:
    data = load_task("dbpedia", bench, train_n=20, test_n=10, seed=7)
    assert (len(data.train), len(data.test)) == (20, 10)
    assert not sentences(data.train) & sentences(data.test)
    carved = data.info["carved"]
    assert carved["role"] == "train" and carved["from"] == "test.json" and carved["seed"] == 7
    assert carved["disjoint"] is True
    assert carved["train_pool"] == 20 and carved["test_pool"] == 30  # the rest is the test pool
    assert data.info["train"]["source"] == data.info["test"]["source"] == "test.json"
    again = load_task("dbpedia", bench, train_n=20, test_n=10, seed=7)
    assert again.train == data.train and again.test == data.test
    other = load_task("dbpedia", bench, train_n=20, test_n=10, seed=8)
    assert sentences(other.train) != sentences(data.train)


def test_missing_test_is_carved_from_train(bench: Path) -> None:
    data = load_task("yelp", bench)
    # No sizes: eval_fraction (0.2) of the pool is held out, the rest trains.
    assert (len(data.train), len(data.test)) == (48, 12)
    assert not sentences(data.train) & sentences(data.test)
    assert sentences(data.train) | sentences(data.test) == {f"yelp sentence {i}" for i in range(60)}
    assert data.info["carved"]["role"] == "test" and data.info["carved"]["from"] == "train.json"


@pytest.mark.parametrize(
    ("train_n", "test_n", "sizes"),
    [(None, 15, (45, 15)), (50, None, (50, 10)), (None, None, (48, 12))],
)
def test_carve_sizes_side_without_request_takes_the_rest(
    bench: Path, train_n: int | None, test_n: int | None, sizes: tuple[int, int]
) -> None:
    data = load_task("yelp", bench, train_n=train_n, test_n=test_n)
    assert (len(data.train), len(data.test)) == sizes
    assert not sentences(data.train) & sentences(data.test)


def test_carve_request_exceeding_pool_is_capped_and_recorded(bench: Path) -> None:
    data = load_task("dbpedia", bench, train_n=40, test_n=40)
    assert len(data.train) + len(data.test) == 50
    assert (len(data.train), len(data.test)) == (25, 25)  # scaled down in proportion
    assert not sentences(data.train) & sentences(data.test)
    assert {c["role"] for c in data.info["capped"]} == {"train", "test"}


def test_carving_never_puts_one_sentence_on_both_sides(tmp_path: Path) -> None:
    dup = [{"sentence": "same text", "label": "Good"}] * 10 + rows("imdb", 10, ["Good", "Bad"])
    write_task(tmp_path, "SC/IMDB", ["Good", "Bad"], train=dup)
    data = load_task("imdb", tmp_path, test_n=5)
    assert not sentences(data.train) & sentences(data.test)
    assert data.info["carved"]["duplicates_dropped"] == 9
    assert len(data.train) + len(data.test) == 11


def test_carving_a_single_row_is_an_error(tmp_path: Path) -> None:
    write_task(tmp_path, "SC/IMDB", ["Good", "Bad"], train=rows("x", 1, ["Good"]))
    with pytest.raises(DataError, match=r"train\.json.*too few"):
        load_task("imdb", tmp_path)


def test_eval_split_dev_reads_dev_json(bench: Path) -> None:
    write_task(bench, "TC/agnews", AG_LABELS, dev=rows("ag-dev", 8, AG_LABELS))
    data = load_task("agnews", bench, eval_split="dev")
    assert data.info["test"]["source"] == "dev.json" and len(data.test) == 8
    with pytest.raises(DataError, match="eval_split"):
        load_task("agnews", bench, eval_split="valid")  # type: ignore[arg-type]


# --- MNLI "-" labels ---------------------------------------------------------------------------


def test_unlabeled_rows_dropped_by_default_and_counted(bench: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="migu.data"):
        data = load_task("mnli", bench)
    assert len(data.test) == 20 and all(e.label != "-" for e in data.test)
    assert data.info["unlabeled_dropped"] == 3 and data.info["test"]["unlabeled_dropped"] == 3
    assert data.info["unlabeled_kept"] == 0
    assert "dropped 3 rows" in caplog.text


def test_unlabeled_rows_kept_for_the_authors_protocol(bench: Path) -> None:
    data = load_task("mnli", bench, keep_unlabeled=True)
    assert len(data.test) == 23
    unl = [e for e in data.test if e.label == "-"]
    assert len(unl) == 3 and all("-" not in e.options for e in unl)  # can never be predicted
    assert data.info["unlabeled_kept"] == 3 and data.info["unlabeled_dropped"] == 0


def test_unlabeled_training_rows_are_always_dropped(tmp_path: Path) -> None:
    train = [*rows("t", 6, NLI_LABELS), {"sentence": "no gold", "label": "-"}]
    write_task(tmp_path, "NLI/MNLI", NLI_LABELS, train=train, test=rows("e", 4, NLI_LABELS))
    data = load_task("mnli", tmp_path, keep_unlabeled=True)
    assert len(data.train) == 6 and data.info["train"]["unlabeled_dropped"] == 1


def test_split_with_only_unlabeled_rows_is_an_error(tmp_path: Path) -> None:
    write_task(
        tmp_path,
        "NLI/MNLI",
        NLI_LABELS,
        train=rows("t", 4, NLI_LABELS),
        test=[{"sentence": "s", "label": "-"}],
    )
    with pytest.raises(DataError, match=r"test\.json.*no labelled rows"):
        load_task("mnli", tmp_path)


# --- bad data ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("train", "pattern"),
    [
        ('[{"sentence": "a", "label": "World"', r"train\.json: malformed JSON at line 1 column \d+"),
        ([{"sentence": "a", "label": "World"}, {"label": "World"}], r"train\.json: row 1 lacks 'sentence'"),
        ([{"sentence": "a"}], r"train\.json: row 0 lacks 'label'"),
        ([{"sentence": "a", "label": "Sport"}], r"train\.json: row 0 has label 'Sport'.*allowed: \['World'"),
        ([], r"train\.json: split is empty"),
        ({"sentence": "a", "label": "World"}, r"train\.json: expected a JSON list"),
        (["just text"], r"train\.json: row 0 is a str"),
        ([{"sentence": 3, "label": "World"}], r"train\.json: row 0: 'sentence' and 'label' must be strings"),
    ],
)
def test_bad_split_raises_data_error_naming_the_file(tmp_path: Path, train: Any, pattern: str) -> None:
    write_task(tmp_path, "TC/agnews", AG_LABELS, train=train, test=rows("t", 3, AG_LABELS))
    with pytest.raises(DataError, match=pattern) as err:
        load_task("agnews", tmp_path)
    assert str(tmp_path / "TC/agnews/train.json") in str(err.value)


@pytest.mark.parametrize(
    ("labels", "pattern"),
    [(None, r"labels\.json not found"), ([], "non-empty JSON list"), (["a", "a"], "duplicate labels")],
)
def test_bad_labels_file_raises(tmp_path: Path, labels: Any, pattern: str) -> None:
    write_task(tmp_path, "TC/agnews", labels, train=rows("t", 3, ["a"]), test=rows("e", 3, ["a"]))
    with pytest.raises(DataError, match=pattern) as err:
        load_task("agnews", tmp_path)
    assert "labels.json" in str(err.value)


def test_missing_task_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data directory .*TC/agnews not found"):
        load_task("agnews", tmp_path)


def test_task_without_any_split_names_the_task_and_files(bench: Path) -> None:
    with pytest.raises(DataError, match=r"'yahoo'.*train\.json.*test\.json.*no data"):
        load_task("yahoo", bench)


def test_das_domains_are_not_cl_benchmark_tasks(bench: Path) -> None:
    with pytest.raises(KeyError, match=r"'restaurant' is a continual pre-training domain"):
        load_task("restaurant", bench)


def test_unknown_task_is_a_key_error(bench: Path) -> None:
    with pytest.raises(KeyError, match="agnews"):
        load_task("agnew", bench)


# --- load_tasks --------------------------------------------------------------------------------


def test_load_tasks_keeps_order_and_passes_options(bench: Path) -> None:
    out = load_tasks(["mnli", "agnews", "dbpedia"], bench, train_n=5, test_n=4, seed=3)
    assert list(out) == ["mnli", "agnews", "dbpedia"]
    assert all(len(d.train) == 5 and len(d.test) == 4 and d.info["seed"] == 3 for d in out.values())


def test_load_tasks_per_task_overrides_sizes(bench: Path) -> None:
    out = load_tasks(
        ["agnews", "MNLI"],
        bench,
        train_n=5,
        test_n=4,
        per_task={"mnli": {"test_n": None}, "yelp": {"train_n": 1}},
    )
    assert (len(out["agnews"].train), len(out["agnews"].test)) == (5, 4)
    assert (len(out["mnli"].train), len(out["mnli"].test)) == (5, 20)
    with pytest.raises(DataError, match="only train_n and test_n"):
        load_tasks(["agnews"], bench, per_task={"agnews": {"seed": 1}})
    with pytest.raises(KeyError, match="agnews"):
        load_tasks(["agnews"], bench, per_task={"agnew": {"train_n": 1}})


def test_load_tasks_reports_every_missing_task_before_reading_any(bench: Path) -> None:
    write_task(bench, "TC/agnews", AG_LABELS, train="{broken")  # would fail if it were read
    with pytest.raises(DataError) as err:
        load_tasks(["agnews", "yahoo", "restaurant", "imdb"], bench)
    msg = str(err.value)
    assert "3 problem(s)" in msg and "'yahoo'" in msg and "'restaurant'" in msg and "SC/IMDB" in msg
    assert "malformed" not in msg


# --- data root ---------------------------------------------------------------------------------


def test_explicit_root_wins_over_env(bench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGU_DATA", str(tmp_path / "elsewhere"))
    assert resolve_data_root(bench) == bench
    assert resolve_data_root(str(bench)) == bench


def test_env_var_is_used_when_no_path(bench: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGU_DATA", str(bench))
    assert resolve_data_root(None) == bench
    assert len(load_task("agnews", None).train) == 40


def test_no_path_and_no_env_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIGU_DATA", raising=False)
    with pytest.raises(DataError, match=r"--data.*MIGU_DATA"):
        resolve_data_root(None)


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        resolve_data_root(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        resolve_data_root(tmp_path / "file")


def test_parent_of_cl_benchmark_gets_a_hint(bench: Path) -> None:
    with pytest.raises(DataError, match=r"did you mean .*CL_Benchmark"):
        resolve_data_root(bench.parent)


# --- validation rows (issue 18) -------------------------------------------------------------------


def test_validation_rows_are_carved_from_train_disjointly(bench: Path) -> None:
    plain = load_task("agnews", bench, train_n=10, test_n=8, seed=5)
    task = load_task("agnews", bench, train_n=10, test_n=8, val_n=6, seed=5)
    assert len(task.val) == 6 and plain.val == [] and plain.info["val"] is None
    assert not sentences(task.val) & sentences(task.train) and not sentences(task.val) & sentences(task.test)
    assert all(s.startswith("ag-train") for s in sentences(task.val))  # from the train file
    assert task.info["val"]["carved_from_train"] and task.info["val"]["used"] == 6
    assert load_task("agnews", bench, train_n=10, test_n=8, val_n=6, seed=5).val == task.val  # seeded
    assert sentences(task.test) == sentences(plain.test)  # the test rows do not move


def test_a_dev_copy_of_test_is_never_used_for_validation(bench: Path) -> None:
    d = bench / "TC/agnews"
    (d / "dev.json").write_bytes((d / "test.json").read_bytes())  # as in the public CL_Benchmark
    task = load_task("agnews", bench, val_n=5, seed=1)
    assert (
        task.info["val"]["carved_from_train"] and "copy of the evaluation file" in task.info["val"]["source"]
    )
    (d / "dev.json").write_text(json.dumps(rows("ag-dev", 12, AG_LABELS)))  # a real dev split
    task = load_task("agnews", bench, val_n=5, seed=1)
    assert task.info["val"]["source"] == "dev.json" and all(
        s.startswith("ag-dev") for s in sentences(task.val)
    )


def test_validation_when_train_itself_is_carved_from_test(bench: Path) -> None:
    task = load_task("dbpedia", bench, train_n=20, test_n=15, val_n=5, seed=2)
    parts = [sentences(task.train), sentences(task.test), sentences(task.val)]
    assert [len(p) for p in parts] == [20, 15, 5]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])


# --- load_task's steps, each on its own -----------------------------------------------------------


def _rows(prefix: str, n: int, labels: list[str] = AG_LABELS, start: int = 0) -> list[cl_files.Row]:
    return [cl_files.Row(start + i, f"{prefix} {i}", labels[i % len(labels)]) for i in range(n)]


def _found(tmp_path: Path, **raw: list[cl_files.Row]) -> cl_files.TaskFiles:
    d = tmp_path / "TC/agnews"
    files = {"train": d / "train.json", "test": d / "test.json"}
    return cl_files.TaskFiles(tmp_path, d, tuple(AG_LABELS), files, raw)


def _request(**kw: Any) -> splits.Request:
    base: dict[str, Any] = dict(
        train_n=None,
        test_n=None,
        val_n=None,
        seed=1,
        eval_split="test",
        keep_unlabeled=False,
        eval_fraction=0.2,
    )
    return splits.Request(**{**base, **kw})


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"train_n": 0}, "task 'agnews': train_n must be a positive int or None, got 0"),
        ({"test_n": True}, "task 'agnews': test_n must be a positive int or None, got True"),
        ({"val_n": "3"}, "task 'agnews': val_n must be a positive int or None, got '3'"),
        ({"eval_split": "valid"}, "eval_split must be 'test' or 'dev', got 'valid'"),
        ({"eval_fraction": 1.0}, "eval_fraction must be in (0, 1), got 1.0"),
        ({"eval_fraction": float("nan")}, "eval_fraction must be in (0, 1), got nan"),
        ({"eval_fraction": None}, "eval_fraction must be in (0, 1), got None"),
    ],
)
def test_check_args_raises_data_error_with_the_loader_wording(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError) as err:
        splits.check_args("agnews", _request(**kw))
    assert type(err.value) is DataError and str(err.value) == message
    splits.check_args("agnews", _request(train_n=1, test_n=2, val_n=3, eval_split="dev", eval_fraction=0.5))


def test_read_task_reads_labels_and_only_the_splits_present(bench: Path) -> None:
    found = cl_files.read_task(get_task("dbpedia"), bench, "test")
    assert (
        found.labels == ("Company", "Artist") and list(found.raw) == ["test"] and len(found.raw["test"]) == 50
    )
    assert found.files["train"].name == "train.json" and found.task_dir == bench / "TC/dbpedia"
    assert list(cl_files.read_task(get_task("agnews"), bench, "test").raw) == ["train", "test"]


def test_pools_as_shipped_handle_unlabeled_rows_per_role(tmp_path: Path) -> None:
    unl = [cl_files.Row(90 + i, f"no gold {i}", "-") for i in range(2)]
    found = _found(tmp_path, train=_rows("tr", 6) + unl[:1], test=_rows("te", 4) + unl)
    dropped = splits.pools_as_shipped(found, keep_unlabeled=False)
    assert dropped.dropped == {"train": 1, "test": 2} and dropped.kept_unlabeled == 0
    assert all(r.label != "-" for role in ("train", "test") for r in dropped.rows[role])
    kept = splits.pools_as_shipped(found, keep_unlabeled=True)
    assert (
        kept.dropped == {"train": 1, "test": 0} and kept.kept_unlabeled == 2 and len(kept.rows["test"]) == 6
    )
    assert all(r.label != "-" for r in kept.rows["train"])  # training never keeps them
    assert kept.source == {"train": "train.json", "test": "test.json"} and kept.carved is None


def test_carve_is_disjoint_by_sentence_text_with_duplicates_dropped(tmp_path: Path) -> None:
    dupes = [cl_files.Row(100 + i, "tr 0", "World") for i in range(5)]  # five copies of row 0's sentence
    unl = [cl_files.Row(200, "no gold", "-")]
    found = _found(tmp_path, train=_rows("tr", 30) + dupes + unl)
    pools = splits.carve_pools("agnews", found, _request(train_n=10, test_n=8, seed=3, keep_unlabeled=True))
    train, test = ({r.sentence for r in pools.rows[role]} for role in ("train", "test"))
    # both sizes given: train gets its 10, the evaluation pool the rest (test_n is drawn from it later)
    assert not train & test and len(train) == 10 and len(test) == 20 + 1  # the "-" row is eval-only
    assert train | test == {f"tr {i}" for i in range(30)} | {"no gold"}
    assert all(r.index < 100 for r in pools.rows["train"])  # no duplicate copy and no "-" row trains
    carved = pools.carved
    assert carved is not None and (carved.role, carved.source, carved.missing) == (
        "test",
        "train.json",
        "test.json",
    )
    assert carved.pool == 30 and carved.duplicates_dropped == 5 and carved.test_pool == 21 and carved.disjoint
    again = splits.carve_pools("agnews", found, _request(train_n=10, test_n=8, seed=3, keep_unlabeled=True))
    assert again == pools  # seeded
    room = splits.carve_pools("agnews", found, _request(train_n=10, test_n=8, val_n=5))
    assert len(room.rows["train"]) == 15  # room left for the validation rows carved later


def test_val_from_train_is_disjoint_from_what_is_left_to_train_on() -> None:
    pool = _rows("tr", 20) + [
        cl_files.Row(50 + i, f"tr {i}", "World") for i in range(0, 20, 2)
    ]  # 10 duplicates
    val, left, cap = splits.val_from_train("agnews", pool, 6, seed=4)
    assert len(val) == 6 and cap is None
    assert not {r.sentence for r in val} & {r.sentence for r in left}  # duplicates of val rows left too
    assert len(left) + sum(1 for r in pool if r.sentence in {v.sentence for v in val}) == len(pool)
    assert splits.val_from_train("agnews", pool, 6, seed=4) == (val, left, cap)  # seeded
    _, left, cap = splits.val_from_train("agnews", _rows("x", 3), 5, seed=4)
    assert len(left) == 1 and cap == splits.CapRecord("val", 5, 2, 2)  # one training row always stays


def test_take_validation_prefers_a_distinct_dev_json(tmp_path: Path) -> None:
    found = _found(tmp_path, train=_rows("tr", 12), test=_rows("te", 6))
    found.task_dir.mkdir(parents=True)
    (found.task_dir / "test.json").write_text(json.dumps([{"sentence": "te 0", "label": "World"}]))
    pools = splits.pools_as_shipped(found, keep_unlabeled=False)
    none = splits.take_validation("agnews", found, pools, _request())
    assert none.rows == [] and none.record is None and none.train_pool == pools.rows["train"]
    carved = splits.take_validation("agnews", found, pools, _request(val_n=4))
    assert carved.record is not None and carved.record.source == "carved from the training pool (no dev.json)"
    assert len(carved.train_pool) == 8 and not {r.sentence for r in carved.rows} & {
        r.sentence for r in carved.train_pool
    }
    (found.task_dir / "dev.json").write_text(json.dumps(rows("dev", 5, AG_LABELS)))
    dev = splits.take_validation("agnews", found, pools, _request(val_n=4))
    assert dev.record is not None and dev.record.source == "dev.json" and not dev.record.carved_from_train
    assert dev.train_pool == pools.rows["train"] and all(r.sentence.startswith("dev") for r in dev.rows)
    (found.task_dir / "dev.json").write_bytes((found.task_dir / "test.json").read_bytes())
    copy = splits.take_validation("agnews", found, pools, _request(val_n=4))
    assert copy.record is not None and "copy of the evaluation file" in copy.record.source


def test_sample_roles_is_seeded_capped_and_independent_per_role(caplog: pytest.LogCaptureFixture) -> None:
    pools = {"train": _rows("tr", 20), "test": _rows("te", 10)}
    chosen, capped = splits.sample_roles("agnews", pools, _request(train_n=5, test_n=4), carved=False)
    assert [len(chosen["train"]), len(chosen["test"])] == [5, 4] and capped == []
    assert len({r.index for r in chosen["train"]}) == 5  # without replacement
    assert [r.index for r in chosen["train"]] == sorted(r.index for r in chosen["train"])  # file order
    other, _ = splits.sample_roles("agnews", pools, _request(train_n=5, test_n=9), carved=False)
    assert other["train"] == chosen["train"]  # the train draw does not depend on test_n
    with caplog.at_level(logging.WARNING, logger="migu.data"):
        big, capped = splits.sample_roles("agnews", pools, _request(train_n=50), carved=False)
    assert (
        len(big["train"]) == 20
        and capped == [splits.CapRecord("train", 50, 20, 20)]
        and "train_n=50" in caplog.text
    )
    clipped, capped = splits.sample_roles("agnews", pools, _request(train_n=50), carved=True)
    assert len(clipped["train"]) == 20 and capped == []  # the carving recorded it already
