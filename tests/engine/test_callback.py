"""``migu.MIGUCallback`` inside a real ``transformers.Trainer`` (issue 2, point 9): masks are applied
at every optimizer step (masked rows of an SGD setup do not move) and hooks go at train end."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

import migu

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


class _Rows(Dataset):
    def __init__(self, n: int = 8, seq: int = 6) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(2, 60, (n, seq), generator=g)
        self.mask = torch.ones(n, seq, dtype=torch.long)
        for i in range(n):
            self.mask[i, 2 + i % 4 :] = 0  # padding in every batch
        self.labels = torch.arange(n) % 2

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


class _Probe(TrainerCallback):
    """Runs after MIGUCallback: checks the gradients it masked, then what the step did to them."""

    def __init__(self, migu_cb: migu.MIGUCallback) -> None:
        self.migu_cb = migu_cb
        self.steps: list[dict[str, Any]] = []
        self.hooks_at_end: int | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs) -> None:
        masker = self.migu_cb.masker
        assert masker is not None
        assert masker.steps == len(self.steps) + 1 and len(masker.masks) == 12  # applied for this step
        modules = dict(model.named_modules())
        record = {"masks": {k: v.clone() for k, v in masker.masks.items()}, "before": {}}
        for name, keep in masker.masks.items():
            w = modules[name].weight
            assert torch.all(w.grad[~keep] == 0)
            assert bool((w.grad[keep] != 0).any())
            record["before"][name] = w.detach().clone()
        self.steps.append(record)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs) -> None:
        modules = dict(model.named_modules())
        record = self.steps[-1]
        for name, keep in record["masks"].items():
            w, w0 = modules[name].weight.detach(), record["before"][name]
            assert torch.equal(w[~keep], w0[~keep]), name  # masked rows did not move
            assert bool((w[keep] != w0[keep]).any(dim=1).all()), name  # kept rows did
        record["checked"] = True

    def on_train_end(self, args, state, control, model=None, **kwargs) -> None:
        self.hooks_at_end = sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()
        )  # after MIGUCallback.on_train_end


def _train(tmp_path, tiny_model, config: migu.MIGUConfig, optim: str, clusters=None, **extra: Any):
    model = tiny_model("bert", head="seq-cls")
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    cb = migu.MIGUCallback(config, clusters=clusters)
    probe = _Probe(cb)
    settings: dict[str, Any] = {
        "output_dir": str(tmp_path),
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "learning_rate": 0.1,
        "weight_decay": 0.0,
        "lr_scheduler_type": "constant",
        "optim": optim,
        "report_to": "none",
        "use_cpu": True,
        "save_strategy": "no",
        "logging_strategy": "no",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    args = TrainingArguments(**{**settings, **extra})
    trainer = Trainer(model=model, args=args, train_dataset=_Rows(), callbacks=[cb, probe])
    trainer.train()
    return model, cb, probe, hooks_before


def test_callback_masks_every_step_and_detaches(tmp_path, tiny_model) -> None:
    model, cb, probe, hooks_before = _train(
        tmp_path, tiny_model, migu.MIGUConfig(threshold=0.5), optim="sgd", max_grad_norm=0.0
    )
    assert isinstance(model.bert.encoder.layer[0].attention.self.query, torch.nn.Linear)
    assert len(probe.steps) == 2 and all(s.get("checked") for s in probe.steps)
    assert len(probe.steps[0]["masks"]) == 12
    # The masks follow the data: they are not all the same rows at both steps.
    assert any(
        not torch.equal(probe.steps[0]["masks"][n], probe.steps[1]["masks"][n])
        for n in probe.steps[0]["masks"]
    )
    assert cb.masker is None
    assert probe.hooks_at_end == hooks_before


def test_callback_strict_mode_with_adamw(tmp_path, tiny_model) -> None:
    """Trainer's AdamW (weight decay, momentum) wrapped by Accelerate: strict keeps masked rows fixed."""
    _, cb, probe, _ = _train(
        tmp_path,
        tiny_model,
        migu.MIGUConfig(threshold=0.5, mode="strict"),
        optim="adamw_torch",
        max_grad_norm=1.0,
        weight_decay=0.1,
        learning_rate=0.01,
    )
    assert len(probe.steps) == 2 and all(s.get("checked") for s in probe.steps)
    assert cb.masker is None


def test_callback_with_clusters_masks_whole_clusters(tmp_path, tiny_model) -> None:
    """MIGU+Cluster (issue 15) through the callback: its clusters are set at train start."""
    config = migu.MIGUConfig(threshold=0.5, cluster={"n_clusters": 4, "partial": "drop"})
    probe_masker = migu.attach(tiny_model("bert", head="seq-cls"), config)  # the same seeded weights
    clusters = migu.engine.weight_clusters(probe_masker, 4, seed=0, n_init=1)
    probe_masker.detach()
    _, cb, probe, _ = _train(tmp_path, tiny_model, config, optim="sgd", clusters=clusters, max_grad_norm=0.0)
    assert len(probe.steps) == 2 and all(s.get("checked") for s in probe.steps)
    for step in probe.steps:
        for name, keep in step["masks"].items():
            ids = clusters[name]
            assert all(keep[ids == c].unique().numel() == 1 for c in ids.unique()), name
    assert cb.masker is None
