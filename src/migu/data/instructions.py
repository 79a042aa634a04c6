"""Instruction sets (``instructions.yaml``): JSONL rows as conversations, checked line by line.

Two row formats: ``instruction_response`` (Magicoder's ``instruction``/``response`` fields) and
``messages`` (the common chat format: a list of ``{"role", "content"}`` turns; every assistant turn
is a training target). A CL_Benchmark task can also serve as an instruction set (its prompt as the
instruction, its label as the response), which gives the CPU demo real, offline rows. Every
problem with a file is one :class:`DataError` naming the file and line.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cl_benchmark import load_task
from .errors import DataError
from .humaneval_problems import load_problems
from .provenance import TaskProvenance
from .registry import InstructionSetSpec, get_set

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Conversation:
    """One example: (role, content) turns; the assistant turns are what the model learns to write."""

    turns: tuple[tuple[str, str], ...]
    source: str  # "file:line" or "task:index"

    @property
    def prompt(self) -> tuple[tuple[str, str], ...]:
        """Every turn before the last assistant turn (what generation is conditioned on)."""
        last = max(i for i, (role, _) in enumerate(self.turns) if role == "assistant")
        return self.turns[:last]

    @property
    def response(self) -> str:
        """The last assistant turn (the reference of the exact-match score)."""
        return next(c for r, c in reversed(self.turns) if r == "assistant")


@dataclass
class InstructionData:
    """An instruction set as a run uses it: training conversations, held-out ones, provenance."""

    name: str
    spec: InstructionSetSpec
    train: list[Conversation]
    held_out: list[Conversation]
    info: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    # a set made from a CL_Benchmark task: that task's provenance (``info["task"]`` is its JSON)
    task_provenance: TaskProvenance | None = None

    def data_files(self) -> list[Path]:
        """Every file whose rows the set uses: its JSONL files, or the task's files it was made from."""
        return [*self.files, *(self.task_provenance.data_files() if self.task_provenance is not None else [])]


def _row_to_conversation(spec: InstructionSetSpec, row: Any, where: str) -> Conversation:
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    if spec.format == "instruction_response":
        missing = [f for f in (spec.instruction_field, spec.response_field) if f not in row]
        if missing:
            raise DataError(f"{where}: missing field(s) {missing} (format instruction_response)")
        inst, resp = row[spec.instruction_field], row[spec.response_field]
        if not isinstance(inst, str) or not isinstance(resp, str) or not resp.strip():
            raise DataError(
                f"{where}: {spec.instruction_field!r} and {spec.response_field!r} must be strings"
            )
        return Conversation((("user", inst), ("assistant", resp)), where)
    turns = row.get(spec.messages_field)
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: field {spec.messages_field!r} must be a non-empty list of turns")
    out = []
    for k, t in enumerate(turns):
        if not isinstance(t, dict) or t.get("role") not in ROLES or not isinstance(t.get("content"), str):
            raise DataError(f"{where}: turn {k} must be {{'role': one of {ROLES}, 'content': a string}}")
        out.append((t["role"], t["content"]))
    if out[-1][0] != "assistant":
        raise DataError(f"{where}: the last turn must be the assistant's (the response to learn)")
    return Conversation(tuple(out), where)


def read_jsonl(spec: InstructionSetSpec, path: Path) -> list[Conversation]:
    """Every row of one JSONL file as a conversation (DataError naming the file and line)."""
    if not path.is_file():
        raise DataError(f"instruction set {spec.name!r}: file {path} not found")
    rows = []
    with path.open(encoding="utf-8") as fh:
        try:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{n}: malformed JSON ({err.msg} at column {err.colno})") from None
                rows.append(_row_to_conversation(spec, data, f"{path}:{n}"))
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 text ({err.reason})") from None
    if not rows:
        raise DataError(f"{path}: no rows (instruction set {spec.name!r} would be empty)")
    return rows


def load_instruction_set(name: str, root: str | os.PathLike[str], seed: int = 42) -> InstructionData:
    """Read, check and sample one instruction set (held-out rows first, then ``fraction``)."""
    spec = get_set(name)
    root = Path(root)
    if spec.from_humaneval is not None:
        # Demo rows: HumanEval problems outside the evaluated range (prompt -> canonical solution).
        # Training on HumanEval's own problems is contamination unless the ranges are disjoint; the
        # CPU demo only shows the pipeline, its numbers mean nothing.
        lo, hi = spec.from_humaneval
        problems = load_problems()[lo:hi]
        train = [
            Conversation((("user", p.prompt), ("assistant", p.canonical_solution)), p.task_id)
            for p in problems
        ]
        return InstructionData(spec.name, spec, train, [], {"from_humaneval": [lo, hi], "train": len(train)})
    if spec.from_task is not None:
        task = load_task(spec.from_task, root, train_n=spec.train_n, test_n=spec.test_n, seed=seed)
        train = [
            Conversation((("user", e.input), ("assistant", e.label)), f"{task.name}:{i}")
            for i, e in enumerate(task.train)
        ]
        held = [
            Conversation((("user", e.input), ("assistant", e.label)), f"{task.name}:test:{i}")
            for i, e in enumerate(task.test)
        ]
        assert task.provenance is not None  # load_task always records one
        prov = task.provenance
        info = {
            "from_task": spec.from_task,
            "train": len(train),
            "held_out": len(held),
            "task": prov.to_json(),
        }
        return InstructionData(spec.name, spec, train, held, info, task_provenance=prov)
    files = [root / f for f in spec.files]
    rows = [c for f in files for c in read_jsonl(spec, f)]
    rng = random.Random(f"{seed}:{spec.name}:sample")
    order = list(range(len(rows)))
    rng.shuffle(order)
    if spec.eval_n >= len(rows):
        raise DataError(
            f"instruction set {spec.name!r}: eval_n={spec.eval_n} leaves no training rows ({len(rows)})"
        )
    held_idx = sorted(order[: spec.eval_n])
    rest = order[spec.eval_n :]
    n_train = max(1, round(spec.fraction * len(rest)))
    train_idx = sorted(rest[:n_train])
    info = {
        "files": [str(f) for f in files],
        "rows": len(rows),
        "fraction": spec.fraction,
        "train": len(train_idx),
        "held_out": len(held_idx),
        "seed": seed,
        "disjoint": True,
    }
    return InstructionData(
        spec.name, spec, [rows[i] for i in train_idx], [rows[i] for i in held_idx], info, files
    )
