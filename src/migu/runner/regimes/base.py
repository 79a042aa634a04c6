"""What differs between the paper's settings, and only that: what a stage of the order trains on,
and how the model is scored after it (the protocol). The loop, optimizer, MIGU, method hooks,
checkpoints and resume are the runner's, shared by every regime.

A regime is a :class:`Stages` subclass in its own module (``finetune``, ``pretrain``,
``instruct``), registered in ``regimes/__init__.py``: it says which stage names are its own
(``claims``), loads and checks their data before any model is built (``load``), builds the model
family, hands each stage's rows and recipe to the loop, and scores the model after each stage.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from accelerate import Accelerator

from ...data import TaskData
from ..config import RunConfig, TrainConfig
from ..loop import check_split
from ..state import Progress

Row = list[float | None]
Matrices = dict[str, list[Row]]
Baselines = dict[str, list[float]] | None
SaveProgress = Callable[[], None]


class Stages(ABC):
    """The stages of one run and their scoring protocol."""

    regime: ClassVar[str]
    metrics: tuple[str, ...]  # matrix names, the primary first

    def __init__(self, config: RunConfig, names: Sequence[str]) -> None:
        self.config = config
        self.names = list(names)  # stage names = matrix columns, in training order

    # the data registry listing this regime's stage names (None: it claims no ``tasks:`` list)
    registry: ClassVar[Callable[[], Sequence[str]] | None] = None

    @classmethod
    def claims(cls, names: Sequence[str]) -> bool:
        """Whether a ``tasks:`` list of these names is an order of this regime's stages."""
        known = set(cls.registry()) if cls.registry is not None else set()
        return bool(names) and all(n.lower() in known for n in names)

    @classmethod
    @abstractmethod
    def load(cls, config: RunConfig, names: Sequence[str], root: Path) -> Stages:
        """Read and check every stage's data under ``root`` (before any model loads)."""

    @property
    def primary(self) -> str:
        return self.metrics[0]

    @property
    def tasks(self) -> list[TaskData]:
        """The labelled tasks of the run (what analyses feed the model); only finetuning has them."""
        raise ValueError(f"a {self.regime} run has no finetuning tasks to analyse")

    def columns(self, metric: str) -> list[str]:
        """What a metric's matrix columns are (the stages' tasks unless a regime says otherwise)."""
        return self.names

    def task_index(self, i: int) -> int:
        """The CL task stage ``i`` belongs to (what the method hooks see); one per stage by default."""
        return i

    def task_name(self, i: int) -> str:
        """The name of that task (replay samples and adapters follow it)."""
        return self.names[i]

    @property
    def n_tasks(self) -> int:
        """How many CL tasks the order has (stages of one task count once)."""
        return len(self.names)

    def schedule(self, i: int) -> tuple[int, int] | None:
        """(position, length) of stage ``i`` in an optimization that spans several stages (its
        optimizer state and learning-rate schedule carry over), or None for a fresh one per stage."""
        return None

    def check_world(self, processes: int) -> None:
        """Refuse what ``processes`` processes cannot share (rows built per stage: the batch only)."""
        check_split(self.config.train.batch_size, processes, processes, self.names[0])

    @abstractmethod
    def build(self) -> Any:
        """Load the model family the stages train (seeded by the caller)."""

    @abstractmethod
    def train_rows(self, i: int) -> Sequence[Any]:
        """What stage ``i`` trains on (before the method adds anything)."""

    def train_config(self, i: int) -> TrainConfig:
        """The optimisation recipe of stage ``i``."""
        return self.config.train

    @abstractmethod
    def score(
        self, i: int | None, accelerator: Accelerator, progress: Progress, save: SaveProgress
    ) -> dict[str, Row]:
        """Row ``i`` of every metric's matrix (``i`` None: the untrained model's baseline). Long
        protocols record finished parts in ``progress`` and call ``save`` so a resumed run goes on
        from there."""

    @abstractmethod
    def summary(self, matrices: Matrices, baselines: Baselines) -> dict[str, Any]:
        """The regime's summary numbers of a complete run."""

    def last_correct(self) -> dict[str, dict[str, list[int]]] | None:
        """Per split and task, the 0/1 correctness of each row at the last scoring (paired bootstrap)."""
        return None

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """Where each stage's rows came from (results ``per_task``)."""

    @abstractmethod
    def data_files(self) -> dict[str, str]:
        """{path of every data file the run reads: its sha256}: a resume on changed data is refused."""
