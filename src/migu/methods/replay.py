"""Replay: keep a small seeded sample of each finished task's training rows and mix it into later tasks.

LoRAReplay (the paper's LoRA + 2% replay) and FTReplay (FT + replay). After task i, ``on_task_end``
stores ``replay_count(replay_fraction, n_i)`` of that task's *training* rows (the runner only ever
passes training rows to a method); ``training_examples`` for a later task returns the task's own
rows followed by every stored row of the earlier tasks (the runner shuffles).

Rounding: k = round-half-up(fraction * n), at least 1 and at most n (0 for an empty task). So 2%
of 100 rows is 2, of 10 rows is 1 (0.2, raised to the minimum of one), of 175 rows is 4 (3.5 up).

The sample is seeded by (``replay_seed``, task index, task name) only, so replaying ``on_task_end``
on resume draws the same rows; ``replay_seed`` left unset follows the run's seed (``on_run_start``),
and is 0 outside a run; ``state_dict`` also saves the rows themselves (as dicts, JSON-safe),
so a buffer can be restored without the task data.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..data.cl_benchmark import Example
from ..data.instructions import Conversation
from ._options import check_float, check_int
from .base import CLMethod, MethodNeeds, TaskContext
from .ft import FT
from .lora import LoRA

log = logging.getLogger(__name__)


def replay_count(fraction: float, n: int) -> int:
    """Rows kept from a task of ``n`` training rows: round-half-up(fraction * n) clipped to [1, n]."""
    if n <= 0:
        return 0
    k = math.floor(round(fraction * n, 6) + 0.5)  # round(.., 6): 0.02 * 175 is 3.5000000000000004
    return min(n, max(1, k))


# The row types a replay buffer may hold, by the name saved in method_state.json. A fixed table, not
# an import of whatever module the file names: a tampered run directory cannot make migu import code.
ROW_TYPES: dict[str, type] = {
    "migu.data.cl_benchmark:Example": Example,  # labelled CL_Benchmark rows (finetune regime)
    "migu.data.instructions:Conversation": Conversation,  # instruction sets (instruct regime)
}
# The names checkpoints written before the data package was renamed (``migu.data``) carry:
# read, so those runs still resume; new checkpoints write the names above.
LEGACY_ROW_TYPES: dict[str, type] = {
    "migu." + "benchmarks.data:Example": Example,
    "migu." + "benchmarks.instructions:Conversation": Conversation,
}


def _row_type(row: Any) -> str | None:
    """The saved name of a row's type: a ROW_TYPES entry for dataclass rows, None for plain JSON rows."""
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        name = f"{type(row).__module__}:{type(row).__qualname__}"
        if ROW_TYPES.get(name) is not type(row):
            raise ValueError(
                f"replay: rows of type {name} cannot be saved with a checkpoint; known row types: "
                f"{sorted(ROW_TYPES)} (or plain JSON rows)"
            )
        return name
    return None


def _row_to_json(row: Any) -> Any:
    """A dataclass row (data's Example) as a dict; anything else must already be JSON data."""
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        return dataclasses.asdict(row)
    return row


def _as_hint(value: Any, hint: Any) -> Any:
    """JSON lists back to the tuples a field's annotation asks for (nested ones included)."""
    if typing.get_origin(hint) is not tuple or not isinstance(value, list):
        return value
    args = typing.get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_as_hint(v, args[0]) for v in value)
    if len(args) == len(value):
        return tuple(_as_hint(v, a) for v, a in zip(value, args, strict=True))
    return tuple(value)


def _row_from_json(row_type: str | None, data: Any) -> Any:
    """Rebuild a row saved by :func:`_row_to_json`; an unknown type name is a ValueError (never an import)."""
    if row_type is None:
        return data
    cls = ROW_TYPES.get(row_type) or LEGACY_ROW_TYPES.get(row_type)
    if cls is None:
        raise ValueError(
            f"replay state: unknown row type {row_type!r}; known row types: {sorted(ROW_TYPES)} "
            "(was the file edited, or written by another program?)"
        )
    if not isinstance(data, dict):
        raise ValueError(f"replay state: a {row_type} row must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name in data]
    kwargs = {name: _as_hint(data[name], hints.get(name)) for name in names}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"replay state: a {row_type} row does not fit its type: {exc}") from None


@dataclass
class _Stored:
    """One finished task's replay sample: which rows of its training list, and the rows."""

    task_index: int
    task: str
    n: int  # size of the task's training list
    indices: list[int]  # sorted positions in that list
    rows: list[Any]
    row_type: str | None  # a ROW_TYPES name for dataclass rows, None for plain JSON rows

    def to_json(self) -> dict[str, Any]:
        return {
            "task_index": self.task_index,
            "task": self.task,
            "n": self.n,
            "indices": list(self.indices),
            "row_type": self.row_type,
            "rows": [_row_to_json(r) for r in self.rows],
        }


@dataclass
class ReplayMixin(CLMethod):
    """Adds a replay buffer to a method (put it first in the bases: ``class X(ReplayMixin, LoRA)``).

    Options: ``replay_fraction`` (0.02, in (0, 1]), ``replay_seed`` (default: the run's seed; 0
    outside a run).
    """

    needs: ClassVar[MethodNeeds] = MethodNeeds(old_data=True)
    regimes: ClassVar[tuple[str, ...]] = ("finetune", "instruct")

    replay_fraction: float = 0.02
    replay_seed: int | None = None
    _buffer: dict[int, _Stored] = field(default_factory=dict, init=False, repr=False, compare=False)

    def validate(self) -> None:
        super().validate()
        check_float(self, "replay_fraction", 0.0, 1.0, low_open=True)
        if self.replay_seed is not None:
            check_int(self, "replay_seed", 0)

    def on_run_start(self, seed: int) -> None:
        """An unset ``replay_seed`` follows the run's seed, so each seed of a sweep replays other rows."""
        super().on_run_start(seed)
        if self.replay_seed is None:
            self.replay_seed = seed
            self.snapshot_options()

    def replay_rows(self, task_index: int) -> list[Any]:
        """Stored rows of the tasks before ``task_index``, in task order."""
        return [row for i in sorted(self._buffer) if i < task_index for row in self._buffer[i].rows]

    def replay_counts(self) -> dict[str, int]:
        """Stored rows per finished task (by task name)."""
        return {self._buffer[i].task: len(self._buffer[i].rows) for i in sorted(self._buffer)}

    def training_examples(self, ctx: TaskContext, rng: random.Random) -> list[Any]:
        """This task's rows, then the stored rows of every earlier task (the runner shuffles)."""
        own = super().training_examples(ctx, rng)
        replayed = self.replay_rows(ctx.task_index)
        if replayed:
            log.info("task %d: %d own rows + %d replayed rows", ctx.task_index, len(own), len(replayed))
        return own + replayed

    def on_task_end(self, ctx: TaskContext) -> None:
        """Store a seeded sample of the finished task's training rows (replacing any earlier one)."""
        super().on_task_end(ctx)
        task_index, task_name, examples = ctx.task_index, ctx.task_name, ctx.examples
        n = len(examples)
        k = replay_count(self.replay_fraction, n)
        seed = 0 if self.replay_seed is None else self.replay_seed
        # str seeds hash with SHA-512 in `random`: the same draw in every process and on resume.
        rng = random.Random(f"{seed}:{task_index}:{task_name}")
        indices = sorted(rng.sample(range(n), k))
        rows = [examples[j] for j in indices]
        self._buffer[task_index] = _Stored(
            task_index, task_name, n, indices, rows, _row_type(rows[0]) if rows else None
        )
        log.info("replay: stored %d of %d training rows of task %r", k, n, task_name)

    def state_dict(self) -> dict[str, Any]:
        """The parent's state plus ``replay``: per finished task, row indices and the rows as JSON."""
        state = super().state_dict()
        state["replay"] = [self._buffer[i].to_json() for i in sorted(self._buffer)]
        return state

    def load_state_dict(self, state: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Restore the buffer; rows already rebuilt by a replayed ``on_task_end`` are kept as objects."""
        super().load_state_dict(state, tensors)
        saved = state.get("replay")
        if saved is None:
            log.warning("method %r: state has no replay buffer; keeping the current one", self.name)
            return
        buffer: dict[int, _Stored] = {}
        for rec in saved:
            i = int(rec["task_index"])
            current = self._buffer.get(i)
            same = (
                current is not None
                and current.task == rec["task"]
                and current.n == rec["n"]
                and current.indices == list(rec["indices"])
            )
            if same:
                assert current is not None
                buffer[i] = current
                continue
            if current is not None:
                log.warning(
                    "replay rows of task %r differ from the rebuilt sample: using the checkpoint's",
                    rec["task"],
                )
            rows = [_row_from_json(rec.get("row_type"), r) for r in rec["rows"]]
            buffer[i] = _Stored(
                i, rec["task"], int(rec["n"]), list(rec["indices"]), rows, rec.get("row_type")
            )
        self._buffer = buffer


@dataclass
class LoRAReplay(ReplayMixin, LoRA):
    """LoRA + replay (the paper's LoRAReplay, 2% of each past task). MIGU threshold 0.4 (paper)."""

    name: ClassVar[str] = "lora_replay"
    paper_name: ClassVar[str] = "LoRAReplay"
    description: ClassVar[str] = (
        "LoRA, plus a seeded 2% of each earlier task's training rows mixed into later tasks"
    )
    default_threshold: ClassVar[float] = 0.4


@dataclass
class FTReplay(ReplayMixin, FT):
    """FT + replay. MIGU threshold 0.4 (as LoRAReplay)."""

    name: ClassVar[str] = "ft_replay"
    paper_name: ClassVar[str] = "FTReplay"
    description: ClassVar[str] = (
        "FT, plus a seeded 2% of each earlier task's training rows mixed into later tasks"
    )
    default_threshold: ClassVar[float] = 0.4
