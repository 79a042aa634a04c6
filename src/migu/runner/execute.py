"""One continual-learning run, top-down: set up, then for each stage of the order train it,
checkpoint it and score the model (the regime's protocol); then write the results. A run resumes
after the last finished stage when re-run (``runner.resume`` decides from what the directory holds).

    execute(plan)
      check the launch and the output directory, lock the run directory
      open_run_dir: resume, --restart, --rollback, or a finished run's saved results
      _Run.start: config.yaml, the Accelerator, the model (or the resumed checkpoint), the baseline
      for each stage: _Run.train (method hooks, the loop, the checkpoint), _Run.score, _Run.record
      _Run.finish: results.json
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration
from torch import nn

from . import checkpoint as ckpt
from . import faults
from .config import RunConfig, config_to_yaml
from .faults import DivergedError
from .files import atomic_write_text
from .lock import RunLock
from .loop import Continuation, train_task
from .plan import Plan, build_model, data_files, plan_run, task_context, task_seed
from .regimes import Row
from .results import RunResults, write_results
from .resume import finished_results, load_resume_checkpoint, open_run_dir
from .state import STATE_FILE, RunState, checkpoint_dir, config_hash, write_state
from .task_clusters import cluster_tensors, task_clusters
from .world import check_world, main_process, world_size

log = logging.getLogger(__name__)


def run(
    config: RunConfig,
    run_dir: str | Path,
    data_root: str | Path | None = None,
    restart: bool = False,
    rollback: bool = False,
) -> RunResults:
    """Plan (validate all inputs) then execute; the library entry point behind ``migu run``."""
    return execute(plan_run(config, run_dir, data_root), restart=restart, rollback=rollback)


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
    main = main_process()
    faults.check_output_dir(run_dir)
    with faults.writing(f"the run directory {run_dir}"):
        run_dir.mkdir(parents=True, exist_ok=True)
    # One lock per run: in a multi-process launch rank 0 holds it for all ranks (they write nothing).
    with RunLock(run_dir) if main else contextlib.nullcontext():
        state = open_run_dir(plan, restart, rollback, write=main)
        if state is not None and state.completed == len(plan.task_names) and state.failure is None:
            return finished_results(plan, state, write=main)
        with _run_log(run_dir, main):
            return _train_and_score(plan, state)


def _train_and_score(plan: Plan, state: RunState | None) -> RunResults:
    """Set up, then for each stage not finished yet: train and checkpoint it, score it, record it."""
    run = _Run.start(plan, state)
    for i in range(run.state.completed, len(plan.task_names)):
        try:
            if run.state.trained == i:  # else: trained and checkpointed before a crash, only scoring is left
                run.train(i)
            row, seconds = run.score(i)
        except DivergedError as exc:
            run.accelerator.end_training()
            raise _diverged(plan, run.state, i, exc, run.accelerator.is_main_process) from exc
        run.record(i, row, seconds)
    return run.finish()


@contextlib.contextmanager
def _run_log(run_dir: Path, main: bool) -> Iterator[None]:
    """One run.log, written by the process that writes everything else."""
    if not main:
        yield
        return
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("migu").addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger("migu").removeHandler(handler)
        handler.close()


def _accelerator(cfg: RunConfig, run_dir: Path) -> Accelerator:
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
    return accelerator


class _Run:
    """A run in progress: its plan, processes, model and run state, one method per step of
    ``_train_and_score``."""

    def __init__(
        self, plan: Plan, accelerator: Accelerator, family: Any, model: nn.Module, state: RunState
    ) -> None:
        self.plan, self.accelerator, self.state = plan, accelerator, state
        self.family, self.model = family, model
        self.carry: dict[str, Any] | None = None  # the optimizer state a continuing stage starts from
        # MIGU+Cluster: the clusters of the task being trained; on resume, those saved with the checkpoint.
        self.clusters: dict[str, torch.Tensor] | None = None
        self.clock = time.perf_counter()  # wall time counts from the first stage on (not the setup)

    @classmethod
    def start(cls, plan: Plan, state: RunState | None) -> _Run:
        """config.yaml, the processes, the model; a fresh run state (and the untrained model's
        scores) or the resumed run's checkpoint."""
        cfg, run_dir = plan.config, plan.run_dir
        if main_process():
            with faults.writing(str(run_dir / "config.yaml")):
                atomic_write_text(run_dir / "config.yaml", config_to_yaml(plan.resolved))
        accelerator = _accelerator(cfg, run_dir)
        family, model = build_model(plan)
        model.to(accelerator.device)
        if accelerator.is_main_process:  # before any training: room for a checkpoint and its temp copy
            faults.check_free_space(run_dir, 2 * _state_bytes(model), "writing this model's checkpoints")
        fresh = state is None
        if state is None:
            state = RunState(config_hash=config_hash(plan.resolved), data=data_files(plan))
            state.matrices = {m: [] for m in plan.stages.metrics}
        run = cls(plan, accelerator, family, model, state)
        if fresh:
            run.save()
        elif state.trained:
            log.info("resuming %s after stage %d of %d", run_dir, state.trained, len(plan.task_names))
            load_resume_checkpoint(plan, family, model, state)
        if cfg.eval_baseline and (fresh or (not state.trained and state.baselines is None)):
            run.score_baseline()  # fresh, or killed while scoring the untrained model
        if state.failure is not None:
            log.warning("the last attempt stopped (%s); trying again from there", state.failure.get("reason"))
            state.failure = None
        run.clusters = _resumed_clusters(plan, state.trained)
        run.clock = time.perf_counter()
        return run

    def save(self) -> None:
        """Write the run state (the main process only)."""
        if self.accelerator.is_main_process:
            with faults.writing(
                str(self.plan.run_dir / STATE_FILE), "the previous run state and the checkpoints are intact"
            ):
                write_state(self.plan.run_dir, self.state)

    def score_baseline(self) -> None:
        scores = self.plan.stages.score(None, self.accelerator, self.state.scoring(), self.save)
        self.state.baselines = {m: list(v) for m, v in scores.items()}  # type: ignore[misc]
        self.save()

    def train(self, i: int) -> None:
        """Train stage ``i`` through the method's hooks, checkpoint it, record its timing."""
        plan, method, stages = self.plan, self.plan.method, self.plan.stages
        seed = task_seed(plan.config.seed, i)
        ctx = task_context(plan, self.family, self.model, i, self.accelerator.device)
        method.on_task_start(ctx)
        self.clusters = task_clusters(plan.migu, ctx, seed, self.clusters)
        examples = method.training_examples(ctx, random.Random(seed))
        # raises DivergedError on a non-finite step (train.nonfinite: stop) before the stage ends:
        # nothing below runs, so no checkpoint of non-finite weights is written
        result = train_task(
            self.accelerator,
            ctx,
            self.family,
            method,
            examples,
            stages.train_config(i),
            seed,
            plan.migu,
            continuation=_continuation(plan, i, len(examples), self.carry),
            clusters=self.clusters,
        )
        self.carry = result.optimizer_state
        method.on_task_end(ctx)
        self.checkpoint(i)
        self.state.trained = i + 1
        self.state.timings.append(
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
        self.save()

    def checkpoint(self, i: int) -> None:
        """The weights, method state and clusters after stage ``i`` (and the optimizer state when
        the next stage continues this optimization), their sha256 recorded in the run state."""
        plan, accelerator = self.plan, self.accelerator
        if accelerator.is_main_process:
            with faults.writing(
                f"the checkpoint after stage {i + 1} ({plan.task_names[i]!r})", _kept(plan, self.state)
            ):
                final = ckpt.save_checkpoint(
                    plan.run_dir,
                    i,
                    accelerator.unwrap_model(self.model),
                    plan.method.state_dict(),
                    plan.method.state_tensors(),
                    cluster_tensors(self.clusters) if self.clusters else None,
                )
                sched = plan.stages.schedule(i)
                if self.carry is not None and sched is not None and sched[0] < sched[1] - 1:
                    ckpt.save_optimizer_state(plan.run_dir, i, self.carry)  # the next stage continues from it
            self.state.record_checkpoint(i, ckpt.file_digests(final))  # checked on resume
        accelerator.wait_for_everyone()  # no rank runs ahead of a checkpoint a resume would need

    def score(self, i: int) -> tuple[dict[str, Row], float]:
        """Row ``i`` of every matrix, and the seconds the protocol took."""
        t0 = time.perf_counter()
        row = self.plan.stages.score(i, self.accelerator, self.state.scoring(), self.save)
        return row, time.perf_counter() - t0

    def record(self, i: int, row: dict[str, Row], seconds: float) -> None:
        """Stage ``i`` is complete: its rows, timing and wall time in the run state; the older
        checkpoints go unless ``keep_checkpoints``."""
        state, stages, cfg = self.state, self.plan.stages, self.plan.config
        for m in stages.metrics:
            state.matrices[m].append(row[m])
        state.correct = stages.last_correct()
        state.timings[i]["eval_seconds"] = seconds
        state.keep_progress(lambda key: key.stage != i)  # this stage's scoring is done
        state.completed = i + 1
        now = time.perf_counter()
        state.wall_seconds += now - self.clock
        self.clock = now
        if not cfg.keep_checkpoints:  # the older checkpoints go (below), and their records with them
            state.keep_checkpoints(lambda stage: stage >= i)
        self.save()
        if self.accelerator.is_main_process and not cfg.keep_checkpoints:
            ckpt.prune_checkpoints(self.plan.run_dir, i)

    def finish(self) -> RunResults:
        """All stages done: end the processes' training and write results.json."""
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()  # after the barrier: it ends the process group
        results = self.plan.results(self.state)
        if self.accelerator.is_main_process:
            with faults.writing(
                f"the results of {self.plan.run_dir}",
                "the run state and checkpoints are intact: re-run to write them",
            ):
                write_results(self.plan.run_dir, results)
        return results


def _state_bytes(model: nn.Module) -> int:
    """Bytes of a model's saved state (parameters and buffers): the size of one checkpoint."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _kept(plan: Plan, state: RunState) -> str:
    """What a failed checkpoint write leaves intact, and what to do."""
    if not state.trained:
        return "no stage was checkpointed yet; re-run when there is room"
    name = plan.task_names[state.trained - 1]
    return (
        f"the checkpoint after stage {state.trained} ({name!r}) and the run state are intact: re-run to "
        "resume once there is room"
    )


def _diverged(plan: Plan, state: RunState, i: int, exc: DivergedError, main: bool) -> DivergedError:
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
            write_state(plan.run_dir, state)
            write_results(plan.run_dir, plan.results(state))
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
            f"{checkpoint_dir(plan.run_dir, completed - 1)} has no {ckpt.MIGU_TENSORS}: this run's clusters "
            "(cluster.when = 'once') cannot be restored; start it again in a new --out"
        )
    return saved
