"""The runner's AdamW: fused by default, every implementation the same update with MIGU."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import migu
from migu.runner import loop as loop_mod
from migu.runner.config import ConfigError, RunConfig
from migu.runner.execute import run
from migu.runner.optim import build_adamw


def _flags(opt: torch.optim.Optimizer) -> tuple[bool, bool]:
    group = opt.param_groups[0]
    return bool(group.get("fused")), bool(group.get("foreach"))


def test_impls_pick_the_kernel() -> None:
    params = [torch.nn.Parameter(torch.randn(4, 3))]
    assert _flags(build_adamw(params, lr=1e-3)) == (True, False)  # auto on CPU floats: fused
    assert _flags(build_adamw(params, lr=1e-3, impl="fused")) == (True, False)
    assert _flags(build_adamw(params, lr=1e-3, impl="foreach")) == (False, True)
    assert _flags(build_adamw(params, lr=1e-3, impl="for-loop")) == (False, False)
    with pytest.raises(ValueError, match="for-loop"):
        build_adamw(params, lr=1e-3, impl="adam")


def test_a_parameter_without_fused_kernel() -> None:
    """auto falls back to torch's default; an explicit fused is refused before any step."""
    params = [
        torch.nn.Parameter(torch.randn(4, 3)),
        torch.nn.Parameter(torch.randn(3, dtype=torch.complex64)),
    ]
    with pytest.raises(ValueError, match="complex64"):
        build_adamw(params, lr=1e-3, impl="fused")
    opt = build_adamw(params, lr=1e-3)
    assert not _flags(opt)[0]
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()  # runs: the fallback is a working optimizer


def _train(impl: str, steps: int = 3) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Weights and exp_avg_sq of a tiny MLP after ``steps`` MIGU (grad mode) AdamW steps."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    opt = build_adamw(model.parameters(), lr=1e-2, weight_decay=0.1, impl=impl)
    masker = migu.attach(model, migu.MIGUConfig(threshold=0.5, targets="all-linear"))
    for s in range(steps):
        x = torch.randn(6, 8, generator=torch.Generator().manual_seed(s))
        model(x).pow(2).sum().backward()
        masker.apply()
        opt.step()
        opt.zero_grad(set_to_none=True)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    moments = {n: opt.state[p]["exp_avg_sq"].clone() for n, p in model.named_parameters()}
    return weights, moments


def test_every_impl_makes_the_same_migu_update() -> None:
    """Masked rows (exp_avg_sq exactly 0, the rows that slow the CPU sqrt) update the same way."""
    ref_w, ref_m = _train("for-loop")
    assert any(bool((m == 0).all(dim=1).any()) for m in ref_m.values() if m.dim() == 2)  # masked rows
    for impl in ("foreach", "fused"):
        w, m = _train(impl)
        for name in ref_w:
            torch.testing.assert_close(w[name], ref_w[name], rtol=1e-5, atol=1e-6, msg=f"{impl} {name}")
            torch.testing.assert_close(m[name], ref_m[name], rtol=1e-5, atol=1e-10, msg=f"{impl} {name}")


@pytest.mark.parametrize("impl", [None, "for-loop"])
def test_the_runner_builds_the_configured_optimizer(
    tiny_config: Callable[..., RunConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, impl: str | None
) -> None:
    built: list[tuple[bool, bool]] = []

    def recording(*args, **kwargs) -> torch.optim.AdamW:
        opt = build_adamw(*args, **kwargs)
        built.append(_flags(opt))
        return opt

    monkeypatch.setattr(loop_mod, "build_adamw", recording)
    train = {"optimizer_impl": impl} if impl else {}
    run(tiny_config(train=train, tasks=["agnews"]), tmp_path / "run")
    assert built == [(False, False) if impl == "for-loop" else (True, False)]


def test_config_refuses_an_unknown_impl(tiny_config: Callable[..., RunConfig]) -> None:
    with pytest.raises(ConfigError, match=r"train\.optimizer_impl must be one of auto, fused"):
        tiny_config(train={"optimizer_impl": "adam"})
