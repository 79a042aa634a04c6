"""The one results reader and writer: typed, strict JSON, clear errors naming the file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from support.results import fake_results

from migu.runner.results import (
    RESULTS_FILE,
    SCHEMA_VERSION,
    ResultsError,
    RunResults,
    format_results,
    load_results,
    write_results,
)


def test_round_trip_and_csv(tmp_path: Path) -> None:
    res = RunResults.from_json(fake_results("lora", {"threshold": 0.7}, 3, 0.6))
    write_results(tmp_path, res)
    back = load_results(tmp_path)
    assert back == res and back.schema_version == SCHEMA_VERSION
    assert back.threshold == 0.7 and back.trained == 3 and back.metric("acc") == pytest.approx(0.6)
    assert load_results(tmp_path / RESULTS_FILE) == res  # the file's path works too
    csv_rows = (tmp_path / "accuracy_matrix.csv").read_text().splitlines()
    assert csv_rows[0] == "after_task,dbpedia,amazon,agnews" and csv_rows[1].startswith("(untrained),20.00")
    assert "ACC 60.00" in format_results(res)


def test_non_finite_numbers_are_written_as_null(tmp_path: Path) -> None:
    data = fake_results("ft", None, 1, 0.5)
    data["timings"] = [{"task": "dbpedia", "final_loss": math.nan}]
    write_results(tmp_path, RunResults.from_json(data))
    text = (tmp_path / RESULTS_FILE).read_text()
    assert "NaN" not in text
    assert json.loads(text)["timings"][0]["final_loss"] is None  # strict JSON parsers accept it


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (None, r"no results\.json in"),
        ('{"name": "x", "matrix": [[0.5', r"results\.json: truncated or not JSON \(line 1"),
        ("[1, 2]", r"results\.json: not a results file"),
        ('{"name": "x"}', r"results\.json: not a migu results file \(missing \['method'"),
        ('{"schema_version": 99, "name": "x"}', r"results\.json: results schema version 99, this migu reads"),
    ],
)
def test_bad_results_files_name_the_file(tmp_path: Path, body: str | None, match: str) -> None:
    if body is not None:
        (tmp_path / RESULTS_FILE).write_text(body)
    with pytest.raises(ResultsError, match=match) as info:
        load_results(tmp_path)
    assert str(tmp_path) in str(info.value)
