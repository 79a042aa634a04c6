"""TaskProvenance: the JSON results store (golden, key order included), reading it back, the files a
run reads, and the digests the pooling check compares."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from support.data import AG_LABELS, rows, write_benchmark

import migu.data.cl_benchmark as cl
import migu.data.cl_files as cl_files
from migu.data import DataError, TaskProvenance, load_task, load_tasks, saved_rows_digest

REPO = Path(__file__).resolve().parents[2]


def golden_bench(root: Path) -> Path:
    """agnews: both splits on disk (2 "-" eval rows, one train sentence also in test) and a dev.json
    distinct from test.json; amazon: no test.json (carved from train, 3 duplicate sentences)."""
    write_benchmark(root, n_train=48, n_test=24)
    ag = root / "TC/agnews"
    train = json.loads((ag / "train.json").read_text())
    unl = [{"sentence": f"no gold {i}", "label": "-"} for i in range(2)]
    (ag / "test.json").write_text(json.dumps([*rows("TC/agnews test", 24, AG_LABELS), train[0], *unl]))
    (ag / "dev.json").write_text(json.dumps(rows("TC/agnews dev", 12, AG_LABELS) + unl[:1]))
    am = root / "SC/amazon"
    am_train = json.loads((am / "train.json").read_text())
    (am / "train.json").write_text(json.dumps(am_train + [am_train[0]] * 3))
    (am / "test.json").unlink()
    return root


def golden(root: Path) -> dict[str, Any]:
    """What load_task wrote into results for golden_bench before the typed record (commit 1bc53f1)."""
    return {
        "agnews": {
            "task": "agnews",
            "category": "TC",
            "path": "TC/agnews",
            "root": str(root),
            "seed": 7,
            "eval_split": "test",
            "train": {
                "source": "train.json",
                "available": 48,
                "pool": 48,
                "requested": None,
                "used": 48,
                "unlabeled_dropped": 0,
                "index_digest": "315e8ec92e816041",
            },
            "test": {
                "source": "test.json",
                "available": 27,
                "pool": 25,
                "requested": 1000,
                "used": 25,
                "unlabeled_dropped": 2,
                "index_digest": "4b6b081604862776",
            },
            "carved": None,
            "capped": [{"role": "test", "requested": 1000, "available": 25, "used": 25}],
            "unlabeled_dropped": 2,
            "unlabeled_kept": 0,
            "train_test_overlap": 1,
            "val": {
                "source": "dev.json",
                "pool": 12,
                "carved_from_train": False,
                "requested": 4,
                "used": 4,
                "seed": 7,
                "index_digest": "7b5024ccd0b8387e",
                "overlap_with_test": 0,
            },
        },
        "amazon": {
            "task": "amazon",
            "category": "SC",
            "path": "SC/amazon",
            "root": str(root),
            "seed": 7,
            "eval_split": "test",
            "train": {
                "source": "train.json",
                "available": 51,
                "pool": 10,
                "requested": 10,
                "used": 10,
                "unlabeled_dropped": 0,
                "index_digest": "8906304ea5d9605c",
            },
            "test": {
                "source": "train.json",
                "available": 51,
                "pool": 34,
                "requested": 6,
                "used": 6,
                "unlabeled_dropped": 0,
                "index_digest": "3d540b3ff944357b",
            },
            "carved": {
                "role": "test",
                "from": "train.json",
                "missing": "test.json",
                "seed": 7,
                "eval_fraction": 0.2,
                "pool": 48,
                "train_pool": 14,
                "test_pool": 34,
                "duplicates_dropped": 3,
                "disjoint": True,
            },
            "capped": [],
            "unlabeled_dropped": 0,
            "unlabeled_kept": 0,
            "train_test_overlap": 0,
            "val": {
                "source": "carved from the training pool (no dev.json)",
                "pool": 14,
                "carved_from_train": True,
                "requested": 4,
                "used": 4,
                "seed": 7,
                "index_digest": "53ac60a52f65c278",
                "overlap_with_test": 0,
            },
        },
    }


@pytest.fixture
def loaded(tmp_path: Path) -> tuple[Path, dict[str, cl.TaskData]]:
    root = golden_bench(tmp_path / "CL_Benchmark")
    tasks = load_tasks(
        ["agnews", "amazon"],
        root,
        train_n=10,
        test_n=6,
        val_n=4,
        seed=7,
        per_task={"agnews": {"train_n": None, "test_n": 1000}},
    )
    return root, tasks


def test_to_json_is_the_historical_dict_key_order_included(loaded: tuple[Path, dict[str, Any]]) -> None:
    root, tasks = loaded
    per_task = {name: t.provenance.to_json() for name, t in tasks.items()}
    # json.dumps keeps key order: equal strings mean the same bytes in results.json
    assert json.dumps(per_task) == json.dumps(golden(root))
    assert {name: t.info for name, t in tasks.items()} == golden(root)  # info is the same JSON


def test_from_json_round_trips(loaded: tuple[Path, dict[str, Any]]) -> None:
    for t in loaded[1].values():
        back = TaskProvenance.from_json(json.loads(json.dumps(t.info)))  # through JSON, as results are
        assert back == t.provenance
        assert json.dumps(back.to_json()) == json.dumps(t.info)


def test_typed_fields_answer_what_readers_used_to_dig_for(loaded: tuple[Path, dict[str, Any]]) -> None:
    root, tasks = loaded
    ag, am = tasks["agnews"].provenance, tasks["amazon"].provenance
    assert ag.task_dir == root / "TC/agnews" and am.task_dir == root / "SC/amazon"
    assert ag.unlabeled_dropped == 2 and ag.capped[0].role == "test" and ag.val is not None
    assert am.carved is not None and am.carved.source == "train.json" and am.carved.duplicates_dropped == 3
    assert ag.scored_rows_digest() == ag.test.index_digest == "4b6b081604862776"
    assert am.scored_rows_digest("val") == "53ac60a52f65c278"
    with pytest.raises(ValueError, match="split must be"):
        ag.scored_rows_digest("train")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ag.seed = 1  # type: ignore[misc]


def test_data_files_are_exactly_the_files_read(
    loaded: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, tasks = loaded
    assert tasks["agnews"].provenance.data_files() == [
        root / "TC/agnews" / f for f in ("labels.json", "train.json", "test.json", "dev.json")
    ]
    assert tasks["amazon"].provenance.data_files() == [
        root / "SC/amazon" / f for f in ("labels.json", "train.json")
    ]
    # and they are the files the loader parses, no more, no fewer
    parsed: list[Path] = []
    real = cl_files.read_json

    def recording(path: Path) -> Any:
        parsed.append(path)
        return real(path)

    monkeypatch.setattr(cl_files, "read_json", recording)
    for name, kwargs in (("agnews", {"val_n": 4}), ("amazon", {"val_n": 4}), ("agnews", {})):
        parsed.clear()
        task = load_task(name, root, **kwargs)
        assert sorted(task.provenance.data_files()) == sorted(set(parsed))


def test_a_dev_copy_of_test_is_compared_but_not_a_data_file(tmp_path: Path) -> None:
    root = write_benchmark(tmp_path)
    d = root / "TC/agnews"
    (d / "dev.json").write_bytes((d / "test.json").read_bytes())
    task = load_task("agnews", root, val_n=3)
    assert task.provenance.val is not None and task.provenance.val.carved_from_train
    assert [p.name for p in task.provenance.data_files()] == ["labels.json", "train.json", "test.json"]


def test_from_json_tolerates_results_that_predate_val_and_digests(
    loaded: tuple[Path, dict[str, Any]],
) -> None:
    old = json.loads(json.dumps(loaded[1]["agnews"].info))
    del old["val"]
    del old["train"]["index_digest"], old["test"]["index_digest"]
    prov = TaskProvenance.from_json(old)
    assert prov.val is None and prov.train.index_digest is None and prov.scored_rows_digest() is None
    with pytest.raises(DataError, match=r"not a task provenance record.*'eval_split'"):
        TaskProvenance.from_json({k: v for k, v in old.items() if k != "eval_split"})
    with pytest.raises(DataError, match="not a task provenance record"):
        TaskProvenance.from_json({"from_task": "yelp", "files": ["train.json"], "end_task": {}})


def test_every_saved_result_reads_back_unchanged() -> None:
    """Each task provenance in the repository's results (written by older versions too) round-trips."""
    entries = [
        entry
        for f in sorted((REPO / "results").glob("**/results.json"))
        for entry in (json.loads(f.read_text()).get("per_task") or {}).values()
        if isinstance(entry, dict) and "eval_split" in entry
    ]
    if not entries:
        pytest.skip("no saved finetune results in this checkout")
    for entry in entries:
        assert json.dumps(TaskProvenance.from_json(entry).to_json()) == json.dumps(entry)


def test_saved_rows_digest_reads_task_entries_only(loaded: tuple[Path, dict[str, Any]]) -> None:
    info = loaded[1]["agnews"].info
    assert saved_rows_digest(info) == "4b6b081604862776"
    assert saved_rows_digest({"eval_split": "test", "test": {"index_digest": "d"}}) == "d"  # a minimal entry
    # the evaluation rows sit under "test" whichever file gave them
    assert saved_rows_digest({"eval_split": "dev", "test": {"index_digest": "d"}}) == "d"
    assert saved_rows_digest({"eval_split": "test", "test": {}}) is None  # predates digests
    # a pretrain run's domain record (its end task nested inside) gives none, as before
    domain = {"from_task": "yelp", "used": 3, "end_task": {"source_task": "yelp", **info}, "blocks": 4}
    assert saved_rows_digest(domain) is None and saved_rows_digest("x") is None
