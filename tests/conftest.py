"""Fixtures every test sees: seeded torch, one intra-op thread, tiny random models (no downloads)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from support.models import build_tiny_model, random_batch
from torch import nn


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    # Tiny models gain nothing from intra-op threads, and on a shared 2-core box the threads of
    # concurrent processes fight (steps measured 20x slower): one thread keeps the suite fast.
    torch.set_num_threads(1)


@pytest.fixture
def tiny_model() -> Callable[..., nn.Module]:
    """``tiny_model(kind, head="base", seed=0, **config_overrides)``: see :func:`build_tiny_model`."""
    return build_tiny_model


@pytest.fixture
def make_batch() -> Callable[..., dict[str, torch.Tensor]]:
    """``make_batch(batch, seq, lengths=None, seed=0, pad_id=0)``: see :func:`random_batch`."""
    return random_batch
