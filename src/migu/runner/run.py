"""One continual-learning run: validate everything, then train through the order, evaluating all
tasks after each one, checkpointing, and resuming from the last finished task when re-run."""

from __future__ import annotations

import logging
import platform
import random
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from ..benchmarks import get_order, load_tasks, resolve_data_root
from ..engine import MIGUConfig
from ..methods import CLMethod, TaskContext, get_method
from ..metrics import summarize
from ..models import ModelConfig, ModelFamily, build_family
from . import checkpoint as ckpt
from .config import ConfigError, RunConfig, build_run_config, config_to_yaml, yaml_load
from .loop import evaluate, train_task
from .results import RunResults, write_results

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """Everything a run needs, built and validated before any training starts."""

    config: RunConfig
    run_dir: Path
    task_names: list[str]
    tasks: list[Any]  # TaskData, in order
    model_config: ModelConfig
    method: CLMethod
    migu: MIGUConfig | None
    resolved: dict[str, Any]


def plan_run(config: RunConfig, run_dir: str | Path, data_root: str | Path | None = None) -> Plan:
    """Resolve and validate config, data, model and method (reads all data; trains nothing)."""
    task_names = list(get_order(config.order).tasks) if config.order else list(config.tasks or [])
    try:
        method = get_method(config.method.name, **config.method.options)
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"method: {exc}") from exc
    method.on_run_start(config.seed)
    root = resolve_data_root(data_root or config.data_root)
    d = config.data
    tasks_by_name = load_tasks(
        task_names,
        root,
        train_n=d.train_n,
        test_n=d.test_n,
        seed=config.seed,
        eval_split=d.eval_split,
        keep_unlabeled=d.keep_unlabeled,
        per_task=d.per_task,
    )
    resolved = config.to_dict()
    resolved["data_root"] = str(root)
    resolved["task_names"] = task_names
    return Plan(
        config,
        Path(run_dir),
        task_names,
        [tasks_by_name[n] for n in task_names],
        config.model,
        method,
        config.migu,
        resolved,
    )


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("migu", "torch", "transformers", "peft", "accelerate"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _label_space(tasks: list[Any]) -> list[str]:
    """Union of every task's label strings, in order of first appearance (one shared head)."""
    seen: dict[str, None] = {}
    for t in tasks:
        for label in t.labels:
            seen.setdefault(label, None)
    return list(seen)


def build_model(plan: Plan) -> tuple[Any, Any]:
    """The model family and the method-prepared model, seeded (identical on every rebuild)."""
    set_seed(plan.config.seed)
    family = build_family(plan.model_config, _label_space(plan.tasks))
    return family, plan.method.prepare_model(family.model, family.spec)


def task_context(
    plan: Plan,
    family: ModelFamily,
    model: nn.Module,
    i: int,
    device: torch.device | None = None,
    rebuilding: bool = False,
) -> TaskContext:
    """What the method sees of task ``i``: its training rows and the family on ``model``."""
    task = plan.tasks[i]
    return TaskContext(
        model=model,
        task_index=i,
        task_name=task.name,
        examples=task.train,
        rebuilding=rebuilding,
        forward=family.forward,
        collate=family.collate,
        device=device or torch.device("cpu"),
        batch_size=plan.config.train.batch_size,
        n_tasks=len(plan.tasks),
    )


def load_task_checkpoint(plan: Plan, family: ModelFamily, model: nn.Module, task_index: int) -> None:
    """Rebuild the method's structure up to ``task_index`` (adapters, buffers) without training,
    then load the weights and method state saved after that task."""
    for i in range(task_index + 1):
        ctx = task_context(plan, family, model, i, rebuilding=True)
        plan.method.on_task_start(ctx)
        plan.method.on_task_end(ctx)
    state, tensors = ckpt.load_checkpoint(plan.run_dir, task_index, model)
    plan.method.load_state_dict(state, tensors)


def restore_run(
    run_dir: str | Path, task_index: int, data_root: str | Path | None = None
) -> tuple[Plan, Any, Any]:
    """(plan, family, model) of a finished run's model after ``task_index`` (for analyses).

    Needs that task's checkpoint (runs keep every task's with ``keep_checkpoints: true``).
    """
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: not a migu run directory")
    data = yaml_load(path.read_text())
    data.pop("task_names", None)
    plan = plan_run(build_run_config(data), run_dir, data_root)
    if not 0 <= task_index < len(plan.tasks):
        raise ValueError(f"task_index {task_index} out of range for {len(plan.tasks)} tasks")
    family, model = build_model(plan)
    model.eval()
    load_task_checkpoint(plan, family, model, task_index)
    return plan, family, model


def _check_run_dir(plan: Plan) -> ckpt.RunState | None:
    """Existing state to resume from, or None for a fresh run; refuses to mix two configs."""
    state = ckpt.read_state(plan.run_dir)
    digest = ckpt.config_hash(plan.resolved)
    if state is None:
        if plan.run_dir.exists() and any(p.name not in ("run.log",) for p in plan.run_dir.iterdir()):
            raise ConfigError(
                f"{plan.run_dir} exists and is not a migu run directory (no {ckpt.STATE_FILE}); "
                "choose another --out"
            )
        return None
    if state.config_hash != digest:
        raise ConfigError(
            f"{plan.run_dir} holds a run with a different config "
            f"(hash {state.config_hash} != {digest}); use another --out to start a new run "
            "(nothing was changed)"
        )
    return state


def _task_seed(seed: int, task_index: int) -> int:
    return seed * 1000 + task_index


def execute(plan: Plan) -> RunResults:
    """Train through the order (resuming if the run dir holds a partial run); write results."""
    state = _check_run_dir(plan)
    run_dir = plan.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("migu").addHandler(handler)
    try:
        return _execute(plan, state)
    finally:
        logging.getLogger("migu").removeHandler(handler)
        handler.close()


def _execute(plan: Plan, state: ckpt.RunState | None) -> RunResults:
    cfg, run_dir, tasks, method = plan.config, plan.run_dir, plan.tasks, plan.method
    ckpt.atomic_write_text(run_dir / "config.yaml", config_to_yaml(plan.resolved))
    accelerator = Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=cfg.train.grad_accum,
        log_with="tensorboard" if cfg.tensorboard else None,
        project_dir=str(run_dir),
    )
    if cfg.tensorboard:
        accelerator.init_trackers("tb")
    family, model = build_model(plan)
    model.to(accelerator.device)

    if state is None:
        state = ckpt.RunState(config_hash=ckpt.config_hash(plan.resolved))
        if cfg.eval_baseline:
            state.baseline, state.baseline_f1 = evaluate(
                model, family, tasks, cfg.train.eval_batch_size, desc="eval untrained"
            )
        ckpt.write_state(run_dir, state)
    else:
        done = state.completed
        log.info("resuming %s after task %d of %d", run_dir, done, len(tasks))
        if done:
            load_task_checkpoint(plan, family, model, done - 1)

    start = time.perf_counter()
    for i in range(state.completed, len(tasks)):
        task = tasks[i]
        seed = _task_seed(cfg.seed, i)
        ctx = task_context(plan, family, model, i, accelerator.device)
        method.on_task_start(ctx)
        examples = method.training_examples(ctx, random.Random(seed))
        result = train_task(accelerator, ctx, family, method, examples, cfg.train, seed, plan.migu)
        method.on_task_end(ctx)
        t0 = time.perf_counter()
        accs, f1s = evaluate(model, family, tasks, cfg.train.eval_batch_size, desc=f"eval after {task.name}")
        log.info(
            "after %s: %s",
            task.name,
            " ".join(f"{t.name}={100 * a:.1f}" for t, a in zip(tasks, accs, strict=True)),
        )
        if accelerator.is_main_process:
            ckpt.save_checkpoint(
                run_dir, i, accelerator.unwrap_model(model), method.state_dict(), method.state_tensors()
            )
        state.matrix.append(accs)
        state.f1.append(f1s)
        state.timings.append(
            {
                "task": task.name,
                "train_seconds": result.seconds,
                "steps": result.steps,
                "train_rows": len(examples),
                "eval_seconds": time.perf_counter() - t0,
                "final_loss": result.final_loss,
                "loss_terms": result.loss_terms,
            }
        )
        state.completed = i + 1
        state.wall_seconds += time.perf_counter() - start
        start = time.perf_counter()
        if accelerator.is_main_process:
            ckpt.write_state(run_dir, state)
            if not cfg.keep_checkpoints:
                ckpt.prune_checkpoints(run_dir, i)
    accelerator.end_training()
    results = build_results(plan, state)
    if accelerator.is_main_process:
        write_results(run_dir, results)
    return results


def build_results(plan: Plan, state: ckpt.RunState) -> RunResults:
    """results.json content from the run state."""
    complete = state.completed == len(plan.tasks)
    return RunResults(
        name=plan.config.name,
        method=plan.method.name,
        method_options=plan.method.options,
        migu=plan.resolved["migu"],
        seed=plan.config.seed,
        tasks=plan.task_names,
        complete=complete,
        matrix=state.matrix,
        f1_matrix=state.f1,
        baseline=state.baseline,
        baseline_f1=state.baseline_f1,
        metrics=summarize(state.matrix, state.baseline) if complete else {},
        final_macro_f1=state.f1[-1] if complete else None,
        per_task={t.name: t.info for t in plan.tasks},
        timings=state.timings,
        wall_seconds=state.wall_seconds,
        versions=_versions(),
        config=plan.resolved,
    )


def run(config: RunConfig, run_dir: str | Path, data_root: str | Path | None = None) -> RunResults:
    """Plan (validate all inputs) then execute; the library entry point behind ``migu run``."""
    return execute(plan_run(config, run_dir, data_root))
