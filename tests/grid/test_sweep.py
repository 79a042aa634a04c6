"""``migu sweep``: grid expansion, cell configs, the summary, and one aggregation with the analysis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from support.data import write_benchmark
from support.results import write_tiny_run_config

from migu.analysis.groups import group_cells, read_sweep_dir
from migu.cli import main
from migu.grid.spec import load_sweep
from migu.runner.config import ConfigError


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_grid_expands_to_validated_cells(tmp_path: Path) -> None:
    _write(tmp_path / "run.yaml", "tasks: [a]\n")
    sweep = _write(
        tmp_path / "sw.yaml",
        "name: s\nbase: run.yaml\noverrides: [train.lr=0.5]\ngrid:\n  method: [ft, lora]\n  seed: [1, 2]\n",
    )
    name, cells = load_sweep(sweep)
    assert name == "s" and [c.name for c in cells] == [
        "method-ft_seed-1",
        "method-ft_seed-2",
        "method-lora_seed-1",
        "method-lora_seed-2",
    ]
    assert cells[2].config["method"]["name"] == "lora" and cells[2].config["seed"] == 1
    assert all(c.config["train"]["lr"] == 0.5 and c.config["name"] == f"s/{c.name}" for c in cells)


def test_a_bad_cell_fails_before_anything_runs(tmp_path: Path) -> None:
    _write(tmp_path / "run.yaml", "tasks: [a]\n")
    sweep = _write(tmp_path / "sw.yaml", "base: run.yaml\ngrid:\n  train.lr: [0.1, -1]\n")
    with pytest.raises(ConfigError, match=r"cell lr--1: .*train\.lr must be a number > 0, got -1"):
        load_sweep(sweep)
    with pytest.raises(ConfigError, match="non-empty 'grid'"):
        load_sweep(_write(tmp_path / "none.yaml", "base: run.yaml\n"))


def test_sweep_bundles_and_labels(tmp_path: Path) -> None:
    _write(tmp_path / "run.yaml", "tasks: [a]\ntrain: {lr: 0.1}\n")
    sweep = _write(
        tmp_path / "sw.yaml",
        "name: s\nbase: run.yaml\ngrid:\n  recipe:\n"
        "    - {label: ft, method.name: ft, train.lr: 1.0e-4}\n"
        "    - {label: lora, method.name: lora, train.lr: 1.0e-3}\n"
        "  migu: [off, on, 0.3]\n",
    )
    name, cells = load_sweep(sweep)
    assert name == "s" and len(cells) == 6
    by_name = {c.name: c.config for c in cells}
    assert by_name["recipe-lora_migu-on"]["train"]["lr"] == 1e-3
    assert by_name["recipe-lora_migu-on"]["method"]["name"] == "lora"
    assert by_name["recipe-ft_migu-off"]["migu"] is None
    assert by_name["recipe-ft_migu-threshold0.3"]["migu"] == {"threshold": 0.3}


def test_sweep_grid_override(tmp_path: Path) -> None:
    _write(tmp_path / "run.yaml", "tasks: [a]\n")
    sweep = _write(tmp_path / "sw.yaml", "base: run.yaml\ngrid:\n  migu: [off, on, 0.0]\n  seed: [1, 2, 3]\n")
    _, cells = load_sweep(sweep, ["grid.seed=[7]", "train.lr=0.5"])
    _, dotted = load_sweep(sweep, ["grid.migu.threshold=[0.1, 0.2]"])
    assert len(dotted) == 18 and {c.values["migu.threshold"] for c in dotted} == {0.1, 0.2}
    assert [c.values["seed"] for c in cells] == [7, 7, 7]
    # A threshold of 0.0 is MIGU on at T = 0 (plain training through the masker), not "off".
    assert [c.config["migu"] for c in cells] == [None, {}, {"threshold": 0.0}]
    assert all(c.config["train"]["lr"] == 0.5 for c in cells)


def _table_rows(markdown: str) -> list[str]:
    """The data rows of the first Markdown table in ``markdown``."""
    rows: list[str] = []
    for line in markdown.splitlines():
        if line.startswith("|"):
            rows.append(line)
        elif rows:  # the first table has ended (the effects table follows it)
            break
    return [r for r in rows[1:] if not r.startswith("|-")]  # header and separator dropped


@pytest.mark.slow
def test_sweep_and_analyze_sweep_report_the_same_numbers(tmp_path: Path) -> None:
    """Issue 11.1: one aggregation: summary.md of `migu sweep` and the table of `migu analyze sweep`."""
    data = write_benchmark(tmp_path / "CL_Benchmark", n_train=16, n_test=8)
    write_tiny_run_config(tmp_path / "tiny.yaml")
    sweep = _write(
        tmp_path / "sw.yaml", "name: tw\nbase: tiny.yaml\ngrid:\n  migu: [off, 0.5]\n  seed: [1, 2]\n"
    )
    out = tmp_path / "sw"
    assert main(["sweep", str(sweep), "--data", str(data), "--out", str(out)]) == 0
    assert main(["analyze", "sweep", str(out), "-o", str(tmp_path / "analysis")]) == 0
    ours = _table_rows((out / "summary.md").read_text())
    theirs = _table_rows((tmp_path / "analysis" / "sweep_summary.md").read_text())
    assert len(ours) == 2 and ours == theirs
    # and the numbers are the runs' own: mean over the two seeds of each group's ACC
    summary = json.loads((out / "summary.json").read_text())
    for row, group in zip(summary["rows"], group_cells([read_sweep_dir(out)]), strict=True):
        accs = [
            json.loads((out / c / "results.json").read_text())["metrics"]["acc"] for c in _cells(out, row)
        ]
        assert row["acc_mean"] == pytest.approx(sum(accs) / 2) and row["seeds"] == [1, 2] == group.seeds


def _cells(out: Path, row: dict) -> list[str]:
    label = "off" if row["migu"] == "off" else "threshold0.5"
    return [f"migu-{label}_seed-{s}" for s in (1, 2)]


@pytest.mark.slow
def test_tune_selects_on_validation_and_touches_test_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18.2: the grid runs on validation rows only; the chosen setting is scored on test."""
    from migu.runner.regimes import finetune as stages_mod

    data = write_benchmark(tmp_path / "CL_Benchmark", n_train=40, n_test=16)
    write_tiny_run_config(tmp_path / "tiny.yaml", data={"val_n": 8})
    spec = (
        "name: tt\nbase: tiny.yaml\nselect: [recipe]\ntest_seeds: [1, 2, 3]\n"
        "grid:\n  recipe:\n    - {label: ft-slow, method.name: ft, train.lr: 1.0e-9}\n"
        "    - {label: ft-fast, method.name: ft, train.lr: 3.0e-3}\n  migu: [off, 0.5]\n  seed: [1, 2]\n"
    )
    tune = _write(tmp_path / "tune.yaml", spec)
    splits: list[tuple[str, str]] = []
    real = stages_mod.evaluate

    def spy(model, family, tasks, batch_size, desc="eval", split="test", accelerator=None):
        splits.append((desc, split))
        return real(model, family, tasks, batch_size, desc, split, accelerator)

    monkeypatch.setattr(stages_mod, "evaluate", spy)
    out = tmp_path / "out"
    assert main(["tune", str(tune), "--data", str(data), "--out", str(out)]) == 0
    summary = json.loads((out / "tune_summary.json").read_text())
    choices = {(c["method"], c["setting"]): c for c in summary["choices"]}
    assert set(choices) == {("ft", "off"), ("ft", "T=0.5")}
    for c in choices.values():
        assert [cand["label"] for cand in c["candidates"]] == ["ft-slow", "ft-fast"]
        means = {cand["label"]: sum(cand["scores"]) / len(cand["scores"]) for cand in c["candidates"]}
        for cand in c["candidates"]:  # the scores are the saved validation ACC of each cell
            for cell, score in zip(cand["cells"], cand["scores"], strict=True):
                saved = json.loads((out / "select" / cell / "results.json").read_text())
                row = saved["matrices"]["val_acc"][-1]
                assert score == pytest.approx(sum(row) / len(row))
        assert c["chosen"] == max(means, key=means.get) and "highest mean val_acc" in c["reason"]
    # 8 grid cells scored on validation only, then the chosen setting of each group at the 3
    # test_seeds (2 groups x 3 seeds) on test
    assert len(list((out / "select").glob("*/results.json"))) == 8
    tested = sorted(p.parent.name for p in (out / "test").glob("*/results.json"))
    expected = {
        f"recipe-{choices[('ft', setting)]['chosen']}_migu-{part}_seed-{seed}"
        for setting, part in (("off", "off"), ("T=0.5", "threshold0.5"))
        for seed in (1, 2, 3)
    }
    assert set(tested) == expected
    assert sorted(n.rsplit("seed-", 1)[1] for n in tested) == ["1", "1", "2", "2", "3", "3"]
    n_val = sum(split == "val" for _, split in splits)
    n_test = sum(split == "test" for _, split in splits)
    assert n_val == 8 * 3 and n_test == 6 * 3  # (untrained + 2 tasks) scorings per run
    for cell in (out / "select").glob("*/results.json"):
        saved = json.loads(cell.read_text())
        assert set(saved["matrices"]) == {"val_acc", "val_f1"}  # test rows never scored in selection
    assert "MIGU effect on test ACC" in (out / "tune_summary.md").read_text()
    # the test directory says what was chosen per setting, so every reader pairs across the choices
    assert yaml.safe_load((out / "test" / "sweep.yaml").read_text())["tuned"] == ["recipe"]
    assert len(summary["effects"]) == 1 and {t["chosen"]["recipe"] for t in summary["test"]} <= {
        "ft-slow",
        "ft-fast",
    }
