"""What differs between the paper's settings, and only that: what a stage of the order trains on,
and how the model is scored after it (the protocol). The loop, optimizer, MIGU, method hooks,
checkpoints and resume are the runner's, shared by every regime.

- ``finetune`` (continual finetuning, orders 1-6): a stage is a labelled task; after each, every
  task's test rows are scored by option ranking or generation: ``acc`` and ``f1`` matrices.
- ``pretrain`` (continual pre-training, order 7, ContinualLM's protocol): a stage is MLM on a
  domain corpus; after each (or after the last only), each seen domain's end task is finetuned
  from a copy of the post-trained encoder with a new head and scored: ``mf1`` and ``acc``
  matrices, summarized as final (last row), forward (diagonal) and forgetting (diagonal minus
  last row).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from accelerate import Accelerator
from accelerate.utils import set_seed

from ..benchmarks import TaskData, get_domain
from ..benchmarks.corpus import Blocks, DomainData, corpus_blocks, default_cache_dir, file_sha256
from ..benchmarks.instructions import InstructionData
from ..evals import HumanEvalConfig, evaluate_humaneval
from ..evals.lm_eval_bridge import LmEvalConfig, evaluate_general
from ..methods import FT, TaskContext
from ..metrics import accuracy, diagonal_forgetting, f1, mean_diagonal, mean_last_row, summarize
from ..models import MaskedLMFamily, ModelFamily, SFTFamily, build_family, build_mlm_family, build_sft_family
from .config import ConfigError, ModelConfig, RunConfig, TrainConfig
from .loop import evaluate, train_task
from .reference import (
    load_reference,
    reference_key,
    reference_path,
    rows_sha256,
    save_reference,
    weights_sha256,
)
from .results import package_versions

log = logging.getLogger(__name__)

Row = list[float | None]
Matrices = dict[str, list[Row]]
Baselines = dict[str, list[float]] | None
SaveProgress = Callable[[], None]


def label_space(tasks: Sequence[TaskData]) -> list[str]:
    """Union of every task's label strings, in order of first appearance (one shared head)."""
    seen: dict[str, None] = {}
    for t in tasks:
        for label in t.labels:
            seen.setdefault(label, None)
    return list(seen)


class Stages(ABC):
    """The stages of one run and their scoring protocol."""

    regime: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]  # matrix names, the primary first

    def __init__(self, config: RunConfig, names: Sequence[str]) -> None:
        self.config = config
        self.names = list(names)  # stage names = matrix columns, in training order

    @property
    def primary(self) -> str:
        return self.metrics[0]

    def columns(self, metric: str) -> list[str]:
        """What a metric's matrix columns are (the stages' tasks unless a regime says otherwise)."""
        return self.names

    def task_index(self, i: int) -> int:
        """The CL task stage ``i`` belongs to (what the method hooks see); one per stage by default."""
        return i

    def task_name(self, i: int) -> str:
        """The name of that task (replay samples and adapters follow it)."""
        return self.names[i]

    @property
    def n_tasks(self) -> int:
        """How many CL tasks the order has (stages of one task count once)."""
        return len(self.names)

    def schedule(self, i: int) -> tuple[int, int] | None:
        """(position, length) of stage ``i`` in an optimization that spans several stages (its
        optimizer state and learning-rate schedule carry over), or None for a fresh one per stage."""
        return None

    @abstractmethod
    def build(self) -> Any:
        """Load the model family the stages train (seeded by the caller)."""

    @abstractmethod
    def train_rows(self, i: int) -> Sequence[Any]:
        """What stage ``i`` trains on (before the method adds anything)."""

    def train_config(self, i: int) -> TrainConfig:
        """The optimisation recipe of stage ``i``."""
        return self.config.train

    @abstractmethod
    def score(
        self, i: int | None, accelerator: Accelerator, progress: dict[str, Any], save: SaveProgress
    ) -> dict[str, Row]:
        """Row ``i`` of every metric's matrix (``i`` None: the untrained model's baseline). Long
        protocols record finished parts in ``progress`` and call ``save`` so a resumed run goes on
        from there."""

    @abstractmethod
    def summary(
        self, matrices: dict[str, list[Row]], baselines: dict[str, list[float]] | None
    ) -> dict[str, Any]:
        """The regime's summary numbers of a complete run."""

    def last_correct(self) -> dict[str, dict[str, list[int]]] | None:
        """Per split and task, the 0/1 correctness of each row at the last scoring (paired bootstrap)."""
        return None

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """Where each stage's rows came from (results ``per_task``)."""

    @abstractmethod
    def data_files(self) -> dict[str, str]:
        """{path of every data file the run reads: its sha256}: a resume on changed data is refused."""


class FinetuneStages(Stages):
    """Labelled tasks in order; every task's test rows (and/or validation rows, ``data.eval_on``)
    scored after each: the ``acc``/``f1`` matrices (``val_acc``/``val_f1`` on validation rows)."""

    regime = "finetune"
    metrics = ("acc", "f1")

    def __init__(self, config: RunConfig, tasks: Sequence[TaskData]) -> None:
        super().__init__(config, [t.name for t in tasks])
        self.tasks = list(tasks)
        self.family: ModelFamily | None = None
        prefix = {"test": "", "val": "val_"}
        self.metrics = tuple(f"{prefix[s]}{m}" for s in config.data.eval_on for m in ("acc", "f1"))
        self.correct: dict[str, dict[str, list[int]]] = {}  # split -> task -> 0/1 per row, last scored

    def build(self) -> ModelFamily:
        self.family = build_family(self.config.model, label_space(self.tasks))
        return self.family

    def train_rows(self, i: int) -> Sequence[Any]:
        return self.tasks[i].train

    def score(
        self, i: int | None, accelerator: Accelerator, progress: dict[str, Any], save: SaveProgress
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
                self.tasks,
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
        return {t.name: t.info for t in self.tasks}

    def data_files(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for t in self.tasks:
            d = Path(t.info["root"]) / t.info["path"]
            for name in ("labels.json", t.info["train"]["source"], t.info["test"]["source"]):
                out[str(d / name)] = file_sha256(d / name)
        return out


class PretrainStages(Stages):
    """MLM on domain corpora in order; end tasks finetuned from copies after each (ContinualLM)."""

    regime = "pretrain"
    metrics = ("mf1", "acc")

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
        self, i: int | None, accelerator: Accelerator, progress: dict[str, Any], save: SaveProgress
    ) -> dict[str, Row]:
        n = len(self.domains)
        if i is not None and self.config.pretrain.evaluate == "last" and i < n - 1:
            return {m: [None] * n for m in self.metrics}  # scored after the last domain only
        seen = range(n) if i is None else range(i + 1)  # baseline: every end task from the unadapted model
        row: dict[str, Row] = {m: [None] * n for m in self.metrics}
        records: dict[int, dict[str, Any]] = {}
        for j in seen:
            key = f"{'base' if i is None else i}:{j}"
            if key not in progress:
                progress[key] = (
                    self._reference(j, accelerator) if i is None else self._end_task(j, i, accelerator)
                )
                save()
            records[j] = progress[key]
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

    def summary(
        self, matrices: dict[str, list[Row]], baselines: dict[str, list[float]] | None
    ) -> dict[str, Any]:
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


class InstructStages(Stages):
    """LLM instruction tuning: each epoch of each instruction set is a stage; after each, every set
    is scored by its own evaluator (exact match on held-out rows, or HumanEval pass@1 in the
    sandbox) and, when ``instruct.general`` is set, the general ability by lm-eval tasks (the
    paper's forgetting measure), side by side."""

    regime = "instruct"
    metrics = ("score", "general")

    def __init__(self, config: RunConfig, sets: Sequence[InstructionData]) -> None:
        epochs = config.train.epochs
        if epochs != int(epochs) or epochs < 1:
            raise ConfigError(
                f"train.epochs must be a whole number >= 1 for instruction tuning (epochs are stages), "
                f"got {epochs}"
            )
        self.epochs = int(epochs)
        self.sets = list(sets)
        names = [
            s.name if self.epochs == 1 else f"{s.name}@{e + 1}" for s in self.sets for e in range(self.epochs)
        ]
        super().__init__(config, names)
        self.family: SFTFamily | None = None
        self.encoded: list[list[Any]] = []
        self.general = config.instruct.general

    @property
    def set_names(self) -> list[str]:
        return [s.name for s in self.sets]

    def columns(self, metric: str) -> list[str]:
        if metric == "general":
            return ["mean", *LmEvalConfig(**self.general).tasks] if self.general else []
        return self.set_names

    def task_index(self, i: int) -> int:
        return i // self.epochs

    def task_name(self, i: int) -> str:
        return self.sets[self.task_index(i)].name

    @property
    def n_tasks(self) -> int:
        return len(self.sets)

    def schedule(self, i: int) -> tuple[int, int] | None:
        return (i % self.epochs, self.epochs) if self.epochs > 1 else None

    def build(self) -> SFTFamily:
        ins = self.config.instruct
        self.family = build_sft_family(
            self.config.model, template=ins.template, overlong=ins.overlong, packing=ins.packing
        )
        # every row tokenized now: an overlong or unrenderable set fails before any training
        for s in self.sets:
            before = dict(self.family.stats)
            self.encoded.append(self.family.encode(s.train))
            counts = {k: self.family.stats[k] - before[k] for k in before}
            s.info["tokenized"] = counts
            if counts["truncated"] or counts["dropped"]:
                log.warning(
                    "instruction set %s: %d of %d rows over model.max_length=%d: %d truncated, %d dropped",
                    s.name,
                    counts["truncated"] + counts["dropped"],
                    counts["rows"],
                    self.config.model.max_length,
                    counts["truncated"],
                    counts["dropped"],
                )
        return self.family

    def train_rows(self, i: int) -> Sequence[Any]:
        return self.encoded[self.task_index(i)] if self.encoded else self.sets[self.task_index(i)].train

    def train_config(self, i: int) -> TrainConfig:
        return dataclasses.replace(self.config.train, epochs=1.0)

    def score(
        self, i: int | None, accelerator: Accelerator, progress: dict[str, Any], save: SaveProgress
    ) -> dict[str, Row]:
        assert self.family is not None
        fam, ins = self.family, self.config.instruct
        model = fam.model
        row: dict[str, Row] = {"score": [], "general": []}
        code: float | None = None
        for s in self.sets:
            kind = s.spec.eval
            if kind == "exact_match":
                row["score"].append(
                    fam.exact_match(model, s.held_out, ins.max_new_tokens, ins.eval_batch_size)
                )
            elif kind == "humaneval":
                if code is None:
                    result = evaluate_humaneval(model, fam.tokenizer, HumanEvalConfig(**ins.humaneval))
                    code = result.pass_at_k["pass@1"]
                row["score"].append(code)
            else:
                row["score"].append(None)
        if self.general:
            scores = evaluate_general(model, fam.tokenizer, LmEvalConfig(**self.general))
            row["general"] = [scores.mean, *(t.score for t in scores.tasks.values())]
        what = "untrained" if i is None else self.names[i]
        shown = " ".join(
            f"{n}={'-' if v is None else f'{100 * v:.1f}'}"
            for n, v in zip(self.set_names, row["score"], strict=True)
        )
        log.info(
            "after %s: %s%s", what, shown, f" general={100 * row['general'][0]:.1f}" if row["general"] else ""
        )
        return row

    def summary(self, matrices: Matrices, baselines: Baselines) -> dict[str, Any]:
        score = matrices["score"]
        out: dict[str, Any] = {"final_score": _mean(score[-1]) if score else None}
        for name, v in zip(self.set_names, score[-1] if score else [], strict=False):
            out[f"final_{name}"] = v
        if self.general and matrices["general"]:
            out["final_general"] = matrices["general"][-1][0]
            if baselines and baselines.get("general"):
                out["untrained_general"] = baselines["general"][0]
                out["general_change"] = out["final_general"] - out["untrained_general"]
        if len(self.sets) > 1:  # the CL summary over set boundaries (the last epoch of each set)
            ends = [score[(k + 1) * self.epochs - 1] for k in range(len(self.sets))]
            if all(v is not None for r in ends for v in r):
                base = (baselines or {}).get("score")
                base_ok = base is not None and all(v is not None for v in base)
                out.update(summarize(ends, base if base_ok else None))  # type: ignore[arg-type]
        return out

    def info(self) -> dict[str, Any]:
        return {s.name: s.info for s in self.sets}

    def data_files(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for s in self.sets:
            for f in s.files:
                out[str(f)] = file_sha256(f)
            if s.spec.from_task is not None:
                d = Path(s.info["task"]["root"]) / s.info["task"]["path"]
                for name in (
                    "labels.json",
                    s.info["task"]["train"]["source"],
                    s.info["task"]["test"]["source"],
                ):
                    out[str(d / name)] = file_sha256(d / name)
        return out


def _mean(row: Row) -> float | None:
    vals = [v for v in row if v is not None]
    return sum(vals) / len(vals) if vals else None
