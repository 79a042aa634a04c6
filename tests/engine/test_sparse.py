"""Sparse backward (``MIGUConfig(sparse_backward=True)``) and the no-host-sync masking path.

The sparse path must give the dense masked gradient (dense backward + ``apply()``) to fp32
tolerance, the same masks, full input gradients, and leave the model as it was after detach().
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from support.engine_reference import randomize_biases
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import migu
from migu.engine.sparse import SparseLinear

ATOL, RTOL = 1e-6, 1e-5
T = 0.5


def _case(kind: str, tiny_model, make_batch, seed: int = 0) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A tiny model with a training loss, and a padded batch."""
    if kind == "bert":
        model = randomize_biases(tiny_model("bert", head="seq-cls"))
        batch = make_batch(3, 7, lengths=[7, 5, 2], seed=seed)
        batch["labels"] = torch.tensor([0, 1, 1])
    elif kind == "llama":
        model = tiny_model("llama", head="causal-lm")
        batch = make_batch(3, 7, lengths=[7, 6, 3], seed=seed)
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    elif kind == "t5":
        model = tiny_model("t5", head="seq2seq-lm")
        batch = make_batch(2, 6, lengths=[6, 4], seed=seed)
        labels = make_batch(2, 5, lengths=[5, 3], seed=seed + 100)
        batch["labels"] = labels["input_ids"].masked_fill(labels["attention_mask"] == 0, -100)
    else:  # pragma: no cover
        raise ValueError(kind)
    return model, batch


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_grads_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=ATOL, rtol=RTOL), name


def _dense_and_sparse(model: nn.Module, **cfg: Any) -> tuple[nn.Module, migu.Masker, nn.Module, migu.Masker]:
    dense, sparse = copy.deepcopy(model), copy.deepcopy(model)
    dm = migu.attach(dense, migu.MIGUConfig(threshold=T, **cfg))
    sm = migu.attach(sparse, migu.MIGUConfig(threshold=T, sparse_backward=True, **cfg))
    return dense, dm, sparse, sm


# ------------------------------------------------------------------------------------- config
def test_config_rejects_unsupported_combinations() -> None:
    with pytest.raises(ValueError, match="mode='grad'"):
        migu.MIGUConfig(sparse_backward=True, mode="strict")
    with pytest.raises(ValueError, match="cut='topk'"):
        migu.MIGUConfig(sparse_backward=True, cut="quantile")
    with pytest.raises(ValueError, match="cut='topk'"):
        migu.MIGUConfig(sparse_backward=True, preset="official")  # the official preset cuts by quantile
    with pytest.raises(ValueError, match="sparse_backward"):
        migu.MIGUConfig(sparse_backward="yes")  # type: ignore[arg-type]
    cfg = migu.MIGUConfig(sparse_backward=True, preset="official", cut="topk")
    assert cfg.sparse_backward and cfg.to_dict()["sparse_backward"] is True
    assert migu.MIGUConfig.from_dict({"sparse_backward": True}).sparse_backward
    assert migu.MIGUConfig().sparse_backward is False


# ---------------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("kind", ["bert", "llama", "t5"])
def test_sparse_gradients_and_masks_equal_dense(kind: str, tiny_model, make_batch) -> None:
    model, batch = _case(kind, tiny_model, make_batch)
    dense, dm, sparse, sm = _dense_and_sparse(model)
    swapped = [m for m in sparse.modules() if isinstance(m, SparseLinear)]
    assert len(swapped) == len(sm.targets) > 0  # every target of these models is a plain nn.Linear

    dense(**batch).loss.backward()
    sparse(**batch).loss.backward()
    # Before apply(): the sparse target gradients are already masked (zero rows), the dense are not.
    names = {t.name for t in sm.targets}
    pre = dict(sparse.named_parameters())
    assert all((pre[n + ".weight"].grad.abs().sum(1) == 0).any() for n in names)

    dense_masks = dm.apply()
    sparse_masks = sm.apply()  # still called: returns the masks, leaves the gradients as they are
    assert dense_masks.keys() == sparse_masks.keys() == names
    for name in names:
        assert torch.equal(dense_masks[name], sparse_masks[name]), name
        assert int(sparse_masks[name].sum()) == sparse_masks[name].numel() - int(
            T * sparse_masks[name].numel()
        )
    # Every gradient (targets, embeddings, norms, heads) equals the dense masked one: the kept rows'
    # weight gradients, the masked bias entries and the full input gradients flowing back.
    _assert_grads_close(_grads(sparse), _grads(dense))
    for name in names:
        w = pre[name + ".weight"].grad
        assert torch.all(w[~sparse_masks[name]] == 0)
        bias = pre.get(name + ".bias")
        if bias is not None:
            assert torch.all(bias.grad[~sparse_masks[name]] == 0)  # mask_bias (paper preset)
    sm.detach()
    dm.detach()


def test_sparse_training_matches_dense_over_steps(tiny_model, make_batch) -> None:
    model, _ = _case("bert", tiny_model, make_batch)
    dense, dm, sparse, sm = _dense_and_sparse(model)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (dense, sparse)]
    for step in range(3):
        batch = make_batch(3, 7, lengths=[7, 4, 6], seed=10 + step)
        batch["labels"] = torch.tensor([1, 0, 1])
        for m, masker, opt in zip((dense, sparse), (dm, sm), opts, strict=True):
            m(**batch).loss.backward()
            masker.apply()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (n, a), (_, b) in zip(dense.state_dict().items(), sparse.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), n


def test_mask_bias_false_keeps_the_full_bias_gradient(tiny_model, make_batch) -> None:
    model, batch = _case("bert", tiny_model, make_batch)
    dense, dm, sparse, sm = _dense_and_sparse(model, mask_bias=False)
    dense(**batch).loss.backward()
    sparse(**batch).loss.backward()
    assert dm.apply().keys() == sm.apply().keys()
    _assert_grads_close(_grads(sparse), _grads(dense))
    name = sm.targets[0].name
    assert torch.all(dict(sparse.named_parameters())[name + ".bias"].grad != 0)


# ------------------------------------------------------------------------- gradient accumulation
def test_each_micro_batch_gets_its_own_mask(tiny_model, make_batch) -> None:
    """Sparse + accumulation: grad = sum_k mask_k * g_k, mask_k from micro-batch k alone."""
    model, _ = _case("llama", tiny_model, make_batch)
    micro = []
    for seed, lengths in ((1, [7, 2]), (2, [5, 7])):
        b = make_batch(2, 7, lengths=lengths, seed=seed)
        b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
        micro.append(b)
    # Reference: one dense step per micro-batch (its own mask), gradients summed.
    ref = copy.deepcopy(model)
    rm = migu.attach(ref, migu.MIGUConfig(threshold=T))
    expected: dict[str, torch.Tensor] = {}
    ref_masks = []
    for b in micro:
        ref(**b).loss.backward()
        ref_masks.append(rm.apply())
        for n, g in _grads(ref).items():
            expected[n] = expected.get(n, 0) + g
        ref.zero_grad(set_to_none=True)

    sparse = copy.deepcopy(model)
    sm = migu.attach(sparse, migu.MIGUConfig(threshold=T, sparse_backward=True))
    for b in micro:
        sparse(**b).loss.backward()
    masks = sm.apply()
    _assert_grads_close(_grads(sparse), expected)
    for name, keep in masks.items():  # the rows that got a gradient: the union of the two masks
        assert torch.equal(keep, ref_masks[0][name] | ref_masks[1][name]), name
    assert any(not torch.equal(ref_masks[0][n], ref_masks[1][n]) for n in masks)  # non-vacuous


# ---------------------------------------------------------------------------- module swapping
def test_swap_keeps_parameters_and_detach_restores(tiny_model, make_batch) -> None:
    model, batch = _case("bert", tiny_model, make_batch)
    before = dict(model.named_modules())
    params = dict(model.named_parameters())
    keys = list(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    masker = migu.attach(model, migu.MIGUConfig(threshold=T, sparse_backward=True))
    mods = dict(model.named_modules())
    for t in masker.targets:
        new = mods[t.name]
        assert isinstance(new, SparseLinear) and isinstance(new, nn.Linear)
        assert new is not before[t.name]
        assert new.weight is params[t.name + ".weight"] and new.bias is params[t.name + ".bias"]
    assert list(model.state_dict()) == keys
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(a is b for a, b in zip(model.parameters(), opt.param_groups[0]["params"], strict=True))
    # A hook registered on the stand-in fires (hook dicts are shared with the original).
    seen = []
    h = mods[masker.targets[0].name].register_forward_hook(lambda m, a, o: seen.append(o.shape))
    model(**batch).loss.backward()
    masker.apply()
    opt.step()
    assert len(seen) == 1
    h.remove()
    model.eval()
    masker.detach()
    after = dict(model.named_modules())
    for t in masker.targets:
        assert after[t.name] is before[t.name] and type(after[t.name]) is nn.Linear
        assert not after[t.name].training  # eval() while swapped reaches the original
    assert all(a is b for a, b in zip(model.parameters(), params.values(), strict=True))
    assert not any(isinstance(m, SparseLinear) for m in model.modules())


def test_eval_and_no_grad_forward(tiny_model, make_batch) -> None:
    model, batch = _case("bert", tiny_model, make_batch)
    ref = copy.deepcopy(model).eval()
    masker = migu.attach(model, migu.MIGUConfig(threshold=T, sparse_backward=True))
    model.eval()
    with torch.no_grad():
        out = model(**batch).logits
        assert torch.allclose(out, ref(**batch).logits, atol=1e-6)
    assert all(torch.all(s == 0) for s in masker.statistics().values())  # evaluation does not feed it
    with torch.no_grad(), masker.collecting():
        model(**batch)
    assert any(torch.any(s != 0) for s in masker.statistics().values())
    masker.detach()


def test_ineligible_targets_keep_the_dense_path(tiny_model, make_batch) -> None:
    """GPT-2 Conv1D and a tied lm_head are not swapped; apply() masks them as before."""
    gpt2 = tiny_model("gpt2", head="causal-lm")
    batch = make_batch(2, 6, lengths=[6, 3])
    batch["labels"] = batch["input_ids"]
    dense, dm, sparse, sm = _dense_and_sparse(gpt2, targets="all-linear")
    assert not any(isinstance(m, SparseLinear) for m in sparse.modules())
    dense(**batch).loss.backward()
    sparse(**batch).loss.backward()
    dmasks, smasks = dm.apply(), sm.apply()
    assert all(torch.equal(dmasks[n], smasks[n]) for n in dmasks)
    _assert_grads_close(_grads(sparse), _grads(dense))

    llama = tiny_model("llama", head="causal-lm", tie_word_embeddings=True)
    batch["labels"] = batch["input_ids"]
    dense, dm, sparse, sm = _dense_and_sparse(llama, targets="all-linear")
    assert "lm_head" in {t.name for t in sm.targets}
    assert not isinstance(sparse.lm_head, SparseLinear)  # tied to the embeddings
    assert isinstance(sparse.model.layers[0].mlp.up_proj, SparseLinear)
    dense(**batch).loss.backward()
    sparse(**batch).loss.backward()
    dmasks, smasks = dm.apply(), sm.apply()
    assert all(torch.equal(dmasks[n], smasks[n]) for n in dmasks)
    _assert_grads_close(_grads(sparse), _grads(dense))


def test_lora_model_with_sparse_backward(tiny_model, make_batch) -> None:
    from peft import LoraConfig, get_peft_model

    model, batch = _case("llama", tiny_model, make_batch)
    torch.manual_seed(3)
    lora = get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    dense, dm, sparse, sm = _dense_and_sparse(lora)
    # LoRA factors stay dense (B is judged by the whole layer output); frozen plain linears are
    # swapped but run the plain op (no weight gradient to thin out).
    assert all(not isinstance(m, SparseLinear) for n, m in sparse.named_modules() if "lora_" in n)
    dense(**batch).loss.backward()
    sparse(**batch).loss.backward()
    dmasks, smasks = dm.apply(), sm.apply()
    assert dmasks.keys() == smasks.keys() and all("lora_" in n for n in smasks)
    assert all(torch.equal(dmasks[n], smasks[n]) for n in dmasks)
    _assert_grads_close(_grads(sparse), _grads(dense))


def test_skip_first_task_gives_full_gradients(tiny_model, make_batch) -> None:
    model, batch = _case("bert", tiny_model, make_batch)
    cfg = dict(preset="official", cut="topk", targets="default")
    dense, dm, sparse, sm = _dense_and_sparse(model, **cfg)
    for task in (0, 1):
        dm.task_index = sm.task_index = task
        dense(**batch).loss.backward()
        sparse(**batch).loss.backward()
        dmasks, smasks = dm.apply(), sm.apply()
        assert all(torch.equal(dmasks[n], smasks[n]) for n in dmasks)
        assert all(bool(k.all()) == (task == 0) for k in smasks.values())
        _assert_grads_close(_grads(sparse), _grads(dense))
        dense.zero_grad(set_to_none=True)
        sparse.zero_grad(set_to_none=True)


def test_bf16_autocast_runs_and_masks(tiny_model, make_batch) -> None:
    model, batch = _case("llama", tiny_model, make_batch)
    dense, dm, sparse, sm = _dense_and_sparse(model)
    for m in (dense, sparse):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m(**batch).loss
        loss.backward()
    dmasks, smasks = dm.apply(), sm.apply()
    agree = sum(int((dmasks[n] == smasks[n]).sum()) for n in dmasks) / sum(v.numel() for v in dmasks.values())
    assert agree > 0.9  # bf16 rounding may reorder near-ties; the masks are otherwise the same
    for t in sm.targets:
        assert t.weight.grad.dtype == torch.float32
        assert torch.all(t.weight.grad[~smasks[t.name]] == 0)
        assert int(smasks[t.name].sum()) == t.d_out - int(T * t.d_out)


# ------------------------------------------------------------------------------- no host sync
_SYNC_OPS = {
    "_local_scalar_dense",  # .item(), bool(), int(), float() of a tensor
    "nonzero",
    "nonzero_static",
    "masked_select",
    "_unique2",
    "unique_consecutive",
    "unique_dim",
    "repeat_interleave",
}
_TORCH_PREFIXES = ("torch", "contextlib", "functools")


def _caller_is_migu(skip_module: str) -> bool:
    """Is the innermost frame outside torch (and this test) in the migu package?"""
    f = sys._getframe(2)
    while f is not None:
        name = f.f_globals.get("__name__", "")
        if name != skip_module and not name.startswith(_TORCH_PREFIXES):
            return name == "migu" or name.startswith("migu.")
        f = f.f_back
    return False


class HostSyncError(AssertionError):
    pass


class _NoSyncFromMigu(TorchDispatchMode):
    """Fails on a device-to-host synchronizing aten op issued from migu code."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func._overloadpacket.__name__ in _SYNC_OPS and _caller_is_migu(__name__):
            raise HostSyncError(f"host sync in the masking path: aten.{func._overloadpacket.__name__}")
        return func(*args, **(kwargs or {}))


@contextmanager
def no_host_sync_in_migu() -> Iterator[None]:
    """Tensor.item/tolist/__bool__/__int__/__float__/__index__/numpy/cpu called from migu code raise;
    so does any synchronizing aten op (item, nonzero, masked_select, unique, ...) issued by it."""
    names = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu")
    originals = {n: getattr(torch.Tensor, n) for n in names}

    def guard(name: str, fn: Callable) -> Callable:
        def wrapper(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            if _caller_is_migu(__name__):
                raise HostSyncError(f"host sync in the masking path: Tensor.{name}()")
            return fn(self, *args, **kwargs)

        return wrapper

    for n, fn in originals.items():
        setattr(torch.Tensor, n, guard(n, fn))
    try:
        with _NoSyncFromMigu():
            yield
    finally:
        for n, fn in originals.items():
            setattr(torch.Tensor, n, fn)


def _step(model: nn.Module, masker: migu.Masker, batch: dict, opt: torch.optim.Optimizer) -> None:
    model(**batch).loss.backward()
    masker.apply()
    opt.step()
    opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("sparse", [False, True], ids=["grad", "sparse"])
@pytest.mark.parametrize("kind", ["bert", "t5"])
def test_no_host_sync_in_forward_backward_apply(kind: str, sparse: bool, tiny_model, make_batch) -> None:
    model, batch = _case(kind, tiny_model, make_batch)
    masker = migu.attach(model, migu.MIGUConfig(threshold=T, sparse_backward=sparse))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _step(model, masker, batch, opt)  # first step allocates the buffers
    with no_host_sync_in_migu():
        for _ in range(2):
            model(**batch).loss.backward()
            masks = masker.apply()
    assert masks and all(m.dtype == torch.bool for m in masks.values())
    # The same step outside the guard still works: the guard restored Tensor's methods.
    assert torch.tensor(3.0).item() == 3.0


def test_no_sync_guard_catches_a_sync_in_migu(tiny_model, make_batch, monkeypatch) -> None:
    """The detector is not vacuous: a .item() or a nonzero() in the statistic is caught."""
    model, batch = _case("bert", tiny_model, make_batch)
    masker = migu.attach(model, migu.MIGUConfig(threshold=T))
    original = migu.Masker._accumulate
    for bad in (lambda y: y.sum().item(), lambda y: bool(y.sum() > 0), lambda y: y.nonzero()):

        def syncing(self, i, target, y, cfg, bad=bad):  # type: ignore[no-untyped-def]
            bad(y)
            return original(self, i, target, y, cfg)

        monkeypatch.setattr(migu.Masker, "_accumulate", syncing)
        with pytest.raises(HostSyncError), no_host_sync_in_migu():
            model(**batch)
    monkeypatch.setattr(migu.Masker, "_accumulate", original)
    model(**batch).loss.backward()  # the model's own syncs (HF mask checks) are not attributed to migu
    with no_host_sync_in_migu():
        masker.apply()
    masker.detach()


def test_no_sync_guard_sees_the_sparse_backward(tiny_model, make_batch, monkeypatch) -> None:
    from migu.engine.sparse import SparseBackward

    model, batch = _case("bert", tiny_model, make_batch)
    migu.attach(model, migu.MIGUConfig(threshold=T, sparse_backward=True))
    original = SparseBackward.keep_rows

    def syncing(self, i, buffer, device):  # type: ignore[no-untyped-def]
        keep = original(self, i, buffer, device)
        keep.tolist()
        return keep

    monkeypatch.setattr(SparseBackward, "keep_rows", syncing)
    loss = model(**batch).loss
    with pytest.raises(HostSyncError, match="tolist"), no_host_sync_in_migu():
        loss.backward()


class _CountSorts(TorchDispatchMode):
    """Counts aten.sort calls (the masks' sorts) under the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.sorts = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func.overloadpacket in (torch.ops.aten.sort,):
            self.sorts += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("layers", [2, 4])
def test_sparse_masks_sort_once_per_width_group(tiny_model, make_batch, layers: int) -> None:
    """The kept rows of all sparse layers come from two sorts per group of equal width and forward,
    however many layers there are (BERT: hidden and FFN width = 2 groups)."""
    model = tiny_model("bert", head="seq-cls", num_hidden_layers=layers)
    batch = make_batch(3, 7, lengths=[7, 5, 2])
    batch["labels"] = torch.tensor([0, 1, 1])
    masker = migu.attach(model, migu.MIGUConfig(threshold=T, sparse_backward=True))
    assert len(masker._sparse_set) == 6 * layers
    for _ in range(2):  # a second forward makes its own masks
        loss = model(**batch).loss
        with _CountSorts() as counter:
            loss.backward()
        assert counter.sorts == 2 * 2
        masker.apply()
        model.zero_grad(set_to_none=True)
