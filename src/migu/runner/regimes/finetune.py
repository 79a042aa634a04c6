"""Continual finetuning (orders 1-6): a stage is a labelled task; after each, every task's test rows
(and/or validation rows, ``data.eval_on``) are scored by option ranking or generation: the
``acc``/``f1`` matrices (``val_acc``/``val_f1`` on validation rows), summarized as ACC, BWT, FWT
and forgetting."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from ...data import TaskData, TaskProvenance, load_tasks
from ...data.corpus import file_sha256
from ...metrics import summarize
from ...models import ModelFamily, build_family
from ..config import RunConfig
from ..loop import check_split, evaluate
from ..state import Progress
from .base import Baselines, Matrices, Row, SaveProgress, Stages

log = logging.getLogger(__name__)


def label_space(tasks: Sequence[TaskData]) -> list[str]:
    """Union of every task's label strings, in order of first appearance (one shared head)."""
    seen: dict[str, None] = {}
    for t in tasks:
        for label in t.labels:
            seen.setdefault(label, None)
    return list(seen)


class FinetuneStages(Stages):
    """Labelled tasks in order; every task's evaluation rows scored after each."""

    regime = "finetune"
    metrics = ("acc", "f1")

    def __init__(self, config: RunConfig, tasks: Sequence[TaskData]) -> None:
        super().__init__(config, [t.name for t in tasks])
        self._tasks = list(tasks)
        self.family: ModelFamily | None = None
        prefix = {"test": "", "val": "val_"}
        self.metrics = tuple(f"{prefix[s]}{m}" for s in config.data.eval_on for m in ("acc", "f1"))
        self.correct: dict[str, dict[str, list[int]]] = {}  # split -> task -> 0/1 per row, last scored

    @classmethod
    def load(cls, config: RunConfig, names: Sequence[str], root: Path) -> FinetuneStages:
        d = config.data
        tasks = load_tasks(
            names,
            root,
            train_n=d.train_n,
            test_n=d.test_n,
            seed=config.seed,
            eval_split=d.eval_split,
            keep_unlabeled=d.keep_unlabeled,
            per_task=d.per_task,
            val_n=d.val_n,
        )
        return cls(config, [tasks[n] for n in names])

    @property
    def tasks(self) -> list[TaskData]:
        return self._tasks

    def check_world(self, processes: int) -> None:
        for task in self._tasks:  # every task's rows are known now: each must split
            check_split(self.config.train.batch_size, len(task.train), processes, task.name)

    def build(self) -> ModelFamily:
        self.family = build_family(self.config.model, label_space(self._tasks))
        return self.family

    def train_rows(self, i: int) -> Sequence[Any]:
        return self._tasks[i].train

    def score(
        self, i: int | None, accelerator: Accelerator, progress: Progress, save: SaveProgress
    ) -> dict[str, Row]:
        assert self.family is not None
        desc = "eval untrained" if i is None else f"eval after {self.names[i]}"
        fam = self.family
        row: dict[str, Row] = {}
        for split in self.config.data.eval_on:
            prefix = "" if split == "test" else "val_"
            scores = evaluate(
                fam.model,
                fam,
                self._tasks,
                self.config.train.eval_batch_size,
                desc,
                split,
                accelerator=accelerator,
            )
            row[f"{prefix}acc"], row[f"{prefix}f1"] = list(scores.acc), list(scores.f1)
            self.correct[split] = scores.correct
            if i is not None:
                shown = " ".join(f"{n}={100 * a:.1f}" for n, a in zip(self.names, scores.acc, strict=True))
                log.info("after %s (%s): %s", self.names[i], split, shown)
        return row

    def summary(self, matrices: Matrices, baselines: Baselines) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for prefix in ("", "val_"):
            if f"{prefix}acc" in matrices:
                base = (baselines or {}).get(f"{prefix}acc")
                part = summarize(matrices[f"{prefix}acc"], base)  # type: ignore[arg-type]
                out.update({f"{prefix}{k}": v for k, v in part.items()})
        return out

    def last_correct(self) -> dict[str, dict[str, list[int]]] | None:
        return self.correct or None

    def info(self) -> dict[str, Any]:
        return {t.name: _provenance(t).to_json() for t in self._tasks}

    def data_files(self) -> dict[str, str]:
        return {str(f): file_sha256(f) for t in self._tasks for f in _provenance(t).data_files()}


def _provenance(task: TaskData) -> TaskProvenance:
    if task.provenance is None:  # load_tasks records one for every task; other TaskData is no stage
        raise TypeError(f"task {task.name!r} has no CL_Benchmark provenance (not made by load_task)")
    return task.provenance
