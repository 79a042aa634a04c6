"""Continual pre-training (order 7, ContinualLM's protocol): a stage is MLM on a domain corpus;
after each (or after the last only), each seen domain's end task is finetuned from a copy of the
post-trained encoder with a new head and scored: ``mf1`` and ``acc`` matrices, summarized as final
(last row), forward (diagonal) and forgetting (diagonal minus last row)."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import set_seed

from ...data import get_domain, list_domains
from ...data.corpus import (
    Blocks,
    DomainData,
    check_domains,
    corpus_blocks,
    default_cache_dir,
    file_sha256,
    load_domain,
)
from ...methods import FT, TaskContext
from ...metrics import accuracy, diagonal_forgetting, f1, mean_diagonal, mean_last_row
from ...models import MaskedLMFamily, build_mlm_family
from ..config import ModelConfig, RunConfig, TrainConfig
from ..loop import train_task
from ..results import package_versions
from ..state import Progress
from .base import Baselines, Matrices, Row, SaveProgress, Stages
from .reference import (
    load_reference,
    reference_key,
    reference_path,
    rows_sha256,
    save_reference,
    weights_sha256,
)

log = logging.getLogger(__name__)


class PretrainStages(Stages):
    """MLM on domain corpora in order; end tasks finetuned from copies after each (ContinualLM)."""

    regime = "pretrain"
    metrics = ("mf1", "acc")
    registry = staticmethod(list_domains)

    @classmethod
    def load(cls, config: RunConfig, names: Sequence[str], root: Path) -> PretrainStages:
        check_domains(names, root)
        return cls(config, [load_domain(n, root, config.seed) for n in names])

    def __init__(self, config: RunConfig, domains: Sequence[DomainData]) -> None:
        super().__init__(config, [d.name for d in domains])
        self.domains = list(domains)
        self.family: MaskedLMFamily | None = None
        self.blocks: list[Blocks] = []
        self.correct: dict[str, list[int]] = {}  # end task -> 0/1 per test row, at the last scoring

    def build(self) -> MaskedLMFamily:
        pre = self.config.pretrain
        self.family = build_mlm_family(self.config.model, pre.mlm_probability)
        # every corpus blocked now, so a corpus shorter than one block fails before any training
        self.blocks = [
            corpus_blocks(d, self.family.tokenizer, pre.block_size, pre.cache_dir) for d in self.domains
        ]
        return self.family

    def train_rows(self, i: int) -> Sequence[Any]:
        return self.blocks[i].rows()

    def train_config(self, i: int) -> TrainConfig:
        cfg = self.config.train
        steps = self.config.pretrain.steps(cfg.batch_size, cfg.grad_accum)
        if steps is None:
            return cfg
        per_epoch = math.ceil(math.ceil(len(self.blocks[i]) / cfg.batch_size) / cfg.grad_accum)
        return dataclasses.replace(cfg, epochs=float(math.ceil(steps / per_epoch)), max_steps_per_task=steps)

    def score(
        self, i: int | None, accelerator: Accelerator, progress: Progress, save: SaveProgress
    ) -> dict[str, Row]:
        n = len(self.domains)
        if i is not None and self.config.pretrain.evaluate == "last" and i < n - 1:
            return {m: [None] * n for m in self.metrics}  # scored after the last domain only
        seen = range(n) if i is None else range(i + 1)  # baseline: every end task from the unadapted model
        row: dict[str, Row] = {m: [None] * n for m in self.metrics}
        records: dict[int, dict[str, Any]] = {}
        for j in seen:  # one progress record per (stage, end task): a resume goes on from the next
            record = progress.get(i, j)
            if record is None:
                record = self._reference(j, accelerator) if i is None else self._end_task(j, i, accelerator)
                progress.put(i, j, record)
                save()
            records[j] = record
            for m in self.metrics:
                row[m][j] = records[j][m]
        # the rows' 0/1 travel in the progress records, so a run resumed between end tasks keeps them
        # (records of a run started before they were kept have none: no bootstrap over rows then)
        has_rows = all("correct" in r for r in records.values())
        self.correct = {self.names[j]: list(r["correct"]) for j, r in records.items()} if has_rows else {}
        if i is not None:
            log.info(
                "after %s: %s",
                self.names[i],
                " ".join(
                    f"{self.names[j]} mf1={100 * row['mf1'][j]:.1f} acc={100 * row['acc'][j]:.1f}"
                    for j in seen
                ),
            )
        return row

    def _recipe(self, j: int, stage: int) -> tuple[ModelConfig, TrainConfig, int]:
        """The model config, optimisation recipe and seed of domain ``j``'s end task after ``stage``."""
        domain, end = self.domains[j], self.config.pretrain.end_task
        model_cfg = dataclasses.replace(self.config.model, max_length=end.max_length)
        seed = self.config.seed * 1000 + 500 + 10 * (stage + 1) + j  # one stream per (stage, end task)
        epochs = end.epochs if end.epochs is not None else get_domain(domain.name).end_task.epochs
        train_cfg = dataclasses.replace(
            self.config.train,
            epochs=epochs,
            batch_size=end.batch_size,
            grad_accum=1,
            lr=end.lr,
            weight_decay=end.weight_decay,
            schedule=end.schedule,
            warmup_ratio=end.warmup_ratio,
            max_grad_norm=end.max_grad_norm,
            eval_batch_size=end.eval_batch_size,
            max_steps_per_task=end.max_steps,
        )
        return model_cfg, train_cfg, seed

    def _reference(self, j: int, accelerator: Accelerator) -> dict[str, Any]:
        """Domain ``j``'s end task from the unadapted encoder: from the reference cache when this
        exact computation ran before (``pretrain.reuse_reference``), else finetuned and cached."""
        pre = self.config.pretrain
        if not pre.reuse_reference or accelerator.num_processes > 1:  # ranks must agree: no cache there
            return self._end_task(j, -1, accelerator)
        assert self.family is not None
        model_cfg, train_cfg, seed = self._recipe(j, -1)
        task = self.domains[j].end_task
        key = reference_key(
            encoder=weights_sha256(self.family.model.encoder),
            tokenizer=[getattr(self.family.tokenizer, "name_or_path", ""), len(self.family.tokenizer)],
            labels=list(task.labels),
            train_rows=rows_sha256(task.train),
            test_rows=rows_sha256(task.test),
            metric=self.domains[j].end_spec.metric,
            model=model_cfg,
            train=train_cfg,
            seed=seed,
            device=accelerator.device.type,
            mixed_precision=str(accelerator.mixed_precision),
            versions=package_versions(),
        )
        path = reference_path(
            Path(pre.cache_dir) if pre.cache_dir else default_cache_dir(), self.names[j], key
        )
        cached = load_reference(path, key)
        if cached is not None:
            log.info("untrained reference of %s: from the cache (%s)", self.names[j], path)
            return {**cached, "cached": str(path)}
        out = self._end_task(j, -1, accelerator)
        save_reference(path, key, out)
        return out

    def _end_task(self, j: int, stage: int, accelerator: Accelerator) -> dict[str, Any]:
        """Finetune domain ``j``'s end task from a copy of the current encoder; score its test rows."""
        assert self.family is not None
        domain, end = self.domains[j], self.config.pretrain.end_task
        task = domain.end_task
        model_cfg, train_cfg, seed = self._recipe(j, stage)
        set_seed(seed)  # the new head's initialisation too: the same after a resume
        fam = self.family.end_task_family(task.labels, model_cfg)
        ctx = TaskContext(
            model=fam.model,
            task_index=0,
            task_name=task.name,
            examples=task.train,
            forward=fam.forward,
            collate=fam.collate,
            device=accelerator.device,
            batch_size=end.batch_size,
        )
        t0 = time.perf_counter()
        result = train_task(accelerator, ctx, fam, FT(), task.train, train_cfg, seed, None)
        preds = fam.predict(fam.model, task.test, batch_size=end.eval_batch_size)
        gold = [ex.label for ex in task.test]
        average = "micro" if domain.end_spec.metric == "micro_f1" else "macro"
        out = {
            "mf1": f1(preds, gold, classes=list(task.labels), average=average),
            "acc": accuracy(preds, gold),
            "correct": [int(p == g) for p, g in zip(preds, gold, strict=True)],  # the paired bootstrap's rows
            "steps": result.steps,
            "seconds": time.perf_counter() - t0,
        }
        del fam, ctx  # the copy is freed before the next end task
        return out

    def last_correct(self) -> dict[str, dict[str, list[int]]] | None:
        return {"test": self.correct} if self.correct else None

    def summary(self, matrices: Matrices, baselines: Baselines) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m in self.metrics:
            r = matrices[m]
            out[f"final_{m}"] = mean_last_row(r)
            out[f"forward_{m}"] = mean_diagonal(r)
            out[f"forgetting_{m}"] = diagonal_forgetting(r)
            if baselines and m in baselines:
                out[f"untrained_{m}"] = sum(baselines[m]) / len(baselines[m])
        return out

    def data_files(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for d in self.domains:
            out.update({str(f.path): f.sha256 for f in d.files})
            for path in d.source_files:
                out[str(path)] = file_sha256(path)
        return out

    def info(self) -> dict[str, Any]:
        return {
            d.name: {**d.info, "end_task": d.end_task.info, "blocks": len(b)}
            for d, b in zip(self.domains, self.blocks, strict=False)
        }
