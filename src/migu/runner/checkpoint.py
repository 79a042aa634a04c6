"""Per-stage checkpoints (safetensors + JSON) written atomically and verified by their sha256.

Layout of a run directory::

    run_state.json                 # completed tasks, accuracy rows so far, config hash
    checkpoints/task_03/model.safetensors
    checkpoints/task_03/method_state.json
    checkpoints/task_03/method_state.safetensors   # only for methods with tensor state
    checkpoints/task_03/migu_state.safetensors     # only with MIGU+Cluster: the clusters of the task

A checkpoint directory is written under a temporary name and renamed into place, and
``run_state.json`` is replaced atomically after it, so a run killed at any moment resumes from
the last task whose checkpoint is complete. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from .faults import CheckpointError
from .files import apply_umask_mode, atomic_write_text
from .state import CKPT_DIR, STATE_FILE, checkpoint_dir, checkpoint_stage

log = logging.getLogger(__name__)

METHOD_TENSORS = "method_state.safetensors"
MIGU_TENSORS = "migu_state.safetensors"


def save_checkpoint(
    run_dir: Path,
    task_index: int,
    model: nn.Module,
    method_state: dict[str, Any],
    method_tensors: dict[str, torch.Tensor] | None = None,
    migu_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save the model after ``task_index`` under a temp name, then rename into place.

    ``migu_tensors``: the MIGU engine's state (the cluster assignments, keyed by target name).
    """
    final = checkpoint_dir(run_dir, task_index)
    # One temp name per writer (the pid): two writers never share a half-written directory.
    tmp = final.with_name(f"{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_model(model, str(tmp / "model.safetensors"))  # handles tied weights
        (tmp / "method_state.json").write_text(json.dumps(method_state))
        if method_tensors:
            tensors = {k: v.detach().contiguous().cpu() for k, v in method_tensors.items()}
            save_file(tensors, str(tmp / METHOD_TENSORS))
        if migu_tensors:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in migu_tensors.items()}, str(tmp / MIGU_TENSORS)
            )
        for path in tmp.iterdir():
            apply_umask_mode(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk: give back the space of the partial copy
        raise
    if final.exists():  # a stage checkpointed again (killed before its run state was written)
        old = final.with_name(f"{final.name}.{os.getpid()}.old.tmp")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def load_checkpoint(
    run_dir: Path, task_index: int, model: nn.Module
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load weights into ``model`` (strict); return the method state (JSON, tensors) saved beside them.

    A truncated or corrupt file is a CheckpointError naming it (never a safetensors traceback).
    """
    d = checkpoint_dir(run_dir, task_index)
    weights = d / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint missing: {weights}")
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except (SafetensorError, OSError) as exc:
        raise _unreadable(weights, exc) from exc
    if missing or unexpected:
        raise RuntimeError(
            f"{weights} does not match the model built from the config: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    tensors = read_tensors(d / METHOD_TENSORS) if (d / METHOD_TENSORS).is_file() else {}
    meta = d / "method_state.json"
    try:
        return json.loads(meta.read_text()), tensors
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _unreadable(meta, exc) from exc


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(f"{path} cannot be read, it is truncated or corrupt ({exc})")


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; CheckpointError naming the file when it cannot be read."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise _unreadable(path, exc) from exc


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def file_digests(directory: Path) -> dict[str, str]:
    """{file name: sha256} of a checkpoint directory, recorded in the run state when it is written."""
    return {p.name: _sha256(p) for p in sorted(directory.iterdir()) if p.is_file()}


def verify_checkpoint(run_dir: Path, task_index: int, expected: dict[str, str]) -> None:
    """Every file recorded for ``task_index``'s checkpoint is there with its recorded sha256, else
    a CheckpointError naming the first file that is not."""
    d = checkpoint_dir(run_dir, task_index)
    for name, digest in sorted(expected.items()):
        path = d / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (it was recorded in {STATE_FILE} when written)")
        actual = _sha256(path)
        if actual != digest:
            raise CheckpointError(
                f"{path} is corrupt: its sha256 {actual[:16]} differs from the {digest[:16]} recorded "
                "when it was written"
            )


def checkpoint_intact(run_dir: Path, task_index: int, expected: dict[str, str] | None) -> bool:
    """Whether ``task_index``'s checkpoint exists and matches its recorded digests (for run states
    written before digests were recorded: whether its safetensors headers read and fit the files)."""
    d = checkpoint_dir(run_dir, task_index)
    if not (d / "model.safetensors").is_file():
        return False
    try:
        if expected:
            verify_checkpoint(run_dir, task_index, expected)
        else:
            for path in d.glob("*.safetensors"):
                with safe_open(str(path), framework="pt") as fh:
                    fh.keys()
    except (CheckpointError, SafetensorError, OSError):
        return False
    return True


OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"


def save_optimizer_state(run_dir: Path, task_index: int, state: dict[str, Any]) -> None:
    """An optimizer's ``state_dict`` beside a stage's checkpoint (tensors as safetensors, the rest as
    JSON), for a next stage that continues this optimization after a resume."""
    d = checkpoint_dir(run_dir, task_index)
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                plain.setdefault(str(pid), {})[key] = value
    meta = {"param_groups": state["param_groups"], "plain": plain, "ids": [str(k) for k in state["state"]]}
    tmp = d / f".{OPTIMIZER_TENSORS}.{os.getpid()}.tmp"
    save_file(tensors, str(tmp))
    apply_umask_mode(tmp)
    os.replace(tmp, d / OPTIMIZER_TENSORS)
    atomic_write_text(d / OPTIMIZER_META, json.dumps(meta, default=list))


def load_optimizer_state(run_dir: Path, task_index: int) -> dict[str, Any]:
    """What :func:`save_optimizer_state` wrote after ``task_index``."""
    d = checkpoint_dir(run_dir, task_index)
    if not (d / OPTIMIZER_META).is_file():
        raise FileNotFoundError(f"{d} has no saved optimizer state: the run cannot continue its schedule")
    try:
        meta = json.loads((d / OPTIMIZER_META).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _unreadable(d / OPTIMIZER_META, exc) from exc
    tensors = read_tensors(d / OPTIMIZER_TENSORS)
    state: dict[int, dict[str, Any]] = {int(pid): dict(meta["plain"].get(pid, {})) for pid in meta["ids"]}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state[int(pid)][name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def load_migu_tensors(run_dir: Path, task_index: int) -> dict[str, torch.Tensor]:
    """The MIGU engine state saved with ``task_index``'s checkpoint ({} when there is none)."""
    path = checkpoint_dir(run_dir, task_index) / MIGU_TENSORS
    return read_tensors(path) if path.is_file() else {}


def prune_checkpoints(run_dir: Path, keep_index: int) -> None:
    """Remove task checkpoints older than ``keep_index`` (and stale temp dirs)."""
    root = run_dir / CKPT_DIR
    if not root.is_dir():
        return
    for d in root.iterdir():
        if d.name.endswith(".tmp"):
            shutil.rmtree(d, ignore_errors=True)
            continue
        stage = checkpoint_stage(d.name)
        if stage is not None and stage < keep_index:
            shutil.rmtree(d, ignore_errors=True)
