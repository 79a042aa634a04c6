"""What a run has finished so far (``run_state.json``) and the names in it, typed.

The run state says which stages were trained (and checkpointed) and scored, the matrices' rows so
far, the sha256 of every checkpoint file, and the finished parts of a long scoring protocol
(``Progress``), so a run killed at any moment resumes after the last finished piece. Its keys
are strings in JSON; the names they stand for are built and parsed here only:

- checkpoint directories: ``checkpoints/task_03`` holds the weights after stage 3 (0-based), named
  by :func:`checkpoint_name`, read back by :func:`checkpoint_stage`;
- progress records: :class:`ProgressKey` ``"3:1"`` (end task 1 scored after stage 3) or
  ``"base:0"`` (end task 0 of the untrained model).

The config hash (``config_hash``) tells a resume whether the run directory holds this config's
run; :func:`config_changes` lists what differs when it does not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .files import atomic_write_text

STATE_FILE = "run_state.json"
CKPT_DIR = "checkpoints"
_CKPT_PREFIX = "task_"


def hashed_config(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a resolved config that change results (not paths or bookkeeping): what
    :func:`config_hash` hashes and :func:`config_changes` compares."""
    ignored = ("name", "data_root", "keep_checkpoints", "tensorboard", "paper")
    relevant = {k: v for k, v in config.items() if k not in ignored}
    # train.nonfinite: a stage finished under stop had no non-finite step, so it is what skip gives too
    # (skipped steps are recorded per stage in the timings): a diverged run may resume with skip.
    unhashed = ("log_every", "nonfinite")
    relevant["train"] = {k: v for k, v in (relevant.get("train") or {}).items() if k not in unhashed}
    pretrain = relevant.get("pretrain")
    if isinstance(pretrain, dict):
        # a cached reference is the same computation (its key says so): reuse is bookkeeping, and runs
        # started before the field existed still resume
        relevant["pretrain"] = {k: v for k, v in pretrain.items() if k != "reuse_reference"}
    migu = relevant.get("migu")
    if isinstance(migu, dict) and migu.get("cluster", 0) is None:
        # MIGU+Cluster off hashes as before the field existed: runs started earlier still resume.
        relevant["migu"] = {k: v for k, v in migu.items() if k != "cluster"}
    return relevant


def config_hash(config: dict[str, Any]) -> str:
    """Hash of the parts of a resolved config that change results (not paths or bookkeeping)."""
    relevant = hashed_config(config)
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}


def config_changes(before: dict[str, Any], now: dict[str, Any], skip_added: bool = False) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs between two resolved configs
    (only the parts that are hashed: a changed name or log_every is not a change of the run).

    ``skip_added``: leave out keys ``before`` lacks (fields added to the config since it was
    saved, so the old run used what their defaults now say); keys removed since still count."""
    old, new = _flatten(hashed_config(before)), _flatten(hashed_config(now))

    def show(d: dict[str, Any], k: str) -> str:
        return json.dumps(d[k], default=str) if k in d else "(unset)"

    keys = sorted(
        k
        for k in old.keys() | new.keys()
        if _canon(old.get(k, _UNSET)) != _canon(new.get(k, _UNSET)) and not (skip_added and k not in old)
    )
    return [f"{k}: {show(old, k)} -> {show(new, k)}" for k in keys]


_UNSET = object()


def _canon(value: Any) -> Any:
    """Compare as the hash does (as JSON text: a tuple equals a list)."""
    return value if value is _UNSET else json.dumps(value, sort_keys=True, default=str)


def checkpoint_name(stage: int) -> str:
    """The directory name of the checkpoint after ``stage`` (0-based): ``task_03``."""
    return f"{_CKPT_PREFIX}{stage:02d}"


def checkpoint_stage(name: str) -> int | None:
    """The stage a checkpoint directory name stands for (None for anything else: temp copies)."""
    digits = name.removeprefix(_CKPT_PREFIX)
    return int(digits) if name.startswith(_CKPT_PREFIX) and digits.isdigit() else None


def checkpoint_dir(run_dir: Path, stage: int) -> Path:
    """``RUN/checkpoints/task_03``: where the checkpoint after ``stage`` lives."""
    return run_dir / CKPT_DIR / checkpoint_name(stage)


@dataclass(frozen=True)
class ProgressKey:
    """A finished part of a stage's scoring: ``part`` (an end task) scored after ``stage``, or
    after none (``stage`` None: the untrained model's baseline)."""

    stage: int | None
    part: int

    def __str__(self) -> str:
        return f"{'base' if self.stage is None else self.stage}:{self.part}"

    @classmethod
    def parse(cls, key: str) -> ProgressKey:
        head, _, part = key.partition(":")
        if not part.isdigit() or not (head == "base" or head.isdigit()):
            raise ValueError(f"not a progress key: {key!r} (expected STAGE:PART or base:PART)")
        return cls(None if head == "base" else int(head), int(part))


class Progress:
    """The finished parts of a long scoring protocol, a view over the run state's ``progress``
    mapping (records are JSON, written with the run state)."""

    def __init__(self, records: dict[str, Any]) -> None:
        self.records = records

    def get(self, stage: int | None, part: int) -> Any:
        """The record of ``part`` scored after ``stage``; None when it has not finished."""
        return self.records.get(str(ProgressKey(stage, part)))

    def put(self, stage: int | None, part: int, record: Any) -> None:
        self.records[str(ProgressKey(stage, part))] = record


@dataclass
class RunState:
    """What a run has finished so far (``run_state.json``): enough to resume after the last task."""

    config_hash: str
    completed: int = 0  # stages trained AND scored
    trained: int = 0  # stages trained and checkpointed (one more than completed while scoring)
    matrices: dict[str, list[list[float | None]]] = field(default_factory=dict)  # metric -> rows so far
    baselines: dict[str, list[float]] | None = None  # the untrained model's scores per metric
    progress: dict[str, Any] = field(default_factory=dict)  # ProgressKey -> record (see Progress)
    timings: list[dict[str, Any]] = field(default_factory=list)  # per finished stage
    wall_seconds: float = 0.0
    data: dict[str, str] = field(default_factory=dict)  # every data file read -> sha256
    correct: dict[str, dict[str, list[int]]] | None = None  # last scoring: split -> task -> 0/1 per row
    failure: dict[str, Any] | None = None  # why the last attempt stopped (a non-finite loss); None = fine
    # checkpoint directory name (checkpoint_name) -> {file: sha256} at write time: a resume checks them
    checkpoints: dict[str, dict[str, str]] = field(default_factory=dict)

    def scoring(self) -> Progress:
        """The scoring progress, as a view that writes through to this state."""
        return Progress(self.progress)

    def digests(self, stage: int) -> dict[str, str] | None:
        """The sha256 of every file of the checkpoint after ``stage``, as recorded when it was written."""
        return self.checkpoints.get(checkpoint_name(stage))

    def record_checkpoint(self, stage: int, digests: dict[str, str]) -> None:
        self.checkpoints[checkpoint_name(stage)] = digests

    def keep_checkpoints(self, keep: Callable[[int], bool]) -> None:
        """Forget the records of the checkpoints whose stage ``keep`` refuses."""
        self.checkpoints = {
            name: d
            for name, d in self.checkpoints.items()
            if (s := checkpoint_stage(name)) is not None and keep(s)
        }

    def keep_progress(self, keep: Callable[[ProgressKey], bool]) -> None:
        """Forget the scoring records whose key ``keep`` refuses."""
        self.progress = {k: v for k, v in self.progress.items() if keep(ProgressKey.parse(k))}


def read_state(run_dir: Path) -> RunState | None:
    path = run_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return RunState(**data)
    except (json.JSONDecodeError, TypeError) as exc:
        raise RuntimeError(f"{path} is corrupt ({exc}); move the run directory aside to start over") from exc


def write_state(run_dir: Path, state: RunState) -> None:
    atomic_write_text(run_dir / STATE_FILE, json.dumps(asdict(state), indent=1))
