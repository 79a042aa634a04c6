"""The tune summary of chosen settings: pairs settings that chose different values and says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.results import fake_results

from migu.runner.sweep import Cell
from migu.runner.tune import Candidate, Choice, write_tune_summary


def _final(out: Path, chosen: dict[str, float], acc: dict[str, float]) -> list[Cell]:
    """Test cells of LoRA off/on at their chosen lrs, seeds 1-3, with results on disk."""
    cells = []
    for seed in (1, 2, 3):
        for setting, lr in chosen.items():
            migu = None if setting == "off" else {"threshold": 0.7}
            values = {"method": "lora", "migu": setting, "train.lr": lr, "seed": seed}
            cell = Cell(values, f"lora_{setting}_lr-{lr:g}_seed-{seed}", {})
            (out / "test" / cell.name).mkdir(parents=True)
            res = fake_results("lora", migu, seed, acc[setting] + 0.01 * seed)
            (out / "test" / cell.name / "results.json").write_text(json.dumps(res))
            cells.append(cell)
    return cells


def _choices(chosen: dict[str, float]) -> list[Choice]:
    out = []
    for setting, lr in chosen.items():
        cand = Candidate(f"{lr:g}", ["x"], [42], [0.6])
        out.append(
            Choice("lora", "off" if setting == "off" else "T=0.7", "", "val_acc", [cand], cand.label, "best")
        )
    return out


@pytest.mark.parametrize("same", [True, False])
def test_tune_summary_pairs_the_chosen_settings_and_says_when_they_differ(tmp_path: Path, same: bool) -> None:
    chosen = {"off": 1e-3, "on": 1e-3 if same else 3e-3}
    final = _final(tmp_path, chosen, {"off": 0.60, "on": 0.62})
    summary = write_tune_summary(tmp_path, "t", _choices(chosen), final, ["train.lr"], "val_acc")
    (effect,) = summary["effects"]
    assert effect["by_seed"]["mean"] == pytest.approx(0.02)  # +2 points on every seed, paired
    assert [t["chosen"] for t in summary["test"]] == [{"train.lr": f"{lr:g}"} for lr in chosen.values()]
    note = "lora: without and with MIGU chose different train.lr"
    assert (note in summary["markdown"]) is (not same)
