"""Integration tests on the real CL_Benchmark copy ($MIGU_DATA or ../shared/data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.data import REAL_ROOT

from migu.data import DataError, TaskProvenance, get_order, load_task, load_tasks


@pytest.mark.skipif(
    REAL_ROOT is None, reason="real CL_Benchmark not found (set MIGU_DATA or add ../shared/data)"
)
def test_real_cl_benchmark() -> None:
    assert REAL_ROOT is not None
    # dbpedia ships no train split: it is carved out of test, disjoint and recorded.
    db = load_task("dbpedia", REAL_ROOT, train_n=200, test_n=100, seed=42)
    assert (len(db.train), len(db.test)) == (200, 100)
    assert not {e.sentence for e in db.train} & {e.sentence for e in db.test}
    assert db.info["carved"]["from"] == "test.json" and db.info["carved"]["pool"] == 7600
    assert len(db.labels) == 14 and db.train[0].input.endswith("\nAnswer:")

    # MNLI: 131 "-" rows in test, dropped by default, kept on request.
    assert load_task("mnli", REAL_ROOT, train_n=10).info["unlabeled_dropped"] == 131
    assert load_task("mnli", REAL_ROOT, train_n=10, keep_unlabeled=True).info["unlabeled_kept"] == 131

    # The proxies load; every task of the paper's orders except yahoo has data.
    loaded = load_tasks(get_order("long_proxy").tasks, REAL_ROOT, train_n=8, test_n=8)
    assert all(len(d.train) == 8 and len(d.test) == 8 for d in loaded.values())
    with pytest.raises(DataError, match=r"(?s)1 problem\(s\).*'yahoo'"):
        load_tasks(get_order("order4").tasks, REAL_ROOT)
    with pytest.raises(DataError, match="yahoo"):
        load_task("yahoo", REAL_ROOT)


@pytest.mark.slow
@pytest.mark.skipif(
    REAL_ROOT is None, reason="real CL_Benchmark not found (set MIGU_DATA or add ../shared/data)"
)
def test_standard_proxy_per_task_is_unchanged() -> None:
    """configs/cpu/standard_proxy.yaml's per_task JSON (dbpedia, amazon, agnews; 1000/500 rows, seed
    42) byte for byte as load_tasks wrote it before the typed provenance (commit 1bc53f1)."""
    assert REAL_ROOT is not None
    tasks = load_tasks(["dbpedia", "amazon", "agnews"], REAL_ROOT, train_n=1000, test_n=500, seed=42)
    per_task = json.dumps({name: t.info for name, t in tasks.items()})
    before = (Path(__file__).parent / "standard_proxy_per_task.json").read_text().strip()
    assert per_task.replace(json.dumps(str(REAL_ROOT))[1:-1], "<ROOT>") == before
    assert all(TaskProvenance.from_json(t.info) == t.provenance for t in tasks.values())
