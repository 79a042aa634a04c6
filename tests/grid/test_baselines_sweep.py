"""configs/sweeps/proxy_baselines.yaml expands into the grid it promises (nothing is trained)."""

from __future__ import annotations

from pathlib import Path

from migu.grid.spec import load_sweep
from migu.runner.config import build_run_config

SWEEP = Path(__file__).resolve().parents[2] / "configs" / "sweeps" / "proxy_baselines.yaml"


def test_proxy_baselines_expands() -> None:
    name, cells = load_sweep(SWEEP)
    assert name == "proxy_baselines" and len(cells) == 13 * 3
    grid = {(c.config["method"]["name"], c.config["migu"] is not None, c.config["seed"]) for c in cells}
    assert len(grid) == len(cells)
    methods = {"ewc", "lwf", "derpp", "lora_ewc", "lora_lwf", "lora_derpp"}
    assert {(m, migu) for m, migu, _ in grid} == {(m, on) for m in methods for on in (False, True)} | {
        ("osf", False)
    }
    for c in cells:
        cfg = build_run_config(c.config)
        lora = cfg.method.name.startswith("lora_")
        assert cfg.train.lr == (1e-3 if lora else 1e-4)
        assert cfg.order == "standard_proxy" and cfg.data.train_n == 1000
        if cfg.migu is not None:
            assert cfg.migu.threshold == (0.4 if "derpp" in cfg.method.name else 0.7)
    assert len({c.name for c in cells}) == len(cells)  # one run directory per cell
