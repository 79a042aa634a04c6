"""Backward-time masking (issue 16, DeepSpeed): ``masker.install_grad_hooks()`` masks each target
gradient in the backward, before anything (DDP's all-reduce, DeepSpeed's reduction, an fp32
master copy) reads it.

- one micro-batch per step: the same masked gradients and masks as ``apply()`` (plain, DDP with
  two gloo processes, every cut and layout);
- gradient accumulation: micro-batch m is masked by the cut of the statistic of micro-batches
  1..m (the documented semantics), checked against a reference built from ``compute_masks()``;
- DeepSpeed ZeRO-2 and ZeRO-3 (two gloo CPU processes, when deepspeed is installed): the weights
  after two steps equal a one-process ``apply()`` run.
"""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from support.models import build_tiny_model, random_batch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import migu
from migu.engine import scale

THRESHOLD = 0.5
WORLD = 2
CLIP = 0.5


def _cls_batch(seed: int, lengths: list[int]) -> dict[str, torch.Tensor]:
    b = random_batch(len(lengths), 8, lengths=lengths, seed=seed)
    b["labels"] = torch.tensor([i % 2 for i in range(len(lengths))])
    return b


def _lm_batch(seed: int, lengths: list[int]) -> dict[str, torch.Tensor]:
    b = random_batch(len(lengths), 8, lengths=lengths, seed=seed)
    b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    return b


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# (kind, head, MIGUConfig kwargs): biases + mask_bias, GPT-2 Conv1D (rows on dim 1), quantile, LoRA-free
CASES = {
    "bert-topk": ("bert", "seq-cls", {}),
    "bert-quantile-official": ("bert", "seq-cls", {"preset": "official"}),
    "gpt2-topk": ("gpt2", "causal-lm", {}),
    "llama-sparse": ("llama", "causal-lm", {"sparse_backward": True}),
}


def _batch_for(head: str, seed: int, lengths: list[int]) -> dict[str, torch.Tensor]:
    return _cls_batch(seed, lengths) if head == "seq-cls" else _lm_batch(seed, lengths)


@pytest.mark.parametrize("case", list(CASES))
def test_hooks_equal_apply_with_one_micro_batch(case: str) -> None:
    kind, head, kwargs = CASES[case]
    cfg = migu.MIGUConfig(threshold=THRESHOLD, **kwargs)
    if cfg.skip_first_task:
        cfg.skip_first_task = False
    base = build_tiny_model(kind, head=head)
    dense, hooked = copy.deepcopy(base), copy.deepcopy(base)
    m_dense, m_hooked = migu.attach(dense, cfg), migu.attach(hooked, cfg)
    m_hooked.install_grad_hooks()
    for step in range(2):
        batch = _batch_for(head, step, [8, 5, 3])
        dense.zero_grad()
        hooked.zero_grad()
        dense(**batch).loss.backward()
        masks = m_dense.apply()
        hooked(**batch).loss.backward()
        hooked_grads = _grads(hooked)  # masked already, before apply()
        hooked_masks = m_hooked.apply()
        assert set(masks) == set(hooked_masks)
        for name, keep in masks.items():
            assert torch.equal(hooked_masks[name], keep), name
        dense_grads = _grads(dense)
        for name, g in dense_grads.items():
            assert torch.equal(hooked_grads[name], g), (step, name)
        assert not all(bool(k.all()) for k in masks.values())  # rows were masked
        with torch.no_grad():  # the same SGD step, so the next statistic differs from the first
            for p, q in zip(dense.parameters(), hooked.parameters(), strict=True):
                if p.grad is not None:
                    p.sub_(0.5 * p.grad)
                    q.sub_(0.5 * q.grad)


def test_hooks_with_gradient_accumulation_use_the_running_statistic() -> None:
    """Micro-batch m gets the cut of micro-batches 1..m; the last one the step's (apply()'s) mask."""
    cfg = migu.MIGUConfig(threshold=THRESHOLD)
    base = build_tiny_model("bert", head="seq-cls")
    micro = [_cls_batch(1, [8, 2]), _cls_batch(2, [3, 7]), _cls_batch(3, [8, 8])]

    ref = copy.deepcopy(base)
    ref_masker = migu.attach(ref, cfg)
    expected: dict[str, torch.Tensor] = {}
    per_micro_masks = []
    for batch in micro:
        ref.zero_grad()
        loss = ref(**batch).loss
        keeps = ref_masker.compute_masks()  # statistic of micro-batches 1..m (no reset, one process)
        per_micro_masks.append(keeps)
        loss.backward()
        for t in ref_masker.targets:
            keep = keeps[t.name]
            expected[t.name + ".weight"] = expected.get(t.name + ".weight", 0) + t.weight.grad * keep[:, None]
            expected[t.name + ".bias"] = expected.get(t.name + ".bias", 0) + t.bias.grad * keep
    step_masks = ref_masker.apply()  # the step's mask from all three micro-batches

    hooked = copy.deepcopy(base)
    masker = migu.attach(hooked, cfg)
    masker.install_grad_hooks()
    for batch in micro:
        hooked(**batch).loss.backward()
    grads = dict(hooked.named_parameters())
    for name, value in expected.items():
        assert torch.allclose(grads[name].grad, value, atol=1e-7), name
    closing = masker.apply()
    for name, keep in step_masks.items():
        assert torch.equal(closing[name], keep), name
    # Non-vacuous: the running masks changed between micro-batches.
    assert any(not torch.equal(per_micro_masks[0][n], per_micro_masks[-1][n]) for n in per_micro_masks[0])
    assert masker.statistics()[masker.targets[0].name].abs().sum() == 0  # apply() closed the step


def test_hooks_refuse_strict_and_respect_skip_first_task() -> None:
    model = build_tiny_model("bert", head="seq-cls")
    strict = migu.attach(model, migu.MIGUConfig(mode="strict"))
    with pytest.raises(ValueError, match=r"install_grad_hooks\(\) does not support MIGUConfig.mode='strict'"):
        strict.install_grad_hooks()
    strict.detach()

    masker = migu.attach(model, migu.MIGUConfig(threshold=THRESHOLD, skip_first_task=True))
    masker.install_grad_hooks()
    plain = copy.deepcopy(model)
    batch = _cls_batch(0, [8, 4])
    model(**batch).loss.backward()
    masks = masker.apply()
    assert masks and all(bool(k.all()) for k in masks.values())  # task 0: nothing masked
    plain(**batch).loss.backward()
    for (n, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), n
    masker.detach()
    assert all(not p._backward_hooks for p in model.parameters() if p._backward_hooks is not None)


def test_hooks_refuse_fsdp2() -> None:
    """FSDP2 has a window after the backward, where apply() masks its DTensor shards."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = build_tiny_model("llama", head="causal-lm")
        fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
        masker = migu.attach(model, migu.MIGUConfig())
        with pytest.raises(ValueError, match=r"not for FSDP2 .*Call apply\(\)"):
            masker.install_grad_hooks()
    finally:
        dist.destroy_process_group()


def test_apply_without_gradients_warns_about_deepspeed(caplog: pytest.LogCaptureFixture) -> None:
    """The DeepSpeed symptom (gradients consumed inside backward) is named, once."""
    model = build_tiny_model("bert", head="seq-cls")
    masker = migu.attach(model, migu.MIGUConfig())
    model(**_cls_batch(0, [8, 4]))  # a training forward, then no gradient reaches apply()
    with caplog.at_level("WARNING", logger="migu.engine.masker"):
        assert masker.apply() == {}
        model(**_cls_batch(1, [8, 4]))
        masker.apply()
    assert sum("install_grad_hooks" in r.message for r in caplog.records) == 1


# ------------------------------------------------------------------------------------------ DDP
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_batches() -> list[dict[str, torch.Tensor]]:
    return [_cls_batch(30 + s, [8, 7, 2, 1]) for s in range(2)]


def _ddp_run(model: nn.Module, rank: int, world: int, hooks: bool) -> dict[str, Any]:
    inner = model.module if isinstance(model, DDP) else model
    masker = migu.attach(inner, migu.MIGUConfig(threshold=THRESHOLD))
    if hooks:
        masker.install_grad_hooks()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    masks, grads, calls = [], [], []
    for batch in _ddp_batches():
        half = batch["input_ids"].shape[0] // world
        local = {k: v[rank * half : (rank + 1) * half] for k, v in batch.items()}
        opt.zero_grad()
        count = [0]
        original = dist.all_reduce

        def counting(*args: Any, _count: list[int] = count, _original: Any = original, **kw: Any) -> Any:
            _count[0] += 1
            return _original(*args, **kw)

        dist.all_reduce = counting  # DDP's reducer calls the process group directly: only MIGU counts
        try:
            model(**local).loss.backward()
            masks.append({k: v.clone() for k, v in masker.apply().items()})
        finally:
            dist.all_reduce = original
        calls.append(count[0])
        inner = model.module if isinstance(model, DDP) else model
        grads.append(_grads(inner))
        opt.step()
    masker.detach()
    inner = model.module if isinstance(model, DDP) else model
    return {"masks": masks, "grads": grads, "calls": calls, "state": inner.state_dict()}


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        out = {}
        for hooks in (False, True):
            out[hooks] = _ddp_run(DDP(build_tiny_model("bert", head="seq-cls", seed=3)), rank, WORLD, hooks)
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # ~10-20 s: two spawned ranks
def test_hooks_under_ddp_equal_apply(tmp_path: Path) -> None:
    single = _ddp_run(build_tiny_model("bert", head="seq-cls", seed=3), 0, 1, hooks=False)
    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for r in range(WORLD):
        out = torch.load(tmp_path / f"rank{r}.pt", weights_only=False)
        dense, hooked = out[False], out[True]
        assert dense["calls"] == [1, 1] and hooked["calls"] == [1, 1]  # one all_reduce per step either way
        for step in range(2):
            for name, keep in single["masks"][step].items():
                assert torch.equal(dense["masks"][step][name], keep), name
                assert torch.equal(hooked["masks"][step][name], keep), name
            for name, g in dense["grads"][step].items():
                # DDP averaged masked gradients (hooks) == masked averaged gradients (apply)
                assert torch.allclose(hooked["grads"][step][name], g, atol=1e-7), (step, name)
        for key, value in single["state"].items():
            assert torch.allclose(hooked["state"][key], value, atol=1e-6, rtol=1e-5), key


# ------------------------------------------------------------------------------------ DeepSpeed
def _ds_batches() -> list[dict[str, torch.Tensor]]:
    # equal label-token counts per rank half (11 and 11), so the rank-averaged loss is the global one
    return [_lm_batch(40 + s, [8, 5, 6, 7]) for s in range(2)]


def _ds_reference() -> dict[str, torch.Tensor]:
    model = build_tiny_model("llama", head="causal-lm", seed=4)
    masker = migu.attach(model, migu.MIGUConfig(threshold=THRESHOLD))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for batch in _ds_batches():
        opt.zero_grad()
        model(**batch).loss.backward()
        masker.apply()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)  # DeepSpeed's gradient_clipping
        opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def _ds_worker(rank: int, port: int, stage: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_SIZE=str(WORLD),
    )
    torch.set_num_threads(1)
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    model = build_tiny_model("llama", head="causal-lm", seed=4)
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": CLIP,  # DeepSpeed's default (1.0) made explicit: it clips the masked gradients
    }
    scale.check_deepspeed_config(config)
    masker = migu.attach(model, migu.MIGUConfig(threshold=THRESHOLD))
    masker.install_grad_hooks()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    masks = []
    for batch in _ds_batches():
        local = {k: v[rank * 2 : (rank + 1) * 2] for k, v in batch.items()}
        engine.backward(engine(**local).loss)
        masks.append(masker.apply())
        engine.step()
    from deepspeed.utils import safe_get_full_fp32_param

    state = {n: safe_get_full_fp32_param(p).clone() for n, p in engine.module.named_parameters()}
    torch.save({"masks": masks, "state": state}, Path(out_dir) / f"rank{rank}.pt")


@pytest.mark.slow  # ~1-2 min per stage: each rank imports deepspeed (and builds its CPU comm op once)
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_hooks_match_one_process(stage: int, tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    ref = _ds_reference()
    mp.spawn(_ds_worker, args=(_free_port(), stage, str(tmp_path)), nprocs=WORLD, join=True)
    for r in range(WORLD):
        out = torch.load(tmp_path / f"rank{r}.pt", weights_only=False)
        assert out["masks"] and all(out["masks"])
        for key, value in ref.items():
            if key in out["state"]:
                assert torch.allclose(out["state"][key], value, atol=1e-5, rtol=1e-4), key


def test_deepspeed_config_check_names_the_option() -> None:
    assert scale.check_deepspeed_config({"zero_optimization": {"stage": 2}}) == 2
    assert scale.check_deepspeed_config({}) == 0
    with pytest.raises(ValueError, match=r"zero_optimization\.stage must be one of 0, 1, 2, 3, got 4"):
        scale.check_deepspeed_config({"zero_optimization": {"stage": 4}})
    with pytest.raises(ValueError, match=r"mode='strict' is not supported under DeepSpeed"):
        scale.check_deepspeed_config({"zero_optimization": {"stage": 1}}, mode="strict")


def test_setup_for_accelerator_picks_the_mode_and_names_bad_options() -> None:
    """DeepSpeed -> backward-time hooks; FSDP needs fsdp_version=2; DDP/one process -> apply()."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    def accel(kind: DistributedType, **state: Any) -> Any:
        return SimpleNamespace(distributed_type=kind, state=SimpleNamespace(**state))

    model = build_tiny_model("bert", head="seq-cls")
    masker = migu.attach(model, migu.MIGUConfig())
    assert scale.setup_for_accelerator(masker, accel(DistributedType.MULTI_CPU)) == "apply"
    fsdp2 = SimpleNamespace(fsdp_version=2)
    assert scale.setup_for_accelerator(masker, accel(DistributedType.FSDP, fsdp_plugin=fsdp2)) == "apply"
    with pytest.raises(ValueError, match=r"fsdp_version=2 .*got fsdp_version=1"):
        scale.setup_for_accelerator(masker, accel(DistributedType.FSDP, fsdp_plugin=SimpleNamespace()))
    ds = SimpleNamespace(deepspeed_config={"zero_optimization": {"stage": 2}})
    mode = scale.setup_for_accelerator(masker, accel(DistributedType.DEEPSPEED, deepspeed_plugin=ds))
    assert mode == "backward"
    assert masker._grad_handles  # hooks installed
    bad = SimpleNamespace(deepspeed_config={"zero_optimization": {"stage": 5}})
    with pytest.raises(ValueError, match=r"zero_optimization.stage"):
        scale.setup_for_accelerator(masker, accel(DistributedType.DEEPSPEED, deepspeed_plugin=bad))
    strict = migu.attach(build_tiny_model("bert", head="seq-cls"), migu.MIGUConfig(mode="strict"))
    with pytest.raises(ValueError, match=r"mode='strict' is not supported under DeepSpeed"):
        scale.setup_for_accelerator(strict, accel(DistributedType.DEEPSPEED, deepspeed_plugin=ds))
