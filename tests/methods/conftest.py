"""Fixtures for the baselines' tests: tiny random model families (a ~120-token tokenizer, no downloads)
and task contexts wired to a family's collate and forward, as the runner builds them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from support.examples import TOY_ROWS, Ex, make_example
from support.models import save_tiny_tokenizer, tiny_family
from torch import nn

from migu.methods import TaskContext
from migu.models import ModelFamily


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny_tokenizer(tmp_path_factory.mktemp("tiny-tokenizer")))


@pytest.fixture
def make_family(tokenizer_dir: str) -> Callable[..., ModelFamily]:
    """``make_family(kind)``: a tiny random ``kind`` model ("bert", "t5", "llama") in its family."""
    return lambda kind, **kw: tiny_family(kind, tokenizer=tokenizer_dir, **kw)


@pytest.fixture
def rows() -> list[Ex]:
    """8 toy rows (sentiment + topic) shaped like the benchmark's Example."""
    return [make_example(*r) for r in TOY_ROWS]


def _family_ctx(
    family: ModelFamily,
    i: int,
    examples: Sequence[Any],
    model: nn.Module | None = None,
    rebuilding: bool = False,
    n_tasks: int | None = None,
    batch_size: int = 4,
) -> TaskContext:
    """Task ``i`` as the runner hands it to a method: the family's forward and collate on ``model``."""
    return TaskContext(
        model=family.model if model is None else model,
        task_index=i,
        task_name=f"task{i}",
        examples=list(examples),
        rebuilding=rebuilding,
        forward=family.forward,
        collate=family.collate,
        batch_size=batch_size,
        n_tasks=n_tasks,
    )


@pytest.fixture
def family_ctx() -> Callable[..., TaskContext]:
    """``family_ctx(family, i, examples, model=None, rebuilding=False, n_tasks=None, batch_size=4)``."""
    return _family_ctx
