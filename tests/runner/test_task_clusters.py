"""MIGU+Cluster in runs (issue 15): the nested config, the clusters saved with each checkpoint and
restored on resume, the run really masking per cluster, and the ablation sweep's grid."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from migu.engine import ClusterConfig, attach
from migu.grid.spec import load_sweep
from migu.runner import loop as loop_mod
from migu.runner.checkpoint import MIGU_TENSORS
from migu.runner.config import (
    ConfigError,
    RunConfig,
    build_run_config,
    config_to_yaml,
    load_config,
    yaml_load,
)
from migu.runner.execute import run
from migu.runner.plan import build_model, plan_run
from migu.runner.state import checkpoint_dir as task_dir
from migu.runner.state import config_hash
from migu.runner.task_clusters import cluster_tensors, load_cluster_tensors

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_nested_cluster_mapping_is_typed_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("tasks: [a]\nmigu:\n  threshold: 0.6\n  cluster: {strategy: weight, n_clusters: 8}\n")
    cfg = load_config(path, ["migu.cluster.partial=drop", "migu.cluster.n_clusters=0.25"])
    assert cfg.migu is not None and cfg.migu.cluster == ClusterConfig(n_clusters=0.25, partial="drop")
    again = build_run_config({k: v for k, v in yaml_load(config_to_yaml(cfg)).items()})
    assert again.migu == cfg.migu
    for override, match in [
        ("migu.cluster.seed=abc", r"migu\.cluster\.seed must be an integer"),
        ("migu.cluster.bogus=1", r"unknown key\(s\) \['bogus'\] in migu\.cluster"),
        ("migu.cluster.when=later", r"migu\.cluster\.when must be one of once, each_task"),
        ("migu.cluster.n_clusters=2.0", r"ClusterConfig\.n_clusters"),
        ("migu.cluster=3", r"migu\.cluster must be a mapping"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_config(path, [override])


def test_runs_without_clusters_keep_their_config_hash() -> None:
    data = build_run_config({"tasks": ["a"], "migu": {"threshold": 0.5}}).to_dict()
    assert data["migu"]["cluster"] is None
    before = {**data, "migu": {k: v for k, v in data["migu"].items() if k != "cluster"}}
    assert config_hash(data) == config_hash(before)  # run directories started earlier still resume
    on = build_run_config({"tasks": ["a"], "migu": {"threshold": 0.5, "cluster": {}}}).to_dict()
    assert config_hash(on) != config_hash(data)


def test_cluster_tensors_round_trip_through_safetensors(tmp_path: Path) -> None:
    clusters = {"layer.0.q": torch.tensor([0, 1, 1, 0], dtype=torch.int32), "layer.0.o": torch.arange(3)}
    tensors = cluster_tensors(clusters)
    assert all(t.dtype == torch.long and t.is_contiguous() for t in tensors.values())
    save_file(tensors, str(tmp_path / "c.safetensors"))
    loaded = load_cluster_tensors(tmp_path / "c.safetensors")
    assert loaded.keys() == clusters.keys()
    assert all(torch.equal(loaded[k], clusters[k].long()) for k in clusters)


def test_proxy_cluster_sweep_expands() -> None:
    name, cells = load_sweep(CONFIGS / "sweeps/proxy_cluster.yaml")
    assert name == "proxy_cluster" and len(cells) == 2 * 3 * 3
    by_name = {c.name: build_run_config(c.config) for c in cells}
    ft_w = by_name["recipe-ft_cluster-weight_seed-42"]
    assert ft_w.method.name == "ft" and ft_w.train.lr == pytest.approx(1e-4)
    assert ft_w.migu is not None and ft_w.migu.threshold == pytest.approx(0.7)
    assert ft_w.migu.cluster == ClusterConfig(strategy="weight", n_clusters=0.0625)
    lora_c = by_name["recipe-lora_cluster-comagnitude_seed-2048"]
    assert lora_c.method.name == "lora" and lora_c.train.lr == pytest.approx(1e-3) and lora_c.seed == 2048
    assert lora_c.migu is not None and lora_c.migu.cluster is not None
    assert lora_c.migu.cluster.strategy == "comagnitude" and lora_c.migu.cluster.samples == 100
    plain = by_name["recipe-lora_cluster-none_seed-42"]
    assert (
        plain.migu is not None and plain.migu.cluster is None and plain.migu.threshold == pytest.approx(0.7)
    )


def _saved_clusters(run_dir: Path, task: int) -> dict[str, torch.Tensor]:
    return load_file(str(task_dir(run_dir, task) / MIGU_TENSORS))


@pytest.mark.parametrize(
    "cluster",
    [
        {"strategy": "comagnitude", "n_clusters": 4, "samples": 12, "when": "once"},
        {"strategy": "weight", "n_clusters": 0.25, "when": "each_task", "partial": "drop"},
    ],
    ids=["comagnitude-once", "weight-each_task"],
)
def test_resume_after_a_crash_keeps_the_clusters(
    tiny_config: Callable[..., RunConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: dict
) -> None:
    cfg = tiny_config(migu={"threshold": 0.5, "cluster": cluster}, keep_checkpoints=True)
    full = run(cfg, tmp_path / "full")

    real_train = loop_mod.train_task
    seen: list[dict[str, torch.Tensor] | None] = []

    def crash_on_second_task(*args, **kwargs):
        seen.append(args[8] if len(args) > 8 else kwargs.get("clusters"))
        if args[1].task_index == 1:  # killed in the middle of task 2
            raise KeyboardInterrupt("killed")
        return real_train(*args, **kwargs)

    monkeypatch.setattr("migu.runner.execute.train_task", crash_on_second_task)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "resumed")
    monkeypatch.setattr("migu.runner.execute.train_task", real_train)
    resumed = run(cfg, tmp_path / "resumed")

    assert resumed.matrix == full.matrix and resumed.baseline == full.baseline
    for task in (0, 1):
        a, b = _saved_clusters(tmp_path / "full", task), _saved_clusters(tmp_path / "resumed", task)
        assert a.keys() == b.keys() and a
        assert all(torch.equal(a[k], b[k]) for k in a), task
    assert all(s is not None for s in seen)  # train_task got the clusters
    first, second = _saved_clusters(tmp_path / "full", 0), _saved_clusters(tmp_path / "full", 1)
    if cluster["when"] == "once":
        assert all(torch.equal(first[k], second[k]) for k in first)
    sizes = {int(ids.max()) + 1 for ids in first.values()}
    assert sizes <= {4} if cluster["strategy"] == "comagnitude" else sizes <= {8, 12}  # d_out 32 / 48


def test_a_run_masks_whole_clusters(tiny_config: Callable[..., RunConfig], tmp_path: Path) -> None:
    """One cluster per target and partial ``drop``: the cluster never fits the budget, so no target row
    is ever updated (strict mode: not even by AdamW's weight decay), while the rest of the model trains."""
    migu = {"threshold": 0.5, "mode": "strict", "cluster": {"n_clusters": 1, "partial": "drop"}}
    cfg = tiny_config(migu=migu, keep_checkpoints=True)
    out = tmp_path / "run"
    run(cfg, out)
    _, initial = build_model(plan_run(cfg, tmp_path / "fresh"))
    masker = attach(initial, cfg.migu)
    targets = [f"{t.name}.{p}" for t in masker.targets for p in ("weight", "bias")]  # mask_bias: frozen too
    masker.detach()
    trained = load_file(str(task_dir(out, 1) / "model.safetensors"))
    assert len(targets) == 24 and set(targets) <= set(trained)
    init = dict(initial.state_dict())
    for n in targets:
        assert torch.equal(trained[n], init[n]), n
    others = [n for n in trained if n not in targets and n in init]
    assert any(not torch.equal(trained[n], init[n]) for n in others)
    clusters = _saved_clusters(out, 1)
    assert clusters and all(int(ids.max()) == 0 for ids in clusters.values())


def test_a_lora_run_clusters_the_adapters(tiny_config: Callable[..., RunConfig], tmp_path: Path) -> None:
    """MIGU+Cluster within LoRA (the paper's setting): only the trainable LoRA factors get clusters;
    an r = 8 lora_A is one cluster at n_clusters = 1/16, a d_out = 32 lora_B two."""
    cluster = {"strategy": "comagnitude", "n_clusters": 0.0625, "samples": 8, "when": "each_task"}
    cfg = tiny_config(
        method={"name": "lora"}, migu={"threshold": 0.7, "cluster": cluster}, keep_checkpoints=True
    )
    res = run(cfg, tmp_path / "run")
    assert res.complete and res.migu["cluster"]["strategy"] == "comagnitude"
    for task in (0, 1):
        clusters = _saved_clusters(tmp_path / "run", task)
        assert clusters and all(".lora_A." in n or ".lora_B." in n for n in clusters)
        for name, ids in clusters.items():
            assert int(ids.max()) + 1 == (1 if ".lora_A." in name else 2), name
            assert ids.shape == ((8,) if ".lora_A." in name else (32,))
