"""The ablation sweep configs in configs/sweeps/ expand into the grids they promise."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from migu.grid.spec import load_sweep
from migu.methods import get_method
from migu.runner.results import RunResults

SWEEPS = Path(__file__).resolve().parents[2] / "configs" / "sweeps"
ALL_SUBSETS = [["qkv"], ["o"], ["ffn"], ["qkv", "o"], ["qkv", "ffn"], ["o", "ffn"], ["qkv", "o", "ffn"]]
THRESHOLDS = [round(0.1 * i, 1) for i in range(10)]


def _cells(name: str) -> list:
    return load_sweep(SWEEPS / f"{name}.yaml")[1]


def test_every_sweep_config_expands_with_known_methods() -> None:
    files = sorted(SWEEPS.glob("*.yaml"))
    assert {f.stem for f in files} >= {
        "proxy_table",
        "proxy_threshold",
        "proxy_components",
        "threshold_ft",
        "threshold_lora",
        "components",
        "proxy_lr",
    }
    for f in files:
        for cell in load_sweep(f)[1]:
            get_method(cell.config["method"]["name"])  # a registry name


def test_proxy_table() -> None:
    cells = _cells("proxy_table")
    assert len(cells) == 5 * 2 * 3
    assert {c.config["method"]["name"] for c in cells} == {"ft", "lora", "inclora", "olora", "lora_replay"}
    assert {repr(c.config["migu"]) for c in cells} == {"None", "{}"}  # off / the method's paper T
    assert {c.config["seed"] for c in cells} == {42, 1024, 2048}
    assert all(c.config["order"] == "standard_proxy" for c in cells)


def test_proxy_threshold() -> None:
    cells = _cells("proxy_threshold")
    assert [c.config["migu"]["threshold"] for c in cells] == [0.0, 0.3, 0.5, 0.7, 0.9]
    assert all(c.config["method"]["name"] == "ft" for c in cells)


def test_proxy_lr() -> None:
    """3 learning rates x MIGU off/on x 2 seeds, all FT on the for-loop AdamW of the earlier runs."""
    cells = _cells("proxy_lr")
    grid = {(c.config["train"]["lr"], repr(c.config["migu"]), c.config["seed"]) for c in cells}
    assert len(cells) == len(grid) == 12
    assert {g[0] for g in grid} == {3e-5, 1e-4, 3e-4} and {g[1] for g in grid} == {"None", "{}"}
    assert all(c.config["method"]["name"] == "ft" for c in cells)
    assert all(c.config["train"]["optimizer_impl"] == "for-loop" for c in cells)


@pytest.mark.parametrize("name", ["threshold_ft", "threshold_lora"])
def test_threshold_sweeps(name: str) -> None:
    cells = _cells(name)
    thresholds = sorted({c.config["migu"]["threshold"] for c in cells})
    assert thresholds == THRESHOLDS
    lr = {c.config["train"]["lr"] for c in cells}
    assert lr == ({1e-4} if name == "threshold_ft" else {1e-3})


@pytest.mark.parametrize("name", ["components", "proxy_components"])
def test_component_sweeps(name: str) -> None:
    cells = _cells(name)
    subsets = [c.config["migu"]["components"] for c in cells if c.config["seed"] == 42]
    assert subsets == ALL_SUBSETS
    assert {c.config["migu"]["threshold"] for c in cells} == {0.7}


@pytest.mark.parametrize("method", ["ft", "lora", "inclora", "olora", "lora_replay"])
def test_tune_configs_select_lr_on_validation_per_migu_setting(method: str) -> None:
    """Each method's tune file: 3 learning rates x MIGU off / the method's paper T, one selection seed,
    validation rows set, test seeds 42/1024/2048 (what `migu tune` needs, checked as it checks)."""
    from migu.grid.tune import _cells, _spec

    path = SWEEPS / f"tune_proxy_{method}.yaml"
    select, metric, test_seeds = _spec(path)
    assert (select, metric, test_seeds) == (["train.lr"], "val_acc", [42, 1024, 2048])
    _, cells = _cells(path, [], "val")  # refuses cells without data.val_n
    lrs = {"ft": {3e-5, 1e-4, 3e-4}}.get(method, {3e-4, 1e-3, 3e-3})
    grid = {(c.config["train"]["lr"], repr(c.config["migu"])) for c in cells}
    assert len(cells) == len(grid) == 6 and {g[0] for g in grid} == lrs
    assert {g[1] for g in grid} == {"None", "{}"} and {c.config["seed"] for c in cells} == {42}
    assert all(c.config["method"]["name"] == method and c.config["data"]["val_n"] == 200 for c in cells)


def _scored(cells: list, score: Callable[[float], float]) -> dict[str, RunResults]:
    """A finished selection run per cell whose validation ACC is ``score(its lr)``."""
    return {
        c.name: RunResults(
            name=c.name,
            method=c.config["method"]["name"],
            seed=42,
            tasks=["t"],
            complete=True,
            matrices={"val_acc": [[0.5]]},
            migu=None if c.config["migu"] is None else {"threshold": 0.7},
            metrics={"val_acc": score(c.config["train"]["lr"])},
        )
        for c in cells
    }


@pytest.mark.parametrize("method", ["ft", "lora", "inclora"])
def test_tune_long_proxy_chooses_each_settings_lr_on_validation(method: str) -> None:
    """The long proxy's tune files: the method x MIGU off / its paper T (0.7), three lrs each, on the
    5-task order; selection groups by MIGU setting only, so each of the two settings picks one of 3."""
    from migu.grid.tune import _cells, _spec, choose

    path = SWEEPS / f"tune_long_proxy_{method}.yaml"
    assert _spec(path) == (["train.lr"], "val_acc", [42, 1024, 2048])
    _, cells = _cells(path, [], "val")
    assert len(cells) == 6 and all(c.config["order"] == "long_proxy" for c in cells)
    assert all(c.config["method"]["name"] == method and c.config["data"]["val_n"] == 200 for c in cells)
    lrs = {c.config["train"]["lr"] for c in cells}
    assert lrs == ({3e-5, 1e-4, 3e-4} if method == "ft" else {3e-4, 1e-3, 3e-3})
    results = _scored(cells, lambda lr: lr)  # the largest lr wins, by construction
    choices = choose(cells, results, ["train.lr"], "val_acc")
    assert {(ch.method, ch.setting): ch.chosen for ch in choices} == {
        (method, s): str(max(lrs)) for s in ("off", "T=0.7")
    }


@pytest.mark.parametrize(
    ("name", "methods", "lrs"),
    [
        ("tune_proxy_baselines_ft", {"ewc", "lwf", "derpp", "osf"}, {3e-5, 1e-4, 3e-4}),
        ("tune_proxy_baselines_lora", {"lora_ewc", "lora_lwf", "lora_derpp"}, {3e-4, 1e-3, 3e-3}),
    ],
)
def test_tune_baselines_pick_one_lr_per_method_and_migu_setting(name: str, methods: set, lrs: set) -> None:
    """Every recipe (method +/- MIGU; OSF without) runs the family's three lrs on validation, and
    selection groups by method and MIGU setting only: each recipe picks one of its own three."""
    from migu.grid.tune import _cells, _spec, choose

    path = SWEEPS / f"{name}.yaml"
    assert _spec(path) == (["train.lr"], "val_acc", [42, 1024, 2048])
    _, cells = _cells(path, [], "val")
    assert {c.config["method"]["name"] for c in cells} == methods and len(cells) == 3 * (
        2 * len(methods) - ("osf" in methods)
    )
    assert {c.config["train"]["lr"] for c in cells} == lrs
    results = _scored(cells, lambda lr: -lr)  # the smallest lr wins, by construction
    choices = choose(cells, results, ["train.lr"], "val_acc")
    assert len(choices) == len(cells) // 3 and {ch.chosen for ch in choices} == {str(min(lrs))}
    assert all(ch.extra == "" for ch in choices)
