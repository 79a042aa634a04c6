"""A run's plan: the config, data, model family and method resolved and checked before anything
trains or is written. ``plan_run`` reads every stage's data (the regime's ``load``), so a bad file
fails here, naming it, and not at stage 9 of 15."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from torch import nn

from ..data import TaskData, get_order, resolve_data_root
from ..engine import MIGUConfig
from ..methods import CLMethod, TaskContext, get_method
from .config import ConfigError, RunConfig
from .regimes import Stages, get_regime, regime_of
from .results import RunResults, machine_versions, package_versions
from .state import RunState


@dataclass
class Plan:
    """Everything a run needs, built and validated before any training starts."""

    config: RunConfig
    run_dir: Path
    stages: Stages
    method: CLMethod
    migu: MIGUConfig | None
    resolved: dict[str, Any]

    @property
    def task_names(self) -> list[str]:
        return self.stages.names

    @property
    def tasks(self) -> list[TaskData]:
        """The labelled tasks of a finetuning run (what analyses feed the model)."""
        return self.stages.tasks

    def results(self, state: RunState) -> RunResults:
        """results.json content of this run at ``state``."""
        stages = self.stages
        complete = state.completed == len(stages.names) and state.failure is None
        return RunResults(
            name=self.config.name,
            method=self.method.name,
            method_options=self.method.options,
            migu=self.resolved["migu"],
            seed=self.config.seed,
            tasks=stages.names,
            complete=complete,
            matrices=state.matrices,
            regime=stages.regime,
            primary=stages.primary,
            stages=stages.names[: state.completed],
            baselines=state.baselines,
            columns={m: stages.columns(m) for m in stages.metrics},
            final_correct=state.correct if complete else None,
            metrics=stages.summary(state.matrices, state.baselines) if complete else {},
            per_task=stages.info(),
            timings=state.timings,
            wall_seconds=state.wall_seconds,
            versions={**package_versions(), **machine_versions()},
            config=self.resolved,
            failure=state.failure,
        )


def resolve_regime(config: RunConfig) -> tuple[str, list[str]]:
    """(regime, stage names) of a config: an order's regime, or the regime that claims ``tasks``."""
    if config.order:
        order = get_order(config.order)
        names, regime = list(order.tasks), order.regime
    else:
        names = list(config.tasks or [])
        regime = regime_of(names)
    if config.regime != "auto" and config.regime != regime:
        raise ConfigError(
            f"regime: {config.regime!r} given, but the order's stages are {regime} stages ({names})"
        )
    return regime, names


def plan_run(config: RunConfig, run_dir: str | Path, data_root: str | Path | None = None) -> Plan:
    """Resolve and validate config, data, model and method (reads all data; trains nothing)."""
    regime, names = resolve_regime(config)
    try:
        method = get_method(config.method.name, **config.method.options)
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"method: {exc}") from exc
    if regime not in method.regimes:
        raise ConfigError(
            f"method {method.name!r} does not run in the {regime} regime (it runs in: "
            f"{', '.join(method.regimes)}); `migu list methods` shows each method's regimes"
        )
    method.on_run_start(config.seed)
    root = resolve_data_root(data_root or config.data_root)
    stages = get_regime(regime).load(config, names, root)
    resolved = config.to_dict()
    resolved["regime"] = regime
    resolved["data_root"] = str(root)
    resolved["task_names"] = stages.names
    return Plan(config, Path(run_dir), stages, method, config.migu, resolved)


def build_model(plan: Plan) -> tuple[Any, Any]:
    """The model family and the method-prepared model, seeded (identical on every rebuild)."""
    set_seed(plan.config.seed)
    family = plan.stages.build()
    return family, plan.method.prepare_model(family.model, family.spec)


def task_context(
    plan: Plan,
    family: Any,
    model: nn.Module,
    i: int,
    device: torch.device | None = None,
    rebuilding: bool = False,
) -> TaskContext:
    """What the method sees of stage ``i``: its training rows and the family on ``model``."""
    return TaskContext(
        model=model,
        task_index=plan.stages.task_index(i),
        task_name=plan.stages.task_name(i),
        examples=plan.stages.train_rows(i),
        rebuilding=rebuilding,
        forward=family.forward,
        collate=family.collate,
        device=device or torch.device("cpu"),
        batch_size=plan.config.train.batch_size,
        n_tasks=plan.stages.n_tasks,
    )


def task_seed(seed: int, stage: int) -> int:
    """The seed of stage ``stage``'s training (its shuffles, replay draws, clusters)."""
    return seed * 1000 + stage


def data_files(plan: Plan) -> dict[str, str]:
    """{path relative to the data root: sha256} of every data file the run reads."""
    root = Path(plan.resolved["data_root"])
    return {os.path.relpath(p, root): h for p, h in plan.stages.data_files().items()}
