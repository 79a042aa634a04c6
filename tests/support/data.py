"""Small generated CL_Benchmark trees (the real layout, made-up rows) and where the real one is."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

AG_LABELS = ["World", "Sports", "Business", "Science or Technology"]
AMAZON_LABELS = ["very negative", "negative", "neutral", "positive", "very positive"]
# One keyword per label: a tiny model can learn these in a few steps.
KEYWORDS = {
    "World": "summit",
    "Sports": "goal",
    "Business": "shares",
    "Science or Technology": "chip",
    "very negative": "awful",
    "negative": "bad",
    "neutral": "okay",
    "positive": "good",
    "very positive": "superb",
}
TASK_DIRS = {"agnews": "TC/agnews", "amazon": "SC/amazon"}


def rows(prefix: str, n: int, labels: Sequence[str]) -> list[dict[str, str]]:
    """``n`` rows cycling through ``labels``, each sentence carrying its label's keyword."""
    return [
        {
            "sentence": f"{prefix} {i} {KEYWORDS[labels[i % len(labels)]]} text",
            "label": labels[i % len(labels)],
        }
        for i in range(n)
    ]


def write_benchmark(
    root: Path,
    n_train: int = 48,
    n_test: int = 24,
    labels: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """agnews (TC/agnews) and amazon (SC/amazon) in CL_Benchmark layout; ``labels`` per task."""
    labels = {"agnews": AG_LABELS, "amazon": AMAZON_LABELS, **(labels or {})}
    for task, rel in TASK_DIRS.items():
        d = root / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "labels.json").write_text(json.dumps(list(labels[task])))
        for split, n in (("train", n_train), ("test", n_test)):
            (d / f"{split}.json").write_text(json.dumps(rows(f"{rel} {split}", n, labels[task])))
    return root


def _real_root() -> Path | None:
    env = os.environ.get("MIGU_DATA", "").strip()
    candidates = [Path(env)] if env else []
    # tests/support/<this file> -> the repo root is parents[2]; the shared data sits beside the repo.
    candidates.append(Path(__file__).resolve().parents[2] / "../shared/data/CL_Benchmark")
    return next((p.resolve() for p in candidates if p.is_dir()), None)


REAL_ROOT = _real_root()
needs_real_data = pytest.mark.skipif(
    REAL_ROOT is None, reason="real CL_Benchmark not found (set MIGU_DATA or add ../shared/data)"
)


# --- continual pre-training: a DAS-layout data root (ContinualLM's corpus paths) ------------------
DAS_CORPUS = {"restaurant": "yelp_restaurant.txt", "acl": "acl_anthology.txt", "ai": "ai_corpus.txt"}
_DAS_WORDS = {
    "restaurant": ["food", "table", "waiter", "menu", "dinner"],
    "acl": ["parser", "corpus", "tagger", "syntax", "lexicon"],
    "ai": ["agent", "planner", "search", "robot", "reward"],
}
DAS_LABELS = ["negative", "positive"]


def write_das(
    root: Path, domains: Sequence[str] = ("restaurant", "acl"), docs: int = 40, n: int = 16
) -> Path:
    """Corpora (one document per line) and JSONL end tasks in the layout domains.yaml expects."""
    for d in domains:
        words = _DAS_WORDS[d]
        lines = [" ".join(words[(i + k) % len(words)] for k in range(12)) for i in range(docs)]
        path = root / DAS_CORPUS[d]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        end = root / "end_tasks" / d
        end.mkdir(parents=True, exist_ok=True)
        for split, count in (("train", n), ("test", n // 2)):
            rows = [
                {"text": f"{words[i % 5]} is {'good' if i % 2 else 'bad'}", "label": DAS_LABELS[i % 2]}
                for i in range(count)
            ]
            (end / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
