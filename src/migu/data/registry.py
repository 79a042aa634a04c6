"""Task, domain, instruction-set and order registry, read once from the packaged ``tasks.yaml``,
``domains.yaml`` and ``instructions.yaml``.

A task, a domain or an order is one YAML entry, so adding one never touches code. Lookups are
case-insensitive and unknown names fail with close-match suggestions, because a typo in an
order name should stop a run before any model is built. An order's ``regime`` says what its
stages are: labelled tasks (``finetune``, tasks.yaml), domain corpora (``pretrain``,
domains.yaml) or instruction sets (``instruct``, instructions.yaml).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources
from typing import Any, Literal

import yaml

Regime = Literal["finetune", "pretrain", "instruct"]


@dataclass(frozen=True)
class TaskSpec:
    """One CL task: where its data lives under CL_Benchmark and how its prompt reads.

    ``path`` is relative to the CL_Benchmark root. An empty ``instruction`` means the sentence
    carries its own question (COPA), as in O-LoRA.
    """

    name: str
    category: str
    path: str
    instruction: str


@dataclass(frozen=True)
class CorpusSpec:
    """A domain's unlabeled text: files under the data root, or a CL_Benchmark task's spare rows."""

    files: tuple[str, ...] = ()
    format: Literal["text", "json"] = "text"
    text_field: str = "text"
    from_task: str | None = None
    rows: int | None = None  # documents used (seeded sample); None = all


@dataclass(frozen=True)
class EndTaskSpec:
    """A domain's labelled end task: a directory of train/test files, or a CL_Benchmark task."""

    path: str | None = None
    format: Literal["cl_benchmark", "jsonl"] = "cl_benchmark"
    task: str | None = None
    train_n: int | None = None
    test_n: int | None = None
    epochs: float = 1.0
    metric: Literal["macro_f1", "micro_f1"] = "macro_f1"


@dataclass(frozen=True)
class DomainSpec:
    """One continual pre-training domain: its corpus and its end task."""

    name: str
    description: str
    corpus: CorpusSpec
    end_task: EndTaskSpec


@dataclass(frozen=True)
class InstructionSetSpec:
    """One instruction set: JSONL files under the data root, or a CL_Benchmark task as rows."""

    name: str
    description: str = ""
    files: tuple[str, ...] = ()
    format: Literal["instruction_response", "messages"] = "instruction_response"
    instruction_field: str = "instruction"
    response_field: str = "response"
    messages_field: str = "messages"
    fraction: float = 1.0
    eval_n: int = 0
    from_task: str | None = None
    train_n: int | None = None
    test_n: int | None = None
    from_humaneval: tuple[int, int] | None = None  # demo only: HumanEval problems [a, b) as rows
    eval: Literal["humaneval", "exact_match", "none"] = "exact_match"


@dataclass(frozen=True)
class OrderSpec:
    """A stage sequence: task (or domain) names in training order, what it is for, its regime."""

    name: str
    tasks: tuple[str, ...]
    description: str
    regime: Regime = "finetune"


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


class UnknownDomainError(UnknownNameError):
    """No domain by that name."""


class UnknownSetError(UnknownNameError):
    """No instruction set by that name."""


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
        if not entry["path"]:
            raise RegistryError(f"{source}: task {raw_name!r} needs a data path")
        if name in tasks:
            raise RegistryError(f"{source}: task {raw_name!r} is registered twice")
        tasks[name] = TaskSpec(
            name=name,
            category=str(entry["category"]),
            path=str(entry["path"]),
            instruction=str(entry["instruction"] or ""),
        )
    return tasks, _parse_orders(data, source, "tasks", tasks, "finetune")


def _parse_orders(
    data: Mapping[str, Any], source: str, key: str, names: Mapping[str, Any], regime: Regime
) -> dict[str, OrderSpec]:
    """Orders of one registry file: ``key`` lists registered names of that file, each once."""
    orders: dict[str, OrderSpec] = {}
    for raw_name, entry in (data.get("orders") or {}).items():
        name = _key(str(raw_name))
        if not isinstance(entry, Mapping) or not isinstance(entry.get(key), list) or not entry[key]:
            raise RegistryError(f"{source}: order {raw_name!r} needs a non-empty '{key}' list")
        if not entry.get("description"):
            raise RegistryError(f"{source}: order {raw_name!r} needs a description")
        seq = tuple(_key(str(t)) for t in entry[key])
        unknown = [t for t in seq if t not in names]
        if unknown:
            raise RegistryError(f"{source}: order {raw_name!r} names unknown {key} {unknown}")
        if len(set(seq)) != len(seq):
            raise RegistryError(f"{source}: order {raw_name!r} repeats a task")
        orders[name] = OrderSpec(
            name=name, tasks=seq, description=" ".join(str(entry["description"]).split()), regime=regime
        )
    return orders


def _section(cls: type, entry: Any, where: str) -> Any:
    """A frozen spec dataclass from a YAML mapping; unknown keys are registry errors."""
    if not isinstance(entry, Mapping):
        raise RegistryError(f"{where} must be a mapping")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise RegistryError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()}
    return cls(**values)


def _parse_domains(
    data: Any, source: str, tasks: Mapping[str, TaskSpec]
) -> tuple[dict[str, DomainSpec], dict[str, OrderSpec]]:
    """Build and check the domain registry; every inconsistency is a RegistryError."""
    if not isinstance(data, Mapping) or not isinstance(data.get("domains"), Mapping):
        raise RegistryError(f"{source}: expected a mapping with 'domains' and 'orders'")
    domains: dict[str, DomainSpec] = {}
    for raw_name, entry in data["domains"].items():
        name = _key(str(raw_name))
        where = f"{source}: domain {raw_name!r}"
        if not isinstance(entry, Mapping) or not {"corpus", "end_task"} <= set(entry):
            raise RegistryError(f"{where} needs 'corpus' and 'end_task'")
        corpus = _section(CorpusSpec, entry["corpus"], f"{where} corpus")
        end = _section(EndTaskSpec, entry["end_task"], f"{where} end_task")
        if bool(corpus.files) == bool(corpus.from_task):
            raise RegistryError(f"{where} corpus needs exactly one of 'files' or 'from_task'")
        if (end.path is None) == (end.task is None):
            raise RegistryError(f"{where} end_task needs exactly one of 'path' or 'task'")
        for ref in (corpus.from_task, end.task):
            if ref is not None and _key(ref) not in tasks:
                raise RegistryError(f"{where} refers to unknown CL_Benchmark task {ref!r}")
        if name in domains:
            raise RegistryError(f"{where} is registered twice")
        domains[name] = DomainSpec(name, " ".join(str(entry.get("description", "")).split()), corpus, end)
    return domains, _parse_orders(data, source, "domains", domains, "pretrain")


def _parse_sets(
    data: Any, source: str, tasks: Mapping[str, TaskSpec]
) -> tuple[dict[str, InstructionSetSpec], dict[str, OrderSpec]]:
    """Build and check the instruction-set registry; every inconsistency is a RegistryError."""
    if not isinstance(data, Mapping) or not isinstance(data.get("sets"), Mapping):
        raise RegistryError(f"{source}: expected a mapping with 'sets' and 'orders'")
    sets: dict[str, InstructionSetSpec] = {}
    for raw_name, entry in data["sets"].items():
        name = _key(str(raw_name))
        where = f"{source}: set {raw_name!r}"
        if not isinstance(entry, Mapping):
            raise RegistryError(f"{where} must be a mapping")
        spec = _section(InstructionSetSpec, {"name": name, **entry}, where)
        if sum(map(bool, (spec.files, spec.from_task, spec.from_humaneval))) != 1:
            raise RegistryError(f"{where} needs exactly one of 'files', 'from_task' or 'from_humaneval'")
        if spec.from_task is not None and _key(spec.from_task) not in tasks:
            raise RegistryError(f"{where} refers to unknown CL_Benchmark task {spec.from_task!r}")
        if not 0.0 < spec.fraction <= 1.0:
            raise RegistryError(f"{where}: fraction must be in (0, 1]")
        if name in sets:
            raise RegistryError(f"{where} is registered twice")
        sets[name] = spec
    return sets, _parse_orders(data, source, "sets", sets, "instruct")


def _load(name: str) -> Any:
    return yaml.safe_load(resources.files("migu.data").joinpath(name).read_text(encoding="utf-8"))


@cache
def _registry() -> tuple[
    dict[str, TaskSpec], dict[str, DomainSpec], dict[str, OrderSpec], dict[str, InstructionSetSpec]
]:
    tasks, orders = _parse(_load("tasks.yaml"), "migu/data/tasks.yaml")
    domains, domain_orders = _parse_domains(_load("domains.yaml"), "migu/data/domains.yaml", tasks)
    sets, set_orders = _parse_sets(_load("instructions.yaml"), "migu/data/instructions.yaml", tasks)
    all_orders: dict[str, OrderSpec] = {}
    for group in (orders, domain_orders, set_orders):
        clash = set(all_orders) & set(group)
        if clash:
            raise RegistryError(f"orders registered twice across the registry files: {sorted(clash)}")
        all_orders.update(group)
    return tasks, domains, all_orders, sets


def get_task(name: str) -> TaskSpec:
    """The task registered as ``name`` (case-insensitive); UnknownTaskError otherwise."""
    tasks, domains, _, _ = _registry()
    try:
        return tasks[_key(name)]
    except KeyError:
        if _key(name) in domains:
            raise UnknownTaskError(
                f"{name!r} is a continual pre-training domain (migu list domains), not a labelled task: "
                "it is trained in the pretrain regime (an order of domains)"
            ) from None
        raise UnknownTaskError(_unknown_message("task", name, list(tasks))) from None


def get_domain(name: str) -> DomainSpec:
    """The continual pre-training domain registered as ``name``; UnknownDomainError otherwise."""
    domains = _registry()[1]
    try:
        return domains[_key(name)]
    except KeyError:
        raise UnknownDomainError(_unknown_message("domain", name, list(domains))) from None


def get_set(name: str) -> InstructionSetSpec:
    """The instruction set registered as ``name``; UnknownSetError otherwise."""
    sets = _registry()[3]
    try:
        return sets[_key(name)]
    except KeyError:
        raise UnknownSetError(_unknown_message("instruction set", name, list(sets))) from None


def list_sets() -> list[str]:
    """Registered instruction-set names, in registry order."""
    return list(_registry()[3])


def get_order(name: str) -> OrderSpec:
    """The order registered as ``name`` (case-insensitive); UnknownOrderError otherwise."""
    orders = _registry()[2]
    try:
        return orders[_key(name)]
    except KeyError:
        raise UnknownOrderError(_unknown_message("order", name, list(orders))) from None


def list_tasks() -> list[str]:
    """Registered task names, in registry order."""
    return list(_registry()[0])


def list_domains() -> list[str]:
    """Registered domain names, in registry order."""
    return list(_registry()[1])


def list_orders(regime: str | None = None) -> list[str]:
    """Registered order names (of one regime, when given), in registry order."""
    return [n for n, o in _registry()[2].items() if regime is None or o.regime == regime]
