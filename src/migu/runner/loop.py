"""The training loop for one task, on Accelerate's public API, and the evaluation of a task list.

One optimizer step is: forward + backward of ``grad_accum`` micro-batches -> ``masker.apply()``
(MIGU masks the accumulated gradient) -> gradient clipping -> ``optimizer.step()``.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import TaskData
from ..engine import Masker, MIGUConfig, attach
from ..methods import CLMethod, StepContext, TaskContext
from ..metrics import accuracy, macro_f1
from ..models import ModelFamily
from .config import ConfigError, TrainConfig
from .guard import NonFiniteGuard, grad_norm
from .optim import build_adamw, build_scheduler

log = logging.getLogger(__name__)


@dataclass
class TaskTrainResult:
    steps: int
    seconds: float
    final_loss: float
    loss_terms: dict[str, float]
    optimizer_state: dict[str, Any] | None = None  # for a next stage that continues this optimization
    skipped: int = 0  # optimizer steps skipped for a non-finite loss or gradient (train.nonfinite: skip)


@dataclass(frozen=True)
class Continuation:
    """A stage that continues the optimization of the stage before it (epochs of one instruction
    set): the AdamW state to load, and where this stage sits on the whole schedule."""

    optimizer_state: dict[str, Any] | None
    start_step: int  # optimizer steps done by the earlier stages of the schedule
    total_steps: int  # optimizer steps of the whole schedule (all its stages)


def check_split(batch_size: int, rows: int, processes: int, task: str) -> None:
    """Refuse a stage N processes cannot share: ``batch_size`` is the global batch (each process
    takes an equal part of it) and every process needs at least one training row."""
    if processes <= 1:
        return
    if batch_size % processes:
        raise ConfigError(
            f"train.batch_size={batch_size} does not split over {processes} processes (task {task!r}): "
            "batch_size is the global batch (the same training at any scale) and each process takes "
            f"an equal share; use a multiple of {processes}"
        )
    if rows < processes:
        raise ConfigError(
            f"--num-processes {processes}: task {task!r} has only {rows} training rows, fewer than "
            "the processes that would share them"
        )


@dataclass
class _Setup:
    """What one task's training runs on, prepared by Accelerate."""

    model: nn.Module  # wrapped (DDP, autocast forward)
    params: list[nn.Parameter]
    optimizer: Any
    scheduler: Any
    loader: Any
    masker: Masker | None
    total: int  # optimizer steps of this task


def _setup(
    accelerator: Accelerator,
    task: TaskContext,
    family: ModelFamily,
    method: CLMethod,
    examples: Sequence[Any],
    cfg: TrainConfig,
    seed: int,
    migu_config: MIGUConfig | None,
    continuation: Continuation | None,
    clusters: Mapping[str, torch.Tensor] | None,
) -> _Setup:
    """The seeded loader, AdamW (from the continued state if any), MIGU's masker and the schedule."""
    model, task_name = task.model, task.task_name
    check_split(cfg.batch_size, len(examples), accelerator.num_processes, task_name)
    set_seed(seed)  # per-task seed: a resumed run replays exactly the same task
    loader = DataLoader(
        list(examples),
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=family.collate,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError(f"method {method.name!r} left no trainable parameters for task {task_name!r}")
    optimizer = build_adamw(
        params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, impl=cfg.optimizer_impl
    )
    if continuation is not None and continuation.optimizer_state is not None:
        optimizer.load_state_dict(continuation.optimizer_state)
    masker = attach(model, migu_config, optimizer) if migu_config is not None else None
    if masker is not None:
        masker.task_index = task.task_index
        if clusters:
            masker.set_clusters(clusters)
    wrapped, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    total = math.ceil(cfg.epochs * math.ceil(len(loader) / cfg.grad_accum))
    if cfg.max_steps_per_task is not None:
        total = min(total, cfg.max_steps_per_task)
    horizon = continuation.total_steps if continuation is not None else total
    start_step = continuation.start_step if continuation is not None else 0
    # in optimizer steps: the runner's Accelerator splits batches, so its scheduler steps once per step
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.warmup_ratio, horizon, start_step)
    scheduler = accelerator.prepare(scheduler)
    return _Setup(wrapped, params, optimizer, scheduler, loader, masker, total)


class _LossLog:
    """Losses summed on device between log steps (no per-step host sync), read at log time."""

    def __init__(self, device: torch.device) -> None:
        self.running = torch.zeros((), device=device)
        self.terms: dict[str, torch.Tensor] = {}
        self.micro = 0
        self.last_loss, self.last_terms = float("nan"), {}

    def add(self, loss: torch.Tensor, terms: Mapping[str, torch.Tensor]) -> None:
        self.running += loss.detach().float()
        self.micro += 1
        for k, v in terms.items():
            self.terms[k] = self.terms.get(k, 0) + v.detach().float()

    def flush(self, accelerator: Accelerator, bar: Any, task_name: str, step: int) -> None:
        n = max(self.micro, 1)
        self.last_loss = self.running.item() / n  # host sync only at log time
        self.last_terms = {k: float(v) / n for k, v in self.terms.items()}
        bar.set_postfix(loss=f"{self.last_loss:.4f}", **{k: f"{v:.3g}" for k, v in self.last_terms.items()})
        accelerator.log(
            {
                f"train/{task_name}/loss": self.last_loss,
                **{f"train/{task_name}/{k}": v for k, v in self.last_terms.items()},
            },
            step=step,
        )
        self.running.zero_()
        self.terms, self.micro = {}, 0


def _optimizer_step(
    accelerator: Accelerator,
    run: _Setup,
    method: CLMethod,
    task: TaskContext,
    cfg: TrainConfig,
    guard: NonFiniteGuard,
) -> None:
    """Mask (MIGU), let the method adjust, clip, then step, unless the step is non-finite."""
    if run.masker is not None:
        run.masker.apply()  # MIGU: keep only the top-magnitude rows' gradients
    method.before_optimizer_step(task)
    if cfg.max_grad_norm:
        norm = accelerator.clip_grad_norm_(run.params, cfg.max_grad_norm)
    else:
        norm = grad_norm(run.params)
    if guard.end_step(norm):
        run.optimizer.step()
        run.scheduler.step()
    else:  # train.nonfinite: skip; the step keeps its place in the lr schedule
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
            run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)


def _log_done(task: TaskContext, steps: int, seconds: float, losses: _LossLog, skipped: int) -> None:
    if skipped:
        log.warning(
            "task %d %s: skipped %d of %d optimizer steps with a non-finite loss or gradient "
            "(train.nonfinite: skip)",
            task.task_index + 1,
            task.task_name,
            skipped,
            steps,
        )
    log.info(
        "task %d %s: %d steps in %.1fs, loss %.4f %s",
        task.task_index + 1,
        task.task_name,
        steps,
        seconds,
        losses.last_loss,
        losses.last_terms or "",
    )


def train_task(
    accelerator: Accelerator,
    task: TaskContext,
    family: ModelFamily,
    method: CLMethod,
    examples: Sequence[Any],
    train_cfg: TrainConfig,
    seed: int,
    migu_config: MIGUConfig | None,
    continuation: Continuation | None = None,
    clusters: Mapping[str, torch.Tensor] | None = None,
) -> TaskTrainResult:
    """Train ``task.model`` on ``examples`` (the method's rows for this task); returns step count,
    time and the last losses. With ``continuation`` the optimizer starts from the given state and
    the learning-rate schedule from ``start_step`` of ``total_steps`` (a fresh optimizer and
    schedule per task otherwise). ``clusters``: MIGU+Cluster's assignments ({target name: [d_out]
    cluster ids}, ``runner.task_clusters.task_clusters``), set on the masker."""
    task_index, task_name = task.task_index, task.task_name
    run = _setup(
        accelerator, task, family, method, examples, train_cfg, seed, migu_config, continuation, clusters
    )
    run.model.train()
    step, start = 0, time.perf_counter()
    losses = _LossLog(accelerator.device)
    # inf/NaN losses and gradient norms, checked on device (runner/guard.py: no per-step host sync)
    guard = NonFiniteGuard(accelerator.device, train_cfg.nonfinite, task_name, run.total)
    bar = tqdm(
        total=run.total,
        desc=f"task {task_index + 1} {task_name}",
        disable=not accelerator.is_local_main_process,
    )
    try:
        while step < run.total:
            for batch in run.loader:
                with accelerator.accumulate(run.model):
                    out = family.forward(run.model, batch)
                    terms = method.step_loss(StepContext(task, run.model, batch, out, step))
                    total_loss = out.loss + sum(terms.values()) if terms else out.loss
                    accelerator.backward(total_loss)
                    guard.add_loss(total_loss)
                    losses.add(out.loss, terms)
                    if accelerator.sync_gradients:
                        _optimizer_step(accelerator, run, method, task, train_cfg, guard)
                        step += 1
                        bar.update(1)
                        if step % train_cfg.log_every == 0 or step == run.total:
                            guard.check()  # stop: at the first log step after a non-finite one
                            losses.flush(accelerator, bar, task_name, step)
                if step >= run.total:
                    break
        guard.check()
        guard.check_weights(run.params)  # before any caller can checkpoint them
    finally:
        bar.close()
        if run.masker is not None:
            run.masker.detach()
    # Undo this task's wrapping (DDP, autocast forward) and drop the optimizer/dataloader references:
    # the next task prepares afresh (IncLoRA adds parameters between tasks).
    accelerator.unwrap_model(run.model, keep_fp32_wrapper=False)
    accelerator.free_memory()
    seconds = time.perf_counter() - start
    _log_done(task, step, seconds, losses, guard.skipped)
    inner = run.optimizer.optimizer if hasattr(run.optimizer, "optimizer") else run.optimizer
    state = inner.state_dict() if continuation is not None else None
    return TaskTrainResult(
        step, seconds, losses.last_loss, losses.last_terms, optimizer_state=state, skipped=guard.skipped
    )


@dataclass
class Scores:
    """Scores of a model on a list of tasks: accuracy and macro-F1 per task, and per task the 0/1
    correctness of every row (what a paired bootstrap over examples resamples)."""

    acc: list[float]
    f1: list[float]
    correct: dict[str, list[int]]


def _predict(
    model: nn.Module,
    family: ModelFamily,
    rows: Sequence[Any],
    batch_size: int,
    accelerator: Accelerator | None,
) -> list[str]:
    """``family.predict`` on ``rows``; under N processes each rank predicts its share and the
    predictions are gathered back in row order (``gather_for_metrics`` drops the rows that Accelerate
    repeats to even out the last batch, so no row is counted twice or lost)."""
    if accelerator is None or accelerator.num_processes == 1:
        return family.predict(model, rows, batch_size=batch_size)
    # The runner's Accelerator splits batches: a global batch of batch_size x N rows, batch_size per rank.
    loader = accelerator.prepare_data_loader(
        DataLoader(list(range(len(rows))), batch_size=batch_size * accelerator.num_processes, shuffle=False)
    )
    got: dict[int, str] = {}
    for idx in loader:
        ids = idx.tolist()
        preds = family.predict(model, [rows[i] for i in ids], batch_size=max(len(ids), 1))
        for i, p in accelerator.gather_for_metrics(
            list(zip(ids, preds, strict=True)), use_gather_object=True
        ):
            got[int(i)] = p
    if sorted(got) != list(range(len(rows))):
        raise RuntimeError(
            f"sharded evaluation gathered {len(got)} of {len(rows)} rows: rows were dropped or duplicated"
        )
    return [got[i] for i in range(len(rows))]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    family: ModelFamily,
    tasks: Sequence[TaskData],
    batch_size: int,
    desc: str = "eval",
    split: str = "test",
    accelerator: Accelerator | None = None,
) -> Scores:
    """Accuracy, macro-F1 and per-row correctness of ``model`` on every task's ``split`` rows
    (under N processes, each rank scores a share of the rows: see ``_predict``)."""
    accs, f1s, correct = [], [], {}
    show = accelerator is None or accelerator.is_local_main_process
    for task in tqdm(tasks, desc=desc, leave=False, disable=not show):
        rows = task.test if split == "test" else task.val
        preds = _predict(model, family, rows, batch_size, accelerator)
        gold = [ex.label for ex in rows]
        accs.append(accuracy(preds, gold))
        f1s.append(macro_f1(preds, gold, classes=list(task.labels)))
        correct[task.name] = [int(p == g) for p, g in zip(preds, gold, strict=True)]
    return Scores(accs, f1s, correct)
