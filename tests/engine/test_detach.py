"""Teardown and overhead (issue 2, point 11): detach() leaves no hooks, the state_dict and the
outputs are those of an unhooked model; the hooks never change outputs; the forward statistic
and apply() do no host sync (no .item(), .tolist(), bool(tensor), ...)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from support.engine_reference import ToyLM, randomize_biases
from torch import nn

import migu

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def _hook_count(model: nn.Module) -> int:
    return sum(len(getattr(m, d, {})) for m in model.modules() for d in _HOOK_DICTS)


def _outputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    out = model(**batch)
    return [v for v in out.values() if torch.is_tensor(v)]


def _batch(kind: str, make_batch) -> dict[str, Any]:
    batch = make_batch(2, 6, lengths=[6, 3])
    if kind == "t5":
        batch["labels"] = batch["input_ids"][:, :4].masked_fill(batch["attention_mask"][:, :4] == 0, -100)
    return batch


@pytest.mark.parametrize(("kind", "head"), [("bert", "seq-cls"), ("t5", "seq2seq-lm"), ("gpt2", "causal-lm")])
@pytest.mark.parametrize("mode", ["grad", "strict"])
def test_detach_restores_the_model(tiny_model, make_batch, kind, head, mode) -> None:
    model = randomize_biases(tiny_model(kind, head=head))
    reference = copy.deepcopy(model)
    batch = _batch(kind, make_batch)
    expected = _outputs(reference, batch)
    modules_before = [(n, id(m)) for n, m in model.named_modules()]
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    assert _hook_count(model) == 0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    masker = migu.attach(
        model, migu.MIGUConfig(threshold=0.5, mode=mode, targets="all-linear"), optimizer=opt
    )
    assert _hook_count(model) > 0 and len(opt._optimizer_step_post_hooks) == 1
    out = model(**batch)
    got = [v for v in out.values() if torch.is_tensor(v)]
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))  # hooks never touch outputs
    (out.loss if out.get("loss") is not None else out.logits.sum()).backward()
    masker.apply()
    model.zero_grad()
    masker.detach()

    assert _hook_count(model) == 0
    assert len(opt._optimizer_step_post_hooks) == 0
    assert [(n, id(m)) for n, m in model.named_modules()] == modules_before
    state_after = model.state_dict()
    assert list(state_after) == list(state_before)
    assert all(torch.equal(state_after[k], v) for k, v in state_before.items())
    assert all(torch.equal(a, b) for a, b in zip(_outputs(model, batch), expected, strict=True))
    # Nothing collects any more, and a further step is plain training.
    model(**batch)
    assert masker.statistics() == {}


_SYNCS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy")


@pytest.fixture
def no_host_sync(monkeypatch):
    """A context manager: inside it, any device-to-host read of a tensor raises."""

    class _Guard:
        def __enter__(self) -> None:
            for name in _SYNCS:

                def boom(*args: Any, _name: str = name, **kwargs: Any) -> Any:
                    raise AssertionError(f"host sync: Tensor.{_name}")

                monkeypatch.setattr(torch.Tensor, name, boom)

        def __exit__(self, *exc: Any) -> None:
            monkeypatch.undo()

    return _Guard()


def test_guard_catches_a_sync(no_host_sync) -> None:
    with no_host_sync, pytest.raises(AssertionError, match="host sync"):
        torch.ones(2).sum().item()
    assert torch.ones(1).item() == 1.0


@pytest.mark.parametrize(
    "config",
    [
        migu.MIGUConfig(threshold=0.5),
        migu.MIGUConfig(threshold=0.5, mask_bias=False, normalize=False),
        migu.MIGUConfig(threshold=0.3, preset="official", skip_first_task=False),
        migu.MIGUConfig(threshold=0.5, mode="strict"),
    ],
    ids=["paper", "raw", "official", "strict"],
)
def test_forward_and_apply_do_not_sync(no_host_sync, config) -> None:
    model = ToyLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    masker = migu.attach(model, config, optimizer=opt)
    ids = torch.randint(0, 32, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    for _ in range(2):
        with no_host_sync:
            for _ in range(2):  # two micro-batches
                model(ids, attention_mask=mask, labels=labels)["loss"].backward()
            masks = masker.apply()
        assert len(masks) == len(masker.targets) > 0
        for t in masker.targets:
            assert torch.all(t.weight.grad[~masks[t.name]] == 0)
        opt.step()
        opt.zero_grad()


def test_apply_on_a_hf_model_does_not_sync(no_host_sync, tiny_model, make_batch) -> None:
    model = tiny_model("bert", head="seq-cls")
    masker = migu.attach(model, migu.MIGUConfig(threshold=0.7))
    model(**make_batch(2, 6, lengths=[6, 2]), labels=torch.tensor([0, 1])).loss.backward()
    with no_host_sync:
        masks = masker.apply()
    assert len(masks) == 12


@pytest.mark.parametrize("partial", ["fill", "drop", "whole"])
def test_cluster_apply_does_not_sync(no_host_sync, partial: str) -> None:
    """MIGU+Cluster (issue 15): the cluster cut is fixed-shape tensor work too (strict mode's saves too)."""
    model = ToyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    config = migu.MIGUConfig(threshold=0.5, mode="strict", cluster={"partial": partial})
    masker = migu.attach(model, config, optimizer=opt)
    g = torch.Generator().manual_seed(0)
    masker.set_clusters({t.name: torch.randint(0, 3, (t.d_out,), generator=g) for t in masker.targets})
    ids = torch.randint(0, 32, (3, 7))
    for _ in range(2):
        with no_host_sync:
            model(ids, labels=ids)["loss"].backward()
            masks = masker.apply()
        opt.step()  # AdamW's own step reads its step count on the host
        for t in masker.targets:
            assert torch.all(t.weight.grad[~masks[t.name]] == 0)
        opt.zero_grad()
