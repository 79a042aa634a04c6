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
from ..engine import MIGUConfig, attach
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
    cluster ids}, ``runner.clusters.task_clusters``), set on the masker."""
    model, task_index, task_name = task.model, task.task_index, task.task_name
    check_split(train_cfg.batch_size, len(examples), accelerator.num_processes, task_name)
    set_seed(seed)  # per-task seed: a resumed run replays exactly the same task
    loader = DataLoader(
        list(examples),
        batch_size=train_cfg.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=family.collate,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError(f"method {method.name!r} left no trainable parameters for task {task_name!r}")
    optimizer = build_adamw(
        params,
        lr=train_cfg.lr,
        betas=train_cfg.betas,
        weight_decay=train_cfg.weight_decay,
        impl=train_cfg.optimizer_impl,
    )
    if continuation is not None and continuation.optimizer_state is not None:
        optimizer.load_state_dict(continuation.optimizer_state)
    masker = attach(model, migu_config, optimizer) if migu_config is not None else None
    if masker is not None:
        masker.task_index = task_index
        if clusters:
            masker.set_clusters(clusters)
    wrapped, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    total = math.ceil(train_cfg.epochs * math.ceil(len(loader) / train_cfg.grad_accum))
    if train_cfg.max_steps_per_task is not None:
        total = min(total, train_cfg.max_steps_per_task)
    horizon = continuation.total_steps if continuation is not None else total
    start_step = continuation.start_step if continuation is not None else 0
    # in optimizer steps: the runner's Accelerator splits batches, so its scheduler steps once per step
    scheduler = build_scheduler(optimizer, train_cfg.schedule, train_cfg.warmup_ratio, horizon, start_step)
    scheduler = accelerator.prepare(scheduler)

    wrapped.train()
    step, micro, start = 0, 0, time.perf_counter()
    running = torch.zeros((), device=accelerator.device)  # loss summed on device: no per-step sync
    running_terms: dict[str, torch.Tensor] = {}
    last_loss, last_terms = float("nan"), {}
    # inf/NaN losses and gradient norms, checked on device (runner/guard.py: no per-step host sync)
    guard = NonFiniteGuard(accelerator.device, train_cfg.nonfinite, task_name, total)
    bar = tqdm(
        total=total, desc=f"task {task_index + 1} {task_name}", disable=not accelerator.is_local_main_process
    )
    try:
        while step < total:
            for batch in loader:
                with accelerator.accumulate(wrapped):
                    out = family.forward(wrapped, batch)
                    loss = out.loss
                    terms = method.step_loss(StepContext(task, wrapped, batch, out, step))
                    total_loss = loss + sum(terms.values()) if terms else loss
                    accelerator.backward(total_loss)
                    guard.add_loss(total_loss)
                    running += loss.detach().float()
                    micro += 1
                    for k, v in terms.items():
                        running_terms[k] = running_terms.get(k, 0) + v.detach().float()
                    if accelerator.sync_gradients:
                        if masker is not None:
                            masker.apply()  # MIGU: keep only the top-magnitude rows' gradients
                        method.before_optimizer_step(task)
                        if train_cfg.max_grad_norm:
                            norm = accelerator.clip_grad_norm_(params, train_cfg.max_grad_norm)
                        else:
                            norm = grad_norm(params)
                        if guard.end_step(norm):
                            optimizer.step()
                            scheduler.step()
                        else:  # train.nonfinite: skip; the step keeps its place in the lr schedule
                            with warnings.catch_warnings():
                                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
                                scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                        step += 1
                        bar.update(1)
                        if step % train_cfg.log_every == 0 or step == total:
                            guard.check()  # stop: at the first log step after a non-finite one
                            n = max(micro, 1)
                            last_loss = running.item() / n  # host sync only at log time
                            last_terms = {k: float(v) / n for k, v in running_terms.items()}
                            bar.set_postfix(
                                loss=f"{last_loss:.4f}", **{k: f"{v:.3g}" for k, v in last_terms.items()}
                            )
                            accelerator.log(
                                {
                                    f"train/{task_name}/loss": last_loss,
                                    **{f"train/{task_name}/{k}": v for k, v in last_terms.items()},
                                },
                                step=step,
                            )
                            running.zero_()
                            running_terms, micro = {}, 0
                if step >= total:
                    break
        guard.check()
        guard.check_weights(params)  # before any caller can checkpoint them
    finally:
        bar.close()
        if masker is not None:
            masker.detach()
    if guard.skipped:
        log.warning(
            "task %d %s: skipped %d of %d optimizer steps with a non-finite loss or gradient "
            "(train.nonfinite: skip)",
            task_index + 1,
            task_name,
            guard.skipped,
            step,
        )
    # Undo this task's wrapping (DDP, autocast forward) and drop the optimizer/dataloader references:
    # the next task prepares afresh (IncLoRA adds parameters between tasks).
    accelerator.unwrap_model(wrapped, keep_fp32_wrapper=False)
    accelerator.free_memory()
    seconds = time.perf_counter() - start
    log.info(
        "task %d %s: %d steps in %.1fs, loss %.4f %s",
        task_index + 1,
        task_name,
        step,
        seconds,
        last_loss,
        last_terms or "",
    )
    inner = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
    state = inner.state_dict() if continuation is not None else None
    return TaskTrainResult(step, seconds, last_loss, last_terms, optimizer_state=state, skipped=guard.skipped)


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
