"""Grouping finished cells: recipe bundles pair with and without MIGU, and keep what tells them apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.results import fake_results, write_sweep

from migu.analysis.effects import base_method, effect_sections, effects_table, paired_effects
from migu.analysis.groups import group_cells, pool_sweeps, read_sweep_dir
from migu.analysis.tables import method_table, summary_rows
from migu.grid.spec import load_sweep
from migu.grid.sweep import write_summary
from migu.runner.results import ResultsError

SWEEPS = Path(__file__).resolve().parents[2] / "configs" / "sweeps"


def _results_of(config: dict[str, Any], acc: float) -> dict[str, Any]:
    migu = config["migu"]
    return fake_results(
        config["method"]["name"], None if migu is None else {"threshold": 0.7, **migu}, config["seed"], acc
    )


@pytest.mark.parametrize(
    "sweep", ["proxy_baselines.yaml", "das_proxy_methods.yaml", "das_proxy_ft_migu.yaml"]
)
def test_every_method_of_a_committed_sweep_gets_its_migu_effect(sweep: str, tmp_path: Path) -> None:
    """Bundles like {label: ewc+migu, method.name: ewc, train.lr: 1e-4, migu: {}} differ from their
    MIGU-off twin only by what the results record, so the two pair (they did not: the label kept them
    apart as 'other settings')."""
    name, cells = load_sweep(SWEEPS / sweep)
    rows = [
        (c.name, c.values, _results_of(c.config, 0.6 if c.config["migu"] is not None else 0.5)) for c in cells
    ]
    groups = group_cells([read_sweep_dir(write_sweep(tmp_path / name, name, rows))])
    assert all(g.extra == "" for g in groups)
    with_migu = {c.config["method"]["name"] for c in cells if c.config["migu"] is not None}
    effects = paired_effects(groups)
    assert {e.method for e in effects} == with_migu and len(effects) == len(with_migu)
    for e in effects:
        assert e.seeds == [42, 1024, 2048] and e.by_seed.mean == pytest.approx(0.1)


def test_bundles_of_one_method_stay_apart_by_what_differs(tmp_path: Path) -> None:
    """Two LoRA recipes at different learning rates are two groups named by the lr, not the label; a key
    every bundle of a method shares (the rank) is not shown; plain grid keys are always shown."""
    lora = {"method.name": "lora", "method.r": 8}
    cells = []
    for lr in (1e-3, 3e-3):
        for migu in (None, {}):
            label = f"lora-{lr:g}" + ("+migu" if migu is not None else "")
            values = {
                "recipe": {"label": label, **lora, "train.lr": lr, "migu": migu},
                "data.test_n": 50,
                "seed": 1,
            }
            res = fake_results("lora", None if migu is None else {"threshold": 0.7}, 1, 0.5)
            cells.append((f"{label}-1", values, res))
    groups = group_cells([read_sweep_dir(write_sweep(tmp_path / "s", "s", cells))])
    assert sorted((g.extra, g.setting) for g in groups) == [
        ("data.test_n=50, train.lr=0.001", "T=0.7"),
        ("data.test_n=50, train.lr=0.001", "off"),
        ("data.test_n=50, train.lr=0.003", "T=0.7"),
        ("data.test_n=50, train.lr=0.003", "off"),
    ]
    assert sorted(e.extra for e in paired_effects(groups)) == [
        "data.test_n=50, train.lr=0.001",
        "data.test_n=50, train.lr=0.003",
    ]


def test_a_tuned_test_dir_pairs_settings_that_chose_different_learning_rates(tmp_path: Path) -> None:
    """`migu tune` chose lr 1e-3 for LoRA and 3e-3 for LoRA+MIGU: its test/ directory marks train.lr as
    tuned, so the two pair (+4 points on every seed) and the table names each one's lr; the same cells
    in a plain sweep directory are four settings apart by lr, with no effect to pair."""
    cells = []
    for seed in (42, 1024, 2048):
        for lr, migu in ((1e-3, None), (3e-3, {"threshold": 0.7})):
            values = {"method": "lora", "migu": "on" if migu else "off", "train.lr": lr, "seed": seed}
            res = fake_results("lora", migu, seed, 0.54 if migu else 0.50)
            cells.append((f"lora_{values['migu']}_lr-{lr:g}_seed-{seed}", values, res))
    tuned = group_cells([read_sweep_dir(write_sweep(tmp_path / "t", "t", cells, tuned=["train.lr"]))])
    assert [(g.setting, g.extra, g.tuned) for g in tuned] == [
        ("off", "", {"train.lr": "0.001"}),
        ("T=0.7", "", {"train.lr": "0.003"}),
    ]
    (effect,) = paired_effects(tuned)
    assert effect.seeds == [42, 1024, 2048] and effect.by_seed.mean == pytest.approx(0.04)
    header, rows = method_table(tuned)
    assert header[:4] == ["method", "MIGU", "chosen train.lr", "seeds"]
    assert [r[:3] for r in rows] == [["LoRA", "off", "0.001"], ["LoRA", "T=0.7", "0.003"]]
    plain = group_cells([read_sweep_dir(write_sweep(tmp_path / "p", "p", cells))])
    assert {g.extra for g in plain} == {"train.lr=0.001", "train.lr=0.003"} and not paired_effects(plain)


def test_a_bad_tuned_entry_names_the_file(tmp_path: Path) -> None:
    root = write_sweep(tmp_path / "t", "t", [])
    (root / "sweep.yaml").write_text("name: t\ntuned: train.lr\ncells: []\n")
    with pytest.raises(ResultsError, match=r"sweep.yaml: 'tuned' must be a list"):
        read_sweep_dir(root)


def _pretrain_results(migu: dict[str, Any] | None, seed: int, mf1: float, acc: float) -> dict[str, Any]:
    """A finished continual pre-training results body: two domains, end-task MF1/ACC matrices."""
    mf1_m = [[mf1 + 0.05, None], [mf1, mf1]]
    acc_m = [[acc + 0.04, None], [acc, acc]]
    return {
        "name": f"pt-{seed}",
        "method": "ft",
        "migu": migu,
        "seed": seed,
        "tasks": ["reviews", "news"],
        "complete": True,
        "regime": "pretrain",
        "primary": "mf1",
        "matrices": {"mf1": mf1_m, "acc": acc_m},
        "metrics": {
            "final_mf1": mf1,
            "final_acc": acc,
            "forward_mf1": mf1 + 0.025,
            "forward_acc": acc + 0.02,
            "forgetting_mf1": 0.025,
            "forgetting_acc": 0.02,
        },
    }


def test_a_pretrain_sweep_is_summarized_by_end_task_mf1_and_acc(tmp_path: Path) -> None:
    """Continual pre-training runs carry final/forward/forgetting MF1 and ACC, not finetuning's ACC/BWT:
    the table shows those, and the MIGU effect is paired on both (diffs +1/+2/+3 ACC points, +2 MF1)."""
    cells = []
    for i, seed in enumerate((1, 2, 3)):
        for migu in (None, {"threshold": 0.7}):
            on = migu is not None
            res = _pretrain_results(
                migu, seed, 0.60 + (0.02 if on else 0.0), 0.70 + (0.01 * (i + 1) if on else 0)
            )
            cells.append(
                (
                    f"seed-{seed}_migu-{'on' if on else 'off'}",
                    {"seed": seed, "migu": "on" if on else "off"},
                    res,
                )
            )
    sweep = read_sweep_dir(write_sweep(tmp_path / "pt", "pt", cells))
    groups = group_cells([sweep])
    header, rows = method_table(groups)
    assert header[3:] == [
        "MF1 (%)",
        "ACC (%)",
        "forward MF1 (%)",
        "forward ACC (%)",
        "forgetting MF1 (%)",
        "forgetting ACC (%)",
    ]
    assert rows[0][:5] == ["FT", "off", "3", "60.00 ± 0.00", "70.00 ± 0.00"]
    assert rows[1][3] == "62.00 ± 0.00" and rows[1][4] == "72.00 ± 1.00"
    sections = effect_sections(groups)
    assert set(sections) == {"migu", "migu_mf1"}
    (acc,), (mf1,) = sections["migu"], sections["migu_mf1"]
    assert acc.metric == "final_acc" and acc.by_seed.mean == pytest.approx(0.02)
    assert acc.by_seed.high - acc.by_seed.mean == pytest.approx(4.302653 * 0.01 / 3**0.5, rel=1e-5)
    assert mf1.metric == "final_mf1" and mf1.by_seed.mean == pytest.approx(0.02) and acc.by_rows is None
    assert "final_mf1_mean" in summary_rows(groups)[0] and "acc_mean" not in summary_rows(groups)[0]
    md = write_summary(tmp_path / "pt")
    assert "MIGU effect on macro-F1" in md and "72.00 ± 1.00" in md


def test_pretrain_end_task_rows_give_an_acc_bootstrap_and_no_mf1_one(tmp_path: Path) -> None:
    """With the end tasks' per-row 0/1 kept, the final-ACC effect gets its bootstrap over test rows
    (here every row flips from wrong to right on one of two end tasks: +50 points, a zero-width
    interval); the MF1 effect gets none, since the rows resample accuracy, not F1."""
    cells = []
    for seed in (1, 2):
        for on in (False, True):
            res = _pretrain_results({"threshold": 0.7} if on else None, seed, 0.6, 0.5 + (0.5 if on else 0))
            res["final_correct"] = {"test": {"reviews": [1] * 10, "news": [1 if on else 0] * 10}}
            cells.append((f"seed-{seed}_migu-{on}", {"seed": seed, "migu": "on" if on else "off"}, res))
    groups = group_cells([read_sweep_dir(write_sweep(tmp_path / "pt", "pt", cells))])
    sections = effect_sections(groups)
    (acc,), (mf1,) = sections["migu"], sections["migu_mf1"]
    assert acc.by_rows is not None and mf1.by_rows is None
    assert (acc.by_rows.mean, acc.by_rows.low, acc.by_rows.high) == pytest.approx((0.5, 0.5, 0.5))


def test_each_baseline_is_paired_against_its_plain_base_method(tmp_path: Path) -> None:
    """FT 0.50, FT+MIGU 0.52, EWC 0.53, EWC+MIGU 0.56, LoRA 0.40, LoRA+EWC 0.45 on every seed (plus a
    seed-dependent shift shared by all): EWC and EWC+MIGU pair with plain FT (+3, +6), LoRA+EWC with
    LoRA (+5), EWC without MIGU with FT+MIGU (+1); FT and LoRA themselves get no base row."""
    accs = {
        ("ft", False): 0.50,
        ("ft", True): 0.52,
        ("ewc", False): 0.53,
        ("ewc", True): 0.56,
        ("lora", False): 0.40,
        ("lora_ewc", False): 0.45,
    }
    cells = []
    for seed, shift in ((42, 0.0), (1024, 0.04), (2048, -0.03)):
        for (method, on), acc in accs.items():
            values = {"method": method, "migu": "on" if on else "off", "seed": seed}
            res = fake_results(method, {"threshold": 0.7} if on else None, seed, acc + shift)
            cells.append((f"{method}_{values['migu']}_seed-{seed}", values, res))
    groups = group_cells([read_sweep_dir(write_sweep(tmp_path / "b", "b", cells))])
    sections = effect_sections(groups)
    got = {(e.method, e.setting, e.baseline): e.by_seed.mean for e in sections["vs_base"]}
    assert got == pytest.approx(
        {("ewc", "off", "FT"): 0.03, ("ewc", "T=0.7", "FT"): 0.06, ("lora_ewc", "off", "LoRA"): 0.05}
    )
    (vs_migu,) = sections["vs_base_migu"]
    assert (vs_migu.method, vs_migu.baseline, vs_migu.contrast) == ("ewc", "FT, T=0.7", "off vs FT, T=0.7")
    assert vs_migu.by_seed.mean == pytest.approx(0.01)
    _, rows = effects_table(sections["vs_base"])
    assert [r[:2] for r in rows] == [["EWC", "off vs FT"], ["EWC", "T=0.7 vs FT"], ["LoRAEWC", "off vs LoRA"]]
    assert base_method("ft") is None and base_method("lora") is None and base_method("das") == "ft"
    assert base_method("inclora") == "lora" and base_method("not_a_method") is None


def test_no_base_row_without_the_base_or_with_two_candidates(tmp_path: Path) -> None:
    """A sweep without FT has nothing to pair a baseline with; two FT groups (two lrs) are not guessed
    between when the baseline's own settings match neither."""
    cells = []
    for seed in (1, 2):
        cells.append((f"ewc-{seed}", {"method": "ewc", "seed": seed}, fake_results("ewc", None, seed, 0.5)))
    groups = group_cells([read_sweep_dir(write_sweep(tmp_path / "a", "a", cells))])
    assert "vs_base" not in effect_sections(groups)
    for lr in (1e-4, 3e-4):
        for seed in (1, 2):
            values = {"method": "ft", "train.lr": lr, "seed": seed}
            cells.append((f"ft-{lr:g}-{seed}", values, fake_results("ft", None, seed, 0.4)))
    cells = [(n, {**v, "train.lr": v.get("train.lr", 1e-3)}, r) for n, v, r in cells]
    groups = group_cells([read_sweep_dir(write_sweep(tmp_path / "c", "c", cells))])
    assert {g.extra for g in groups if g.method == "ft"} == {"train.lr=0.0001", "train.lr=0.0003"}
    assert "vs_base" not in effect_sections(groups)


def _tuned_test_dir(root: Path, recipes: dict[str, tuple[str, bool, float, float]], **config: Any) -> Path:
    """A `migu tune` test/ directory: recipe label -> (method, MIGU on, lr, ACC), seeds 1 and 2 (seed 2
    one point higher); ``config`` updates every run's resolved config."""
    cells = []
    for label, (method, on, lr, acc) in recipes.items():
        bundle = {"label": label, "method.name": method, "migu": {} if on else None}
        for seed in (1, 2):
            res = fake_results(method, {"threshold": 0.7} if on else None, seed, acc + (seed - 1) / 100)
            res["config"] = {
                **res["config"],
                "name": f"{root.parent.name}/{label}-{seed}",
                "seed": seed,
                "data_root": f"/data/{root.parent.name}",
                "method": {"name": method},
                "train": {"lr": lr, "batch_size": 16},
                **config,
            }
            values = {"recipe": bundle, "train.lr": lr, "seed": seed}
            cells.append((f"recipe-{label}_seed-{seed}", values, res))
    return write_sweep(root, "test", cells, tuned=["train.lr"])


def test_pooled_tunes_pair_a_baseline_with_ft_from_another_tune(tmp_path: Path) -> None:
    """FT (lr 1e-4) in one tune, EWC (lr 3e-4, 0.55) and EWC+MIGU (0.58) in another: pooled, EWC pairs
    with FT at +5 and +8 points though their lrs, names and data paths differ; apart, nothing pairs."""
    ft = _tuned_test_dir(tmp_path / "tune_ft" / "test", {"ft": ("ft", False, 1e-4, 0.50)})
    ewc = _tuned_test_dir(
        tmp_path / "tune_ewc" / "test",
        {"ewc": ("ewc", False, 3e-4, 0.55), "ewc+migu": ("ewc", True, 1e-4, 0.58)},
        pretrain={"reuse_reference": True},  # a field the older FT runs' config lacks: not compared
    )
    sweeps = [read_sweep_dir(ft), read_sweep_dir(ewc)]
    assert not any("vs_base" in effect_sections(group_cells([s])) for s in sweeps)
    pooled = pool_sweeps(sweeps, ["tune_ft_test", "tune_ewc_test"])
    assert pooled.name == "tune_ft_test + tune_ewc_test" and pooled.tuned == ("train.lr",)
    assert pooled.cells[0].name == "tune_ft_test/recipe-ft_seed-1" and len(pooled.cells) == 6
    got = {(e.method, e.setting): e.by_seed.mean for e in effect_sections(group_cells([pooled]))["vs_base"]}
    assert got == pytest.approx({("ewc", "off"): 0.05, ("ewc", "T=0.7"): 0.08})


def test_pooling_is_refused_when_the_setup_or_the_scored_rows_differ(tmp_path: Path) -> None:
    """A different train_n, or the same seed scored on other rows, names the field and both cells."""
    ft = _tuned_test_dir(tmp_path / "a" / "test", {"ft": ("ft", False, 1e-4, 0.5)})
    other = _tuned_test_dir(
        tmp_path / "b" / "test", {"ewc": ("ewc", False, 1e-4, 0.5)}, data={"train_n": 999, "test_n": 50}
    )
    msg = r"a/recipe-ft_seed-1 ran with data.train_n=100, b/recipe-ewc_seed-1 with data.train_n=999"
    with pytest.raises(ResultsError, match=msg):
        pool_sweeps([read_sweep_dir(ft), read_sweep_dir(other)], ["a", "b"])
    digests = {}
    for name, digest in (("c", "aaaa"), ("d", "bbbb")):
        per_task = {"agnews": {"eval_split": "test", "test": {"index_digest": digest}}}
        label = "ft" if name == "c" else "ewc"
        digests[name] = _tuned_test_dir(tmp_path / name / "test", {label: (label, False, 1e-4, 0.5)})
        for cell in digests[name].iterdir():
            if (cell / "results.json").is_file():
                body = json.loads((cell / "results.json").read_text())
                (cell / "results.json").write_text(json.dumps({**body, "per_task": per_task}))
    msg = r"c/recipe-ft_seed-1 and d/recipe-ewc_seed-1 \(seed 1\) were scored on different rows"
    with pytest.raises(ResultsError, match=msg):
        pool_sweeps([read_sweep_dir(digests["c"]), read_sweep_dir(digests["d"])], ["c", "d"])
