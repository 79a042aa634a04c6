"""IncLoRA: a new LoRA adapter per task; earlier adapters frozen but still summed into the output.

Task i trains adapter ``task_i`` (and the heads); ``task_0`` .. ``task_{i-1}`` keep
``requires_grad=False`` but stay active, so training and inference both see
h = W0 x + sum_k s B_k A_k x. The structure depends only on the task indices started, so resume
(``on_task_start``/``on_task_end`` replayed for finished tasks) recreates the same adapters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import MethodNeeds, TaskContext
from .lora import LoRA, adapter_parameters


@dataclass
class IncLoRA(LoRA):
    """One adapter per task (``task_0``, ``task_1``, ...); only the current one trains.

    Same options as :class:`LoRA`. MIGU threshold 0.7 (paper appendix).
    """

    name: ClassVar[str] = "inclora"
    paper_name: ClassVar[str] = "IncLoRA"
    description: ClassVar[str] = (
        "a new LoRA adapter per task; earlier adapters frozen but still summed into the output"
    )
    default_threshold: ClassVar[float] = 0.7
    needs: ClassVar[MethodNeeds] = MethodNeeds()

    def adapter_name(self, task_index: int) -> str:
        """Adapter of task ``task_index``."""
        return f"task_{task_index}"

    def old_adapters(self, task_index: int) -> list[str]:
        """The frozen adapters of the tasks before ``task_index``."""
        return [self.adapter_name(j) for j in range(task_index)]

    def on_task_start(self, ctx: TaskContext) -> None:
        """Create this task's adapter (and any missing earlier ones, in order); train only it."""
        self._require_prepared()
        model, task_index = ctx.model, ctx.task_index
        if task_index < 0:
            raise ValueError(f"task_index must be >= 0, got {task_index}")
        for j in range(len(self._adapters), task_index + 1):
            self._add_adapter(model, self.adapter_name(j))
        active = [*self.old_adapters(task_index), self.adapter_name(task_index)]
        self._activate(model, active, trainable=self.adapter_name(task_index))

    def on_task_end(self, ctx: TaskContext) -> None:
        """Freeze the finished task's adapter: from now on it is only read."""
        super().on_task_end(ctx)
        for p in adapter_parameters(ctx.model, self.adapter_name(ctx.task_index)):
            p.requires_grad_(False)
            p.grad = None
