"""Fixtures for migu.models: tiny random models (no downloads) with a tiny in-test tokenizer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from models_testlib import TOY_ROWS, Ex, make_example, save_tiny_tokenizer, tiny_family

from migu.models import ModelFamily


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest single-threaded; on a shared CPU, extra threads mostly wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A saved ~120-token WordPiece tokenizer (see ``models_testlib.save_tiny_tokenizer``)."""
    return str(save_tiny_tokenizer(tmp_path_factory.mktemp("tiny-tokenizer")))


@pytest.fixture
def toy_examples() -> list[Ex]:
    """8 examples of a toy 2-task problem (sentiment + topic)."""
    return [make_example(*row) for row in TOY_ROWS]


@pytest.fixture
def make_family(tiny_tokenizer_dir: str) -> Callable[..., ModelFamily]:
    """``make_family(kind, tokenizer=<tiny>, label_space=..., **ModelConfig fields)``.

    A tiny random ``kind`` model; pass ``tokenizer="minilm"`` for the packaged real tokenizer.
    """

    def make(kind: str, **kwargs: Any) -> ModelFamily:
        kwargs.setdefault("tokenizer", tiny_tokenizer_dir)
        return tiny_family(kind, **kwargs)

    return make
