"""Reading a CL_Benchmark task's files: the data root, labels.json and each split, validated row by
row (every bad input a DataError naming the file and row), and which files a task has."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import DataError
from .registry import TaskSpec

logger = logging.getLogger(__name__)


ENV_VAR = "MIGU_DATA"


UNLABELED = "-"  # MNLI's "no gold label" marker


SPLITS = ("train", "dev", "test")


ROLES = ("train", "test")  # what a split file serves as: training rows, evaluation rows


EvalSplit = Literal["test", "dev"]


@dataclass(frozen=True)
class Row:
    index: int  # position in its source file
    sentence: str
    label: str


def resolve_data_root(path: str | os.PathLike[str] | None) -> Path:
    """The CL_Benchmark directory: ``path`` if given, else ``$MIGU_DATA``, else a DataError.

    The library never guesses a location, so a run on the wrong copy cannot start by accident.
    """
    if path is None or str(path) == "":
        env = os.environ.get(ENV_VAR, "").strip()
        if not env:
            raise DataError(
                f"no benchmark data location: pass --data PATH (the CL_Benchmark directory) "
                f"or set {ENV_VAR}=PATH"
            )
        path = env
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: benchmark data root is not a directory (expected a CL_Benchmark directory)")
    nested = root / "CL_Benchmark"
    if nested.is_dir() and not any(root.glob("*/*/labels.json")):
        raise DataError(f"{root}: no <category>/<task>/labels.json here; did you mean {nested}?")
    return root


def read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read: {err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}: malformed JSON at line {err.lineno} column {err.colno} (char {err.pos}): {err.msg}"
        ) from None
    except RecursionError:  # json gives up on arrays nested thousands deep: not a data file either
        raise DataError(f"{path}: JSON nested too deeply to be benchmark data") from None


def read_labels(path: Path) -> tuple[str, ...]:
    data = read_json(path)
    if not isinstance(data, list) or not data or not all(isinstance(x, str) for x in data):
        raise DataError(f"{path}: expected a non-empty JSON list of label strings")
    if len(set(data)) != len(data):
        raise DataError(f"{path}: duplicate labels in {data}")
    return tuple(data)


def read_split(path: Path, labels: tuple[str, ...]) -> list[Row]:
    """All rows of a split, validated; ``"-"`` rows are kept here and handled per role later."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(
            f"{path}: expected a JSON list of {{'sentence', 'label'}} rows, got {type(data).__name__}"
        )
    if not data:
        raise DataError(f"{path}: split is empty")
    allowed = set(labels)
    rows: list[Row] = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise DataError(f"{path}: row {i} is a {type(item).__name__}, not an object")
        missing = [k for k in ("sentence", "label") if k not in item]
        if missing:
            raise DataError(f"{path}: row {i} lacks {' and '.join(repr(k) for k in missing)}")
        sentence, label = item["sentence"], item["label"]
        if not isinstance(sentence, str) or not isinstance(label, str):
            raise DataError(f"{path}: row {i}: 'sentence' and 'label' must be strings")
        if label not in allowed and label != UNLABELED:
            raise DataError(
                f"{path}: row {i} has label {label!r}, not in labels.json; allowed: {list(labels)}"
            )
        rows.append(Row(i, sentence, label))
    return rows


def same_bytes(a: Path, b: Path) -> bool:
    """Two files with the same content (the public CL_Benchmark's dev.json copies test.json)."""
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


def task_path(spec: TaskSpec, root: Path) -> Path:
    return root / spec.path


def check_files(spec: TaskSpec, root: Path, eval_split: str) -> list[str]:
    """Problems that stop ``spec`` from loading at all (missing dir, labels, or every split)."""
    try:
        task_dir = task_path(spec, root)
    except DataError as err:
        return [str(err)]
    if not task_dir.is_dir():
        return [f"task {spec.name!r}: data directory {task_dir} not found"]
    problems: list[str] = []
    if not (task_dir / "labels.json").is_file():
        problems.append(f"task {spec.name!r}: {task_dir / 'labels.json'} not found")
    if not (task_dir / "train.json").is_file() and not (task_dir / f"{eval_split}.json").is_file():
        problems.append(
            f"task {spec.name!r}: neither {task_dir / 'train.json'} nor {task_dir / f'{eval_split}.json'} "
            "exists (no data for this task)"
        )
    return problems


@dataclass
class TaskFiles:
    """What the read step found: the task directory, its labels, the file that would serve each role,
    and the rows of those present (validated; ``"-"`` rows still in, each role handles them)."""

    root: Path
    task_dir: Path
    labels: tuple[str, ...]
    files: dict[str, Path]  # role -> file ("train.json", and test.json or dev.json for evaluation)
    raw: dict[str, list[Row]]  # role -> rows, for the files that exist


def read_task(spec: TaskSpec, root: str | os.PathLike[str] | None, eval_split: str) -> TaskFiles:
    """Read labels.json and whichever of the two role files exist, every row validated.

    Everything that can be wrong with the files fails here (a DataError naming the file and row),
    before any row is drawn; a missing split is not an error but the carve step's job.
    """
    data_root = resolve_data_root(root)
    problems = check_files(spec, data_root, eval_split)
    if problems:
        raise DataError("; ".join(problems))
    task_dir = task_path(spec, data_root)
    labels = read_labels(task_dir / "labels.json")
    files = {"train": task_dir / "train.json", "test": task_dir / f"{eval_split}.json"}
    raw = {role: read_split(p, labels) for role, p in files.items() if p.is_file()}
    return TaskFiles(data_root, task_dir, labels, files, raw)
