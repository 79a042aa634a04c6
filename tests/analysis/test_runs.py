"""Similarity and magnitude analyses on a tiny finished run (checkpoints restored, nothing retrained)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from support.results import RUN_TASKS, RUN_THRESHOLD

from migu.analysis.similarity import SimilarityOutput, compute_similarity, format_similarity
from migu.cli import main

LAYER = "bert.encoder.layer.1.intermediate.dense"  # first FFN linear of the last of 2 blocks


def _rows(path: Path) -> list[list[str]]:
    with path.open() as fh:
        return list(csv.reader(fh))


def test_similarity_files_and_numbers(similarity_out: tuple[SimilarityOutput, Path]) -> None:
    res, out = similarity_out
    assert res.layer == LAYER
    for name in (
        "similarity.json",
        "similarity_overlap.csv",
        "similarity_layer.png",
        "similarity_mean.png",
        "similarity_by_layer.png",
        "similarity_left_run_layer.csv",
        "similarity_right_run_mean.csv",
    ):
        assert (out / name).is_file(), name
    data = json.loads((out / "similarity.json").read_text())
    assert data["layer"] == LAYER
    run = data["runs"][0]
    assert run["tasks"] == RUN_TASKS and run["threshold"] == RUN_THRESHOLD
    assert run["checkpoint_per_task"] == {"agnews": 1, "amazon": 1}  # both on the model after the last task
    assert run["samples_per_task"] == {"agnews": 10, "amazon": 10}
    assert len(run["layers"]) == 12  # 2 blocks x (Q, K, V, O, 2 FFN)
    lay = run["layers"][LAYER]
    assert lay["d_out"] == 64 and lay["kept"] == 32 and lay["chance"] == 0.5
    m = np.array(lay["overlap"])
    np.testing.assert_allclose(np.diag(m), 1.0)
    np.testing.assert_allclose(m, m.T)
    assert 0.0 <= m[0, 1] <= 1.0
    # the same checkpoint and rows under two labels give the same matrices
    np.testing.assert_allclose(res.runs[0].overlap[LAYER], res.runs[1].overlap[LAYER])

    long = _rows(out / "similarity_overlap.csv")
    assert long[0] == [
        "run",
        "layer",
        "component",
        "d_out",
        "kept",
        "threshold",
        "task_a",
        "task_b",
        "overlap",
    ]
    assert len(long) == 1 + 2 * 12 * 4
    square = _rows(out / "similarity_left_run_layer.csv")
    assert square[0] == ["task", *RUN_TASKS] and [r[0] for r in square[1:]] == RUN_TASKS
    assert float(square[1][1]) == pytest.approx(1.0)
    assert "between tasks" in format_similarity(res)


def test_similarity_figures(similarity_out: tuple[SimilarityOutput, Path]) -> None:
    res, _ = similarity_out
    fig = res.figures["similarity_layer"]
    panels, colorbar = fig.axes[:2], fig.axes[2]
    assert [ax.get_title().splitlines()[0] for ax in panels] == ["left run", "right run"]
    for ax in panels:
        assert [t.get_text() for t in ax.get_xticklabels()] == RUN_TASKS
        assert [t.get_text() for t in ax.get_yticklabels()] == RUN_TASKS
        assert "chance level 50 %" in ax.get_title()
        assert len(ax.texts) == 4  # every cell annotated
        assert ax.texts[0].get_text() == "100"
    assert "(%)" in colorbar.get_ylabel()
    assert LAYER in fig._suptitle.get_text()
    by_layer = res.figures["similarity_by_layer"].axes[0]
    assert "(%)" in by_layer.get_ylabel() and by_layer.get_xlabel().startswith("layer")
    assert len(by_layer.get_xticklabels()) == 12
    assert by_layer.get_ylim() == (0.0, 100.0)
    assert "mean over 12 layers" in res.figures["similarity_mean"]._suptitle.get_text()


def test_similarity_own_checkpoints_and_threshold(finished_run: Path) -> None:
    sim = compute_similarity(finished_run, samples=4, checkpoint="own", threshold=0.75)
    assert sim.checkpoints == [0, 1] and sim.threshold == 0.75
    assert sim.d_out[LAYER] == 64 and sim.chance(LAYER) == 16 / 64


def test_magnitudes_command(finished_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "mag"
    rc = main(
        [
            "analyze",
            "magnitudes",
            str(finished_run),
            "--tasks",
            "amazon",
            "agnews",
            "--window",
            "4",
            "--layer",
            "layer.0.output.dense",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    rows = _rows(out / "magnitudes.csv")
    assert rows[0] == [
        "row",
        "raw_amazon",
        "smooth_amazon",
        "updated_amazon",
        "raw_agnews",
        "smooth_agnews",
        "updated_agnews",
    ]
    assert len(rows) == 1 + 32  # output.dense of a hidden-32 model has 32 rows
    raw = np.array([float(r[1]) for r in rows[1:]])
    assert raw.sum() == pytest.approx(1.0, rel=1e-4)  # one token-averaged L1-normalised distribution
    assert sum(int(r[3]) for r in rows[1:]) == 16  # T = 0.5 of the run: 32 - 16 rows updated
    meta = json.loads((out / "magnitudes.json").read_text())
    assert meta["layer"] == "bert.encoder.layer.0.output.dense" and meta["tasks"] == ["amazon", "agnews"]
    assert "moving average over 4" in meta["smoothing"]
    assert (out / "magnitudes.png").stat().st_size > 0


def test_bad_inputs(finished_run: Path, tmp_path: Path) -> None:
    assert main(["analyze", "magnitudes", str(finished_run), "--tasks", "yelp", "-o", str(tmp_path)]) == 2
    assert main(["analyze", "similarity", str(tmp_path), "-o", str(tmp_path)]) == 2  # not a run dir
