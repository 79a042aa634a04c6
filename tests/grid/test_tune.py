"""The tune summary of chosen settings: pairs settings that chose different values and says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from support.results import fake_results

from migu.grid.spec import Cell
from migu.grid.tune import Candidate, Choice, write_tune_summary


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


def _resolved(cell: Cell) -> dict:
    """A cell's config as its run saved it in results.json."""
    from migu.runner.config import build_run_config
    from migu.runner.plan import resolve_regime

    config = build_run_config(cell.config)
    return {**config.to_dict(), "regime": resolve_regime(config)[0], "task_names": ["agnews", "amazon"]}


def _saved_tune(tmp_path: Path) -> tuple[Path, Path, dict[str, float]]:
    """A tune file over lr x MIGU and its cells' results.json only (as committed: no run_state, no
    checkpoints): off scores best at 1e-3 and MIGU at 3e-3 on validation; test ACC by setting."""
    from support.results import write_tiny_run_config

    from migu.grid.tune import _cells
    from migu.runner.results import RunResults, write_results

    write_tiny_run_config(tmp_path / "tiny.yaml", data={"val_n": 8})
    spec = tmp_path / "tune.yaml"
    spec.write_text(
        "name: tt\nbase: tiny.yaml\nselect: [train.lr]\ntest_seeds: [1, 2]\n"
        "grid:\n  migu: [off, 0.5]\n  train.lr: [1.0e-3, 3.0e-3]\n  seed: [1]\n"
    )
    out = tmp_path / "out"
    val = {("off", 1e-3): 0.7, ("off", 3e-3): 0.5, ("on", 1e-3): 0.6, ("on", 3e-3): 0.8}
    for c in _cells(spec, [], "val")[1]:
        key = ("off" if c.config["migu"] is None else "on", c.config["train"]["lr"])
        res = RunResults(
            name=c.name, method="ft", seed=1, tasks=["agnews", "amazon"], complete=True,
            matrices={"val_acc": [[val[key], val[key]]]}, migu=c.config["migu"],
            metrics={"val_acc": val[key]}, config=_resolved(c),
        )  # fmt: skip
        write_results(out / "select" / c.name, res)
    acc = {"off": 0.60, "on": 0.64}
    for c in _cells(spec, ["grid.seed=[1, 2]"], "test")[1]:
        setting = "off" if c.config["migu"] is None else "on"
        if c.config["train"]["lr"] != {"off": 1e-3, "on": 3e-3}[setting]:
            continue  # not chosen: never run on test
        res = fake_results("ft", c.config["migu"], c.config["seed"], acc[setting] + 0.01 * c.config["seed"])
        res["config"] = _resolved(c)
        (out / "test" / c.name).mkdir(parents=True)
        (out / "test" / c.name / "results.json").write_text(json.dumps(res))
    return spec, out, acc


def test_summarize_rewrites_the_summary_from_results_alone(tmp_path: Path) -> None:
    """`migu tune --summarize` trains nothing (no data directory exists) and chooses from the saved
    validation numbers: off 1e-3, MIGU 3e-3, effect +4 points on every seed."""
    from migu.cli import main

    spec, out, _ = _saved_tune(tmp_path)
    before = {p: p.read_bytes() for p in out.rglob("results.json")}
    assert main(["tune", str(spec), "--out", str(out), "--data", str(tmp_path / "none"), "--summarize"]) == 0
    summary = json.loads((out / "tune_summary.json").read_text())
    assert {(c["setting"], c["chosen"]) for c in summary["choices"]} == {("off", "0.001"), ("T=0.5", "0.003")}
    (effect,) = summary["effects"]
    assert effect["by_seed"]["mean"] == pytest.approx(0.04) and effect["seeds"] == [1, 2]
    assert yaml.safe_load((out / "test" / "sweep.yaml").read_text())["tuned"] == ["train.lr"]
    assert {p: p.read_bytes() for p in out.rglob("results.json")} == before  # results untouched
    assert not list(out.rglob("run_state.json")) and not list(out.rglob("checkpoints"))


def test_summarize_lists_every_missing_or_changed_cell_and_writes_nothing(tmp_path: Path) -> None:
    from migu.grid.tune import run_tune
    from migu.runner.config import ConfigError

    spec, out, _ = _saved_tune(tmp_path)
    off = next((out / "select").glob("migu-off_lr-0.001*"))
    saved = json.loads((off / "results.json").read_text())
    saved["config"]["train"]["lr"] = 0.01  # made with another lr than the cell says
    (off / "results.json").write_text(json.dumps(saved))
    missing = next((out / "test").glob("migu-threshold0.5_*seed-2"))
    (missing / "results.json").unlink()
    with pytest.raises(ConfigError) as err:
        run_tune(spec, out=out, summarize=True)
    assert f"{off.name}: made with another config (train.lr: 0.01 -> 0.001)" in str(err.value)
    with pytest.raises(ConfigError, match=f"{missing.name}: no results.json"):
        (off / "results.json").write_text(json.dumps({**saved, "config": {**saved["config"], "train": {
            **saved["config"]["train"], "lr": 0.001}}}))  # fmt: skip
        run_tune(spec, out=out, summarize=True)
    assert not (out / "tune_summary.json").exists() and not (out / "select" / "sweep.yaml").exists()


@pytest.mark.slow
def test_a_tune_reuses_copied_results_and_trains_only_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch run elsewhere (select/ results.json only, no run state) is reused: only the chosen
    settings' test cells train, and the saved selection files stay byte-identical."""
    from support.data import write_benchmark

    from migu.cli import main
    from migu.grid import tune as tune_mod

    spec, out, _ = _saved_tune(tmp_path)
    for f in (out / "test").rglob("results.json"):
        f.unlink()
    before = {p: p.read_bytes() for p in (out / "select").rglob("results.json")}
    trained: list[str] = []
    real = tune_mod.execute
    monkeypatch.setattr(tune_mod, "execute", lambda plan: trained.append(plan.run_dir.name) or real(plan))
    data = write_benchmark(tmp_path / "CL_Benchmark", n_train=40, n_test=16)
    assert main(["tune", str(spec), "--data", str(data), "--out", str(out)]) == 0
    assert sorted(trained) == sorted(p.name for p in (out / "test").iterdir() if p.is_dir())
    assert len(trained) == 4 and all(("0.001" in n) == ("off" in n) for n in trained)  # off@1e-3, MIGU@3e-3
    assert {p: p.read_bytes() for p in (out / "select").rglob("results.json")} == before


def test_a_tune_refuses_copied_results_made_with_another_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from migu.grid import tune as tune_mod
    from migu.runner.config import ConfigError

    spec, out, _ = _saved_tune(tmp_path)
    cell = next((out / "select").glob("migu-threshold0.5_lr-0.003*"))
    saved = json.loads((cell / "results.json").read_text())
    saved["config"]["migu"]["threshold"] = 0.9
    (cell / "results.json").write_text(json.dumps(saved))
    monkeypatch.setattr(tune_mod, "execute", lambda plan: pytest.fail(f"trained {plan.run_dir}"))
    with pytest.raises(
        ConfigError, match=rf"{cell.name}: made with another config \(migu.threshold: 0.9 -> 0.5\)"
    ):
        tune_mod.run_tune(spec, out=out)
    assert json.loads((cell / "results.json").read_text()) == saved  # never overwritten
