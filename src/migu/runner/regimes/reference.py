"""A cache of the untrained reference's end-task scores in continual pre-training.

Every pretrain run with ``eval_baseline`` finetunes each end task from the unadapted encoder. For
one seed that is the same computation in every run of a sweep (FT, FT+MIGU, EWC, DER++, DAS: the
methods act only in the MLM stages), and it is a third of a proxy run's end-task finetunes. The
cache keys a score by everything the finetune reads: a hash of the encoder's weights, the end
task's rows and labels, the model and optimisation recipe, the seed, the process layout and the
library versions, so a hit is the same computation run earlier, not a guess. Records are JSON (no
pickle); a record that does not parse or lacks a field is recomputed, never trusted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write_text

log = logging.getLogger(__name__)

FORMAT = "end-task-reference-1"  # bump when the end-task protocol changes what it computes
FIELDS = ("mf1", "acc", "correct", "steps", "seconds")


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 over every tensor of ``module``'s state dict (name, dtype, shape, raw bytes, in name
    order): two encoders hash equal only when their weights are bitwise equal."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())  # any dtype, bf16 included
    return h.hexdigest()


def rows_sha256(rows: Any) -> str:
    """sha256 of a sequence of dataclass rows (the end task's train or test examples), in order."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(dataclasses.asdict(row), sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def reference_key(**parts: Any) -> str:
    """The cache key: sha256 of the parts as canonical JSON (dataclasses as dicts) with ``FORMAT``."""

    def plain(v: Any) -> Any:
        return dataclasses.asdict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else v

    body = json.dumps(
        {"format": FORMAT, **{k: plain(v) for k, v in parts.items()}}, sort_keys=True, default=str
    )
    return hashlib.sha256(body.encode()).hexdigest()


def reference_path(cache_dir: Path, domain: str, key: str) -> Path:
    return cache_dir / "end_task_reference" / f"{domain}-{key[:24]}.json"


def load_reference(path: Path, key: str) -> dict[str, Any] | None:
    """The cached record at ``path`` if it is whole and made for ``key``; None otherwise (recompute)."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable cached reference (%s); computing it again", path, exc)
        return None
    if not isinstance(record, dict) or record.get("key") != key or any(f not in record for f in FIELDS):
        log.warning(
            "%s: cached reference does not match this run's key or lacks fields; computing again", path
        )
        return None
    return {f: record[f] for f in FIELDS}


def save_reference(path: Path, key: str, record: dict[str, Any]) -> None:
    """Write ``record`` (atomically: a killed write leaves the old file or none). A cache that cannot
    be written costs the next run a recompute, never this run: warned, not raised."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"key": key, **{f: record[f] for f in FIELDS}}))
    except OSError as exc:
        log.warning(
            "%s: could not cache the untrained reference (%s); the next run computes it again", path, exc
        )
