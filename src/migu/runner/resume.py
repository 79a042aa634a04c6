"""What a run directory already holds, and what to do with it before training: resume the run it
holds, refuse another config's run, start again (``--restart``), roll back to the last intact
checkpoint (``--rollback``), or hand back a finished run's results without building a model.
Also ``restore_run``: a finished run's model after any stage, for the analyses."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from . import checkpoint as ckpt
from . import faults
from .config import ConfigError, build_run_config, yaml_load
from .faults import CheckpointError
from .lock import LOCK_FILE, RunLock
from .plan import Plan, build_model, data_files, plan_run, task_context
from .results import ResultsError, RunResults, load_results, write_results
from .state import (
    CKPT_DIR,
    STATE_FILE,
    RunState,
    checkpoint_dir,
    config_changes,
    config_hash,
    read_state,
    write_state,
)

log = logging.getLogger(__name__)

# What a run writes into its directory (run.log and the lock are kept across a restart).
_RUN_OUTPUTS = ("results.json", "accuracy_matrix.csv", "config.yaml", CKPT_DIR, "tb")


def open_run_dir(
    plan: Plan, restart: bool = False, rollback: bool = False, write: bool = True
) -> RunState | None:
    """The state to resume from (None: a fresh run), after ``--restart`` / ``--rollback`` did
    their part; refuses a directory that holds another config's run or read other data."""
    state = _check_run_dir(plan, restart, write)
    if state is not None and rollback:
        state = _rollback(plan, state, write)
    return state


def prepare_run_dir(plan: Plan, restart: bool = False, rollback: bool = False) -> None:
    """What ``--restart`` / ``--rollback`` do to a run directory, done once by ``migu run
    --num-processes N`` before it launches the processes (which then simply resume or start)."""
    faults.check_output_dir(plan.run_dir)
    with faults.writing(f"the run directory {plan.run_dir}"):
        plan.run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(plan.run_dir):
        open_run_dir(plan, restart, rollback)


def _check_run_dir(plan: Plan, restart: bool = False, write: bool = True) -> RunState | None:
    """Existing state to resume from, or None for a fresh run; refuses to mix two configs.

    ``restart``: a run none of whose stages finished is cleared and started again (with this
    config, changed or not); one with a finished stage is refused, since its results would go.
    """
    state = read_state(plan.run_dir)
    digest = config_hash(plan.resolved)
    if state is None:
        if plan.run_dir.exists() and any(not _no_state_yet(p.name) for p in plan.run_dir.iterdir()):
            raise ConfigError(
                f"{plan.run_dir} exists and is not a migu run directory (no {STATE_FILE}); "
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
    changes = config_changes(before, plan.resolved)
    if not changes:
        return f"config hash {config_hash(before)} != {config_hash(plan.resolved)}, same fields"
    shown = changes[:12] + ([f"... {len(changes) - 12} more"] if len(changes) > 12 else [])
    return "; ".join(shown)


def _restart(plan: Plan, state: RunState, write: bool = True) -> None:
    """Clear a run none of whose stages finished, so it starts again (``migu run --restart``)."""
    if state.trained or state.completed:
        raise ConfigError(
            f"--restart refused: {state.trained} of {len(plan.task_names)} stages of the run in "
            f"{plan.run_dir} finished, and their checkpoints and scores would be lost; use another --out "
            "(nothing was changed)"
        )
    if state.config_hash != config_hash(plan.resolved):
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
    (plan.run_dir / STATE_FILE).unlink()


def finished_results(plan: Plan, state: RunState, write: bool = True) -> RunResults:
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
    results = plan.results(state)
    if write:
        with faults.writing(f"the results of {plan.run_dir}", "the run state and checkpoints are intact"):
            write_results(plan.run_dir, results)
    return results


def _last_intact(plan: Plan, state: RunState, below: int) -> int:
    """The last stage below ``below`` whose checkpoint is intact (-1: none, train from the start)."""
    k = below - 1
    while k >= 0 and not ckpt.checkpoint_intact(plan.run_dir, k, state.digests(k)):
        k -= 1
    return k


def load_resume_checkpoint(plan: Plan, family: Any, model: nn.Module, state: RunState) -> None:
    """Load the checkpoint a resume goes on from; a corrupt one is one message saying what to do."""
    last = state.trained - 1
    try:
        load_task_checkpoint(plan, family, model, last, state.digests(last))
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


def _rollback(plan: Plan, state: RunState, write: bool = True) -> RunState:
    """``--rollback``: forget the stages after the last intact checkpoint (their checkpoints too),
    so they are trained again; a no-op when the checkpoint a resume needs is intact."""
    last = state.trained - 1
    if last < 0 or ckpt.checkpoint_intact(plan.run_dir, last, state.digests(last)):
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
    state.keep_progress(lambda key: key.stage is None or key.stage < state.completed)
    state.keep_checkpoints(lambda stage: stage < trained)
    state.failure = None
    if not write:
        return state
    with faults.writing(f"the run state of {plan.run_dir}"):
        write_state(plan.run_dir, state)
    for i in range(trained, len(plan.task_names)):
        shutil.rmtree(checkpoint_dir(plan.run_dir, i), ignore_errors=True)
    return state


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
        path = checkpoint_dir(plan.run_dir, task_index) / "method_state.json"
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
    state = read_state(run_dir)
    recorded = state.digests(task_index) if state else None
    load_task_checkpoint(plan, family, model, task_index, recorded)
    return plan, family, model
