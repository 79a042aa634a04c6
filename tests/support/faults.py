"""Fault injection for runner tests: NaN losses and interrupts at chosen training forward calls."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from migu.models.encoder import EncoderFamily


class ForwardFaults:
    """Counts training-mode calls of ``EncoderFamily.forward`` (1-based) and injects faults at some:
    ``nan_at`` makes that call's loss NaN, ``interrupt_at`` raises KeyboardInterrupt instead."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.nan_at: set[int] = set()
        self.interrupt_at: set[int] = set()
        real = EncoderFamily.forward

        def forward(family: EncoderFamily, model: torch.nn.Module, batch: dict[str, Any]) -> Any:
            if not model.training:
                return real(family, model, batch)
            self.calls += 1
            if self.calls in self.interrupt_at:
                raise KeyboardInterrupt(f"killed at training forward call {self.calls}")
            out = real(family, model, batch)
            if self.calls in self.nan_at:
                out.loss = out.loss * float("nan")
            return out

        monkeypatch.setattr(EncoderFamily, "forward", forward)

    def reset(self) -> None:
        self.calls = 0
        self.nan_at, self.interrupt_at = set(), set()
