"""Data parallelism (issue 2, point 8): two gloo CPU processes, each with half of a global batch,
a DDP-wrapped model and MIGU, give the masks and weights of one process over the whole batch;
apply() reduces all statistics with exactly one all_reduce. With MIGU+Cluster (issue 15) too: the
cluster cut follows from the same reduced statistic, so both ranks mask the same clusters."""

from __future__ import annotations

import copy
import io
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import migu
from migu.engine import ClusterLayout, cluster_split, make_keep_masks, weight_clusters

WORLD = 2
STEPS = 2
THRESHOLD = 0.5
LR = 0.5


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_batches(make_batch) -> list[dict[str, torch.Tensor]]:
    # Rank 0 gets rows 0-1, rank 1 rows 2-3: very different numbers of real tokens per rank, so
    # a per-rank mean (or a mean of rank means) is not the global token mean.
    out = []
    for step, lengths in enumerate([[8, 7, 2, 1], [8, 8, 3, 1]]):
        b = make_batch(4, 8, lengths=lengths, seed=10 + step)
        b["labels"] = torch.tensor([0, 1, 1, 0])
        out.append(b)
    return out


def _local_keep(masker: migu.Masker, name: str, stat: torch.Tensor) -> torch.Tensor:
    """The mask this rank's statistic alone would give (the cluster cut for clustered targets)."""
    cfg = masker.config
    ids = masker.clusters.get(name)
    if ids is None or cfg.cluster is None:
        return make_keep_masks(stat[None], cfg.threshold)[0]
    return cluster_split(stat[None], ClusterLayout.build(ids[None]), cfg.threshold, cfg.cluster.partial)[0][0]


def _run(
    model: nn.Module,
    batches: list[dict[str, torch.Tensor]],
    rank: int,
    world: int,
    config: migu.MIGUConfig | None = None,
    clusters: dict[str, torch.Tensor] | None = None,
) -> dict:
    """STEPS of forward/backward/apply/SGD; records masks, all_reduce calls and local-only masks."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    masker = migu.attach(model, config or migu.MIGUConfig(threshold=THRESHOLD))
    if clusters:
        masker.set_clusters(
            {("module." if isinstance(model, DDP) else "") + k: v for k, v in clusters.items()}
        )
    calls, masks, local_masks = [], [], []
    for batch in batches:
        half = batch["input_ids"].shape[0] // world
        local = {k: v[rank * half : (rank + 1) * half] for k, v in batch.items()}
        opt.zero_grad()
        model(**local).loss.backward()
        local_stats = masker.statistics()
        local_masks.append({k: _local_keep(masker, k, v) for k, v in local_stats.items()})
        count = [0]
        original = dist.all_reduce

        def counting(*args, _count=count, _original=original, **kwargs):
            _count[0] += 1
            return _original(*args, **kwargs)

        dist.all_reduce = counting
        try:
            step_masks = masker.apply()
        finally:
            dist.all_reduce = original
        calls.append(count[0])
        masks.append({k: v.clone() for k, v in step_masks.items()})
        opt.step()
    masker.detach()
    strip = lambda d: {k.removeprefix("module."): v for k, v in d.items()}  # noqa: E731
    inner = model.module if isinstance(model, DDP) else model
    return {
        "calls": calls,
        "masks": [strip(m) for m in masks],
        "local_masks": [strip(m) for m in local_masks],
        "state": {k: v.detach().clone() for k, v in inner.state_dict().items()},
    }


def _worker(
    rank: int,
    port: int,
    model_bytes: bytes,
    batches: list,
    out_dir: str,
    config: migu.MIGUConfig | None = None,
    clusters: dict[str, torch.Tensor] | None = None,
) -> None:
    # The model travels as bytes: torch.multiprocessing would share parameter storage between the
    # parent and both ranks, and their optimizer steps would then write into the same memory.
    model = torch.load(io.BytesIO(model_bytes), weights_only=False)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        result = _run(DDP(model), batches, rank, WORLD, config, clusters)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # ~10-20 s: each spawned rank imports torch, transformers and peft
def test_ddp_two_processes_match_one_process(tiny_model, make_batch, tmp_path) -> None:
    model = tiny_model("bert", head="seq-cls")
    batches = _global_batches(make_batch)
    single = _run(copy.deepcopy(model), batches, rank=0, world=1)
    assert single["calls"] == [0] * STEPS  # no process group: no collective

    buffer = io.BytesIO()
    torch.save(model, buffer)
    mp.spawn(_worker, args=(_free_port(), buffer.getvalue(), batches, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]

    for r in ranks:
        assert r["calls"] == [1] * STEPS  # ONE all_reduce per apply(), for all layers together
        for step in range(STEPS):
            assert set(r["masks"][step]) == set(single["masks"][step])
            for name, keep in single["masks"][step].items():
                assert torch.equal(r["masks"][step][name], keep), (step, name)
                assert torch.equal(r["masks"][step][name], ranks[0]["masks"][step][name])
        for key, value in single["state"].items():
            assert torch.allclose(r["state"][key], value, atol=1e-6, rtol=1e-5), key
    # Non-vacuous: each rank's own statistics alone would have given other masks.
    for r in ranks:
        assert any(
            not torch.equal(r["local_masks"][s][n], single["masks"][s][n])
            for s in range(STEPS)
            for n in single["masks"][s]
        )
    # And the step did change the weights (masked rows of the targets did not).
    assert any(not torch.equal(single["state"][k], v) for k, v in model.state_dict().items())


@pytest.mark.slow  # ~10-20 s, as above
def test_ddp_two_processes_mask_the_same_clusters(tiny_model, make_batch, tmp_path) -> None:
    """Partial rule ``drop``: whole clusters only, a data-dependent kept count (the mask-multiply path)."""
    model = tiny_model("bert", head="seq-cls")
    batches = _global_batches(make_batch)
    config = migu.MIGUConfig(threshold=THRESHOLD, cluster={"n_clusters": 4, "partial": "drop"})
    probe = migu.attach(copy.deepcopy(model), config)
    clusters = weight_clusters(probe, 4, seed=0, n_init=1)
    single = _run(copy.deepcopy(model), batches, rank=0, world=1, config=config, clusters=clusters)

    buffer = io.BytesIO()
    torch.save(model, buffer)
    args = (_free_port(), buffer.getvalue(), batches, str(tmp_path), config, clusters)
    mp.spawn(_worker, args=args, nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for r in ranks:
        assert r["calls"] == [1] * STEPS  # still ONE all_reduce per apply()
        for step in range(STEPS):
            assert set(r["masks"][step]) == set(single["masks"][step])
            for name, keep in single["masks"][step].items():
                assert torch.equal(r["masks"][step][name], keep), (step, name)
                if name in clusters:  # whole clusters only
                    ids = clusters[name]
                    assert all(keep[ids == c].unique().numel() == 1 for c in ids.unique())
        for key, value in single["state"].items():
            assert torch.allclose(r["state"][key], value, atol=1e-6, rtol=1e-5), key
    # Non-vacuous: each rank's own statistics alone would have given other cluster masks.
    for r in ranks:
        assert any(
            not torch.equal(r["local_masks"][s][n], single["masks"][s][n])
            for s in range(STEPS)
            for n in single["masks"][s]
        )
