"""Continual-learning benchmarks: the task/order registry and the CL_Benchmark reader."""

from .data import (
    ENV_VAR,
    UNLABELED,
    DataError,
    Example,
    TaskData,
    format_prompt,
    load_task,
    load_tasks,
    resolve_data_root,
)
from .registry import (
    OrderSpec,
    RegistryError,
    TaskSpec,
    UnknownNameError,
    UnknownOrderError,
    UnknownTaskError,
    get_order,
    get_task,
    list_orders,
    list_tasks,
)

__all__ = [
    "ENV_VAR",
    "UNLABELED",
    "DataError",
    "Example",
    "OrderSpec",
    "RegistryError",
    "TaskData",
    "TaskSpec",
    "UnknownNameError",
    "UnknownOrderError",
    "UnknownTaskError",
    "format_prompt",
    "get_order",
    "get_task",
    "list_orders",
    "list_tasks",
    "load_task",
    "load_tasks",
    "resolve_data_root",
]
