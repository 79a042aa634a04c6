"""Task and order registry, read once from the packaged ``tasks.yaml``.

A task order is one YAML entry, so adding an order or a task never touches code. Lookups are
case-insensitive and unknown names fail with close-match suggestions, because a typo in an
order name should stop a run before any model is built.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal

import yaml

TaskKind = Literal["classification", "das"]
TASK_KINDS: tuple[str, ...] = ("classification", "das")


@dataclass(frozen=True)
class TaskSpec:
    """One CL task: where its data lives under CL_Benchmark and how its prompt reads.

    ``path`` is relative to the CL_Benchmark root (``None`` for tasks whose data is not in
    CL_Benchmark, e.g. the DAS corpora). An empty ``instruction`` means the sentence carries its
    own question (COPA), as in O-LoRA.
    """

    name: str
    category: str
    path: str | None
    instruction: str
    kind: TaskKind = "classification"


@dataclass(frozen=True)
class OrderSpec:
    """A task sequence: the tasks in training order and what the sequence is for."""

    name: str
    tasks: tuple[str, ...]
    description: str


class RegistryError(ValueError):
    """The registry YAML itself is malformed (a packaging bug, not a user error)."""


class UnknownNameError(KeyError):
    """A task or order name that is not registered; the message lists close matches."""

    def __str__(self) -> str:
        # KeyError's default str() wraps the message in quotes; show it as written.
        return str(self.args[0]) if self.args else ""


class UnknownTaskError(UnknownNameError):
    """No task by that name."""


class UnknownOrderError(UnknownNameError):
    """No order by that name."""


def _key(name: str) -> str:
    return name.strip().lower()


def _unknown_message(what: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(_key(name), known, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"unknown {what} {name!r}.{hint} Known {what}s: {', '.join(known)}."


def _parse(data: Any, source: str) -> tuple[dict[str, TaskSpec], dict[str, OrderSpec]]:
    """Build and check the registry from parsed YAML; every inconsistency is a RegistryError."""
    if not isinstance(data, Mapping) or not isinstance(data.get("tasks"), Mapping):
        raise RegistryError(f"{source}: expected a mapping with 'tasks' and 'orders'")
    tasks: dict[str, TaskSpec] = {}
    for raw_name, entry in data["tasks"].items():
        name = _key(str(raw_name))
        if not isinstance(entry, Mapping):
            raise RegistryError(f"{source}: task {raw_name!r} must be a mapping")
        missing = [k for k in ("category", "path", "instruction") if k not in entry]
        if missing:
            raise RegistryError(f"{source}: task {raw_name!r} lacks {', '.join(missing)}")
        kind = entry.get("kind", "classification")
        if kind not in TASK_KINDS:
            raise RegistryError(f"{source}: task {raw_name!r} has kind {kind!r}, not one of {TASK_KINDS}")
        path = entry["path"]
        if kind == "classification" and not path:
            raise RegistryError(f"{source}: classification task {raw_name!r} needs a data path")
        if name in tasks:
            raise RegistryError(f"{source}: task {raw_name!r} is registered twice")
        tasks[name] = TaskSpec(
            name=name,
            category=str(entry["category"]),
            path=str(path) if path else None,
            instruction=str(entry["instruction"] or ""),
            kind=kind,
        )

    orders: dict[str, OrderSpec] = {}
    for raw_name, entry in (data.get("orders") or {}).items():
        name = _key(str(raw_name))
        if not isinstance(entry, Mapping) or not isinstance(entry.get("tasks"), list) or not entry["tasks"]:
            raise RegistryError(f"{source}: order {raw_name!r} needs a non-empty 'tasks' list")
        if not entry.get("description"):
            raise RegistryError(f"{source}: order {raw_name!r} needs a description")
        seq = tuple(_key(str(t)) for t in entry["tasks"])
        unknown = [t for t in seq if t not in tasks]
        if unknown:
            raise RegistryError(f"{source}: order {raw_name!r} names unknown tasks {unknown}")
        if len(set(seq)) != len(seq):
            raise RegistryError(f"{source}: order {raw_name!r} repeats a task")
        kinds = {tasks[t].kind for t in seq}
        if len(kinds) > 1:
            raise RegistryError(f"{source}: order {raw_name!r} mixes task kinds {sorted(kinds)}")
        orders[name] = OrderSpec(
            name=name, tasks=seq, description=" ".join(str(entry["description"]).split())
        )
    return tasks, orders


@cache
def _registry() -> tuple[dict[str, TaskSpec], dict[str, OrderSpec]]:
    text = resources.files("migu.benchmarks").joinpath("tasks.yaml").read_text(encoding="utf-8")
    return _parse(yaml.safe_load(text), "migu/benchmarks/tasks.yaml")


def get_task(name: str) -> TaskSpec:
    """The task registered as ``name`` (case-insensitive); UnknownTaskError otherwise."""
    tasks = _registry()[0]
    try:
        return tasks[_key(name)]
    except KeyError:
        raise UnknownTaskError(_unknown_message("task", name, list(tasks))) from None


def get_order(name: str) -> OrderSpec:
    """The order registered as ``name`` (case-insensitive); UnknownOrderError otherwise."""
    orders = _registry()[1]
    try:
        return orders[_key(name)]
    except KeyError:
        raise UnknownOrderError(_unknown_message("order", name, list(orders))) from None


def list_tasks() -> list[str]:
    """Registered task names, in registry order."""
    return list(_registry()[0])


def list_orders() -> list[str]:
    """Registered order names, in registry order."""
    return list(_registry()[1])
