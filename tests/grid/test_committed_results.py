"""Rows that must not move: every committed ``results/`` summary is rewritten from its cells' own
results.json, byte for byte, by today's code (``migu tune --summarize`` for tune folders, the sweep
summary for sweep folders). A change to grouping, pairing, intervals or table formatting that
would alter a published number fails here."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from migu.grid.sweep import write_summary
from migu.grid.tune import run_tune

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "results"
TUNES = sorted(p.name for p in RESULTS.glob("tune_*") if (p / "tune_summary.md").is_file())
SWEEPS = sorted(
    p.name for p in RESULTS.iterdir() if (p / "summary.md").is_file() and (p / "sweep.yaml").is_file()
)


def test_the_committed_folders_are_found() -> None:
    assert len(TUNES) >= 10 and len(SWEEPS) >= 2


@pytest.mark.parametrize("name", TUNES)
def test_tune_summaries_are_rewritten_byte_for_byte(name: str, tmp_path: Path) -> None:
    copy = shutil.copytree(RESULTS / name, tmp_path / name)
    for f in ("tune_summary.md", "tune_summary.json", "select/sweep.yaml", "test/sweep.yaml"):
        (copy / f).unlink()
    run_tune(REPO / "configs" / "sweeps" / f"{name}.yaml", out=copy, summarize=True)
    for f in ("tune_summary.md", "tune_summary.json", "select/sweep.yaml", "test/sweep.yaml"):
        assert (copy / f).read_bytes() == (RESULTS / name / f).read_bytes(), f"{name}/{f} moved"


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_summaries_are_rewritten_byte_for_byte(name: str, tmp_path: Path) -> None:
    copy = shutil.copytree(RESULTS / name, tmp_path / name)
    for f in ("summary.md", "summary.json", "summary.csv"):
        (copy / f).unlink()
    write_summary(copy)
    for f in ("summary.md", "summary.json", "summary.csv"):
        assert (copy / f).read_bytes() == (RESULTS / name / f).read_bytes(), f"{name}/{f} moved"
