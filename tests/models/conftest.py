"""Fixtures for migu.models: tiny random models (no downloads) with a tiny in-test tokenizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from support.examples import TOY_ROWS, Ex, make_example
from support.models import save_tiny_tokenizer, tiny_family

from migu.models import ModelFamily


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A saved ~120-token WordPiece tokenizer (see ``support.models.save_tiny_tokenizer``)."""
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
