"""Update modes (issue 2, point 6). ``grad`` zeroes masked gradient rows (the paper): under plain
SGD masked rows stay, under AdamW momentum and weight decay still move them. ``strict`` (this
library's addition) keeps masked rows and their optimizer state bit-identical through the step."""

from __future__ import annotations

import pytest
import torch
from support.engine_reference import randomize_biases

import migu

STEPS = 4


def _params(masker: migu.Masker) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {t.name: (t.weight.detach().clone(), t.bias.detach().clone()) for t in masker.targets}


def _rows(t: migu.engine.Target, w: torch.Tensor) -> torch.Tensor:
    return w.t() if t.row_dim == 1 else w


def _batch(make_batch, step: int) -> dict[str, torch.Tensor]:
    return make_batch(3, 6, lengths=[6, 5 - step % 3, 2 + step % 2], seed=100 + step)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_grad_mode_sgd_masked_rows_stay_kept_rows_move(tiny_model, make_batch, kind) -> None:
    model = randomize_biases(tiny_model(kind))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.0, weight_decay=0.0)
    masker = migu.attach(model, migu.MIGUConfig(threshold=0.5))
    for step in range(2):
        opt.zero_grad()
        model(**_batch(make_batch, step)).last_hidden_state.pow(2).sum().backward()
        before = _params(masker)
        masks = masker.apply()
        opt.step()
        for t in masker.targets:
            keep = masks[t.name]
            w0, b0 = before[t.name]
            w, w0 = _rows(t, t.weight.detach()), _rows(t, w0)
            assert torch.equal(w[~keep], w0[~keep]) and torch.equal(t.bias.detach()[~keep], b0[~keep])
            assert bool((w[keep] != w0[keep]).any(dim=1).all()), t.name  # every kept row moved


# torch's three AdamW implementations (the runner defaults to fused): the same rows must hold.
ADAMW_IMPLS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def _adamw_run(tiny_model, make_batch, mode: str, impl: str = "for-loop"):
    """Yields, per step, (masker, masks, params before, state before, optimizer)."""
    model = randomize_biases(tiny_model("bert"))
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-2, betas=(0.9, 0.999), weight_decay=0.1, **ADAMW_IMPLS[impl]
    )
    masker = migu.attach(model, migu.MIGUConfig(threshold=0.5, mode=mode), optimizer=opt)
    others = {n: p.detach().clone() for n, p in model.named_parameters() if "embeddings.word" in n}
    for step in range(STEPS):
        opt.zero_grad()
        model(**_batch(make_batch, step)).last_hidden_state.pow(2).sum().backward()
        params = _params(masker)
        state = {
            t.name: {
                k: v.clone()
                for k, v in opt.state.get(t.weight, {}).items()
                if torch.is_tensor(v) and v.shape == t.weight.shape
            }
            for t in masker.targets
        }
        masks = {k: v.clone() for k, v in masker.apply().items()}
        opt.step()
        yield masker, masks, params, state, opt
    for n, p in model.named_parameters():
        if n in others:
            assert not torch.equal(p.detach(), others[n])  # non-target parameters train normally


@pytest.mark.parametrize("impl", list(ADAMW_IMPLS))
def test_strict_mode_adamw_masked_rows_bit_identical(tiny_model, make_batch, impl: str) -> None:
    history: list[dict[str, torch.Tensor]] = []
    run = _adamw_run(tiny_model, make_batch, "strict", impl)
    for step, (masker, masks, params, state, opt) in enumerate(run):
        history.append(masks)
        for t in masker.targets:
            keep = masks[t.name]
            w0, b0 = params[t.name]
            assert torch.equal(t.weight.detach()[~keep], w0[~keep]), (step, t.name)
            assert torch.equal(t.bias.detach()[~keep], b0[~keep]), (step, t.name)
            assert bool((t.weight.detach()[keep] != w0[keep]).any(dim=1).all())
            new_state = opt.state[t.weight]
            for key in ("exp_avg", "exp_avg_sq"):
                if step == 0:
                    assert torch.all(
                        new_state[key][~keep] == 0
                    )  # created by this step: masked rows start at 0
                else:
                    assert torch.equal(new_state[key][~keep], state[t.name][key][~keep]), (step, key)
                assert bool((new_state[key][keep] != 0).any())
    # Masks changed between steps, so rows with momentum were masked: grad mode would move them.
    changed = [
        n
        for n in history[0]
        if any(not torch.equal(history[s][n], history[s - 1][n]) for s in range(1, STEPS))
    ]
    assert len(changed) >= len(history[0]) // 2


def test_grad_mode_adamw_masked_rows_do_move(tiny_model, make_batch) -> None:
    moved_by_decay = moved_by_momentum = 0
    for step, (masker, masks, params, _, _) in enumerate(_adamw_run(tiny_model, make_batch, "grad")):
        for t in masker.targets:
            keep = masks[t.name]
            w0, _ = params[t.name]
            moved = int((t.weight.detach()[~keep] != w0[~keep]).any(dim=1).sum())
            if step == 0:
                moved_by_decay += moved  # no momentum yet: weight decay alone
            else:
                moved_by_momentum += moved
            assert torch.all(t.weight.grad[~keep] == 0)  # the gradient was masked all the same
    assert moved_by_decay > 0 and moved_by_momentum > 0


def test_strict_without_optimizer_raises(tiny_model, make_batch) -> None:
    model = tiny_model("bert")
    masker = migu.attach(model, migu.MIGUConfig(mode="strict"))
    model(**make_batch(2, 5)).last_hidden_state.sum().backward()
    with pytest.raises(RuntimeError, match="optimizer"):
        masker.apply()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    masker.bind_optimizer(opt)
    model(**make_batch(2, 5)).last_hidden_state.sum().backward()
    before = _params(masker)
    masks = masker.apply()
    opt.step()
    for t in masker.targets:
        assert torch.equal(t.weight.detach()[~masks[t.name]], before[t.name][0][~masks[t.name]])
