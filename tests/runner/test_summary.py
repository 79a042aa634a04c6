"""Grouping finished cells: recipe bundles pair with and without MIGU, and keep what tells them apart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.results import fake_results, write_sweep

from migu.runner.summary import group_cells, paired_effects, read_sweep_dir
from migu.runner.sweep import load_sweep

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
