"""Where the real CL_Benchmark is, for the few tests that read it ($MIGU_DATA or ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _real_root() -> Path | None:
    env = os.environ.get("MIGU_DATA", "").strip()
    candidates = [Path(env)] if env else []
    # tests/<this file> -> the repo root is parents[1]; the shared data sits beside the repo.
    candidates.append(Path(__file__).resolve().parents[1] / "../shared/data/CL_Benchmark")
    return next((p.resolve() for p in candidates if p.is_dir()), None)


REAL_ROOT = _real_root()
needs_real_data = pytest.mark.skipif(
    REAL_ROOT is None, reason="real CL_Benchmark not found (set MIGU_DATA or add ../shared/data)"
)
