"""CL_Benchmark reader: validated rows, seeded sampling, disjoint carving of missing splits.

Layout: ``<root>/<category>/<task>/{train,dev,test,labels}.json``; each split is a JSON list
of ``{"sentence", "label"}`` and ``labels.json`` lists the label strings. In the public copy
``dev.json`` is a byte copy of ``test.json`` for every task that has both.

Rules the loader keeps, because a CL result is only as good as its splits:

- Every bad input is a :class:`DataError` naming the file (and row) at fault; nothing is
  skipped silently.
- MNLI-style ``"-"`` labels (no gold label) are dropped by default with a warning and the count
  in ``info``; ``keep_unlabeled=True`` keeps them in the evaluation rows (the authors'
  protocol: they always count as misses). Training rows never keep them.
- A missing split is carved out of the other one: seeded, disjoint by row (and by sentence
  text, duplicates in the pool are dropped first), and recorded in ``info["carved"]``.
- Size requests larger than what is available are capped with a warning, recorded in
  ``info["capped"]``, rather than failing: a proxy config stays runnable on a smaller copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .registry import TaskSpec, UnknownTaskError, get_task

logger = logging.getLogger(__name__)

ENV_VAR = "MIGU_DATA"
UNLABELED = "-"  # MNLI's "no gold label" marker
SPLITS = ("train", "dev", "test")
EvalSplit = Literal["test", "dev"]


class DataError(ValueError):
    """Bad or missing benchmark data; the message names the file and the problem."""


@dataclass(frozen=True)
class Example:
    """One instruction-formatted row: ``input`` goes to the model, ``label`` is the target."""

    task: str
    input: str
    sentence: str
    label: str
    options: tuple[str, ...]


@dataclass
class TaskData:
    """A task's train, evaluation (test) and validation rows, and ``info``: where every row came
    from (JSON-serializable, written into results). ``val`` is empty unless ``val_n`` was asked for.
    """

    name: str
    labels: tuple[str, ...]
    train: list[Example]
    test: list[Example]
    info: dict[str, Any] = field(default_factory=dict)
    val: list[Example] = field(default_factory=list)


@dataclass(frozen=True)
class _Row:
    index: int  # position in its source file
    sentence: str
    label: str


def format_prompt(spec: TaskSpec, sentence: str, options: Sequence[str]) -> str:
    """The O-LoRA/MIGU prompt: instruction, the options, the sentence, then ``Answer:``.

    Reproduces cmnfriend/O-LoRA ``src/uie_dataset_lora.py`` + ``src/uie_collator.py`` exactly:
    ``instruction + "\\n" + "Option: " + ", ".join(options) + " \\n" + sentence + "\\nAnswer:"``.
    An empty instruction (COPA) gives ``sentence + "\\nAnswer:"``: the sentence states its own
    question and options there.
    """
    if not spec.instruction:
        return f"{sentence}\nAnswer:"
    return f"{spec.instruction}\nOption: {', '.join(options)} \n{sentence}\nAnswer:"


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


def _read_json(path: Path) -> Any:
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


def _read_labels(path: Path) -> tuple[str, ...]:
    data = _read_json(path)
    if not isinstance(data, list) or not data or not all(isinstance(x, str) for x in data):
        raise DataError(f"{path}: expected a non-empty JSON list of label strings")
    if len(set(data)) != len(data):
        raise DataError(f"{path}: duplicate labels in {data}")
    return tuple(data)


def _read_split(path: Path, labels: tuple[str, ...]) -> list[_Row]:
    """All rows of a split, validated; ``"-"`` rows are kept here and handled per role later."""
    data = _read_json(path)
    if not isinstance(data, list):
        raise DataError(
            f"{path}: expected a JSON list of {{'sentence', 'label'}} rows, got {type(data).__name__}"
        )
    if not data:
        raise DataError(f"{path}: split is empty")
    allowed = set(labels)
    rows: list[_Row] = []
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
        rows.append(_Row(i, sentence, label))
    return rows


def _same_bytes(a: Path, b: Path) -> bool:
    """Two files with the same content (the public CL_Benchmark's dev.json copies test.json)."""
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


def _digest(rows: Iterable[_Row]) -> str:
    """Short fingerprint of the row indices used, so results can show two runs used one split."""
    ids = ",".join(str(r.index) for r in sorted(rows, key=lambda r: r.index))
    return hashlib.sha256(ids.encode()).hexdigest()[:16]


def _rng(seed: int, task: str, role: str) -> random.Random:
    # One stream per (seed, task, role): the train sample never depends on test_n, and a
    # string seed hashes the same in every process (unlike hash()).
    return random.Random(f"{seed}:{task}:{role}")


def _cap(requested: int | None, available: int, role: str, task: str, capped: list[dict[str, Any]]) -> int:
    """How many rows to take; a request above ``available`` is capped, warned and recorded."""
    if requested is None:
        return available
    if requested > available:
        logger.warning(
            "task %s: %s_n=%d requested but only %d rows available; using %d",
            task,
            role,
            requested,
            available,
            available,
        )
        capped.append({"role": role, "requested": requested, "available": available, "used": available})
        return available
    return requested


def _sample(pool: list[_Row], n: int, rng: random.Random) -> list[_Row]:
    """``n`` rows without replacement, returned in file order (stable, easy to trace)."""
    if n >= len(pool):
        return list(pool)
    return sorted(rng.sample(pool, n), key=lambda r: r.index)


def _split_unlabeled(rows: list[_Row]) -> tuple[list[_Row], list[_Row]]:
    labeled = [r for r in rows if r.label != UNLABELED]
    return labeled, [r for r in rows if r.label == UNLABELED]


def _task_dir(spec: TaskSpec, root: Path) -> Path:
    return root / spec.path


def _check_files(spec: TaskSpec, root: Path, eval_split: str) -> list[str]:
    """Problems that stop ``spec`` from loading at all (missing dir, labels, or every split)."""
    try:
        task_dir = _task_dir(spec, root)
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


def _carve_sizes(
    n: int, train_n: int | None, test_n: int | None, eval_fraction: float, capped: list[dict[str, Any]]
) -> tuple[int, int]:
    """Sizes (train part, eval part) of a lone split of ``n`` rows shared by both roles.

    Explicit sizes decide first; the side without one gets the rest of the pool; with no sizes,
    ``eval_fraction`` of the pool goes to evaluation. Requests that do not fit are scaled down
    proportionally (and recorded); each side keeps at least one row.
    """
    if n < 2:
        raise DataError(f"only {n} row(s): too few to carve a train and an evaluation part")
    if train_n is not None and test_n is not None:
        if train_n + test_n <= n:
            return train_n, n - train_n
        t = min(max(1, n * train_n // max(1, train_n + test_n)), n - 1)
        capped.append({"role": "train", "requested": train_n, "available": n, "used": t})
        capped.append({"role": "test", "requested": test_n, "available": n, "used": n - t})
        logger.warning(
            "carving: train_n=%d + test_n=%d exceed the %d rows available; capped to %d + %d",
            train_n,
            test_n,
            n,
            t,
            n - t,
        )
        return t, n - t
    if train_n is not None:
        t = min(train_n, n - 1)
        if t < train_n:
            capped.append({"role": "train", "requested": train_n, "available": n - 1, "used": t})
            logger.warning(
                "carving: train_n=%d exceeds the %d rows that leave an eval part; using %d", train_n, n - 1, t
            )
        return t, n - t
    if test_n is not None:
        h = min(test_n, n - 1)
        if h < test_n:
            capped.append({"role": "test", "requested": test_n, "available": n - 1, "used": h})
            logger.warning(
                "carving: test_n=%d exceeds the %d rows that leave a train part; using %d", test_n, n - 1, h
            )
        return n - h, h
    h = min(max(1, round(eval_fraction * n)), n - 1)
    return n - h, h


def load_task(
    name: str,
    root: str | os.PathLike[str] | None,
    *,
    train_n: int | None = None,
    test_n: int | None = None,
    seed: int = 42,
    eval_split: EvalSplit = "test",
    keep_unlabeled: bool = False,
    eval_fraction: float = 0.2,
    val_n: int | None = None,
) -> TaskData:
    """Read, validate, sample and (if a split is missing) carve one task.

    Args:
        name: registered task name (``migu.data.list_tasks()``).
        root: the CL_Benchmark directory, or ``None`` for ``$MIGU_DATA``.
        train_n, test_n: rows to draw (seeded, without replacement); ``None`` takes all.
            Requests above what is available are capped with a warning (``info["capped"]``).
        seed: sampling and carving seed; same seed, same rows.
        eval_split: file that provides the evaluation rows (``"test"`` or ``"dev"``).
        keep_unlabeled: keep ``"-"``-labelled evaluation rows (the authors' protocol) instead
            of dropping them.
        eval_fraction: share of a lone split that goes to evaluation when a split must be
            carved and neither size is given (otherwise the side without a size takes the rest).
        val_n: validation rows for model selection (None: none). They come from ``dev.json``
            when it exists and is not a copy of the evaluation file (in the public CL_Benchmark it
            is a byte copy of ``test.json``: using it would select on the test rows), else they
            are carved out of the training pool (seeded, disjoint by sentence text), before the
            training rows are sampled. Recorded in ``info["val"]``.
    """
    spec = get_task(name)
    if eval_split not in ("test", "dev"):
        raise DataError(f"eval_split must be 'test' or 'dev', got {eval_split!r}")
    for arg, value in (("train_n", train_n), ("test_n", test_n)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise DataError(f"task {name!r}: {arg} must be a positive int or None, got {value!r}")
    if not 0.0 < eval_fraction < 1.0:
        raise DataError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    data_root = resolve_data_root(root)
    problems = _check_files(spec, data_root, eval_split)
    if problems:
        raise DataError("; ".join(problems))
    task_dir = _task_dir(spec, data_root)
    labels = _read_labels(task_dir / "labels.json")

    files = {"train": task_dir / "train.json", "test": task_dir / f"{eval_split}.json"}
    present = {role: p for role, p in files.items() if p.is_file()}
    raw = {role: _read_split(p, labels) for role, p in present.items()}

    capped: list[dict[str, Any]] = []
    carved: dict[str, Any] | None = None
    dropped = {"train": 0, "test": 0}
    kept_unlabeled = 0
    pools: dict[str, list[_Row]] = {}
    sources: dict[str, str] = {}
    available: dict[str, int] = {}

    if len(present) == 2:
        # Both splits on disk: training never keeps "-" rows; evaluation keeps them on request.
        train_rows, train_unl = _split_unlabeled(raw["train"])
        test_rows, test_unl = _split_unlabeled(raw["test"])
        dropped["train"] = len(train_unl)
        if keep_unlabeled:
            test_rows = raw["test"]
            kept_unlabeled = len(test_unl)
        else:
            dropped["test"] = len(test_unl)
        pools = {"train": train_rows, "test": test_rows}
        sources = {"train": files["train"].name, "test": files["test"].name}
        available = {"train": len(raw["train"]), "test": len(raw["test"])}
    else:
        # One split serves both roles: carve a seeded, disjoint part for the missing one.
        ((src_role, src_rows),) = raw.items()
        carved_role = "test" if src_role == "train" else "train"
        labeled, unl = _split_unlabeled(src_rows)
        seen: set[str] = set()
        unique: list[_Row] = []
        for r in labeled:  # equal sentences must not land on both sides
            if r.sentence not in seen:
                seen.add(r.sentence)
                unique.append(r)
        duplicates = len(labeled) - len(unique)
        try:
            # validation rows come out of the train part: leave room for them
            want = train_n + val_n if train_n is not None and val_n is not None else train_n
            t, h = _carve_sizes(len(unique), want, test_n, eval_fraction, capped)
        except DataError as err:
            raise DataError(f"{present[src_role]}: {err}") from None
        order = list(unique)
        _rng(seed, spec.name, "carve").shuffle(order)
        test_part, train_part = order[:h], order[h : h + t]
        if keep_unlabeled:
            test_part = test_part + unl  # never usable for training, so no overlap risk
            kept_unlabeled = len(unl)
        else:
            dropped["test"] = len(unl)
        pools = {
            "train": sorted(train_part, key=lambda r: r.index),
            "test": sorted(test_part, key=lambda r: r.index),
        }
        sources = {role: files[src_role].name for role in ("train", "test")}
        available = {"train": len(src_rows), "test": len(src_rows)}
        carved = {
            "role": carved_role,
            "from": files[src_role].name,
            "missing": files[carved_role].name,
            "seed": seed,
            "eval_fraction": eval_fraction,
            "pool": len(unique),
            "train_pool": t,
            "test_pool": len(pools["test"]),
            "duplicates_dropped": duplicates,
            "disjoint": True,
        }
        logger.info(
            "task %s: no %s; carved %d train / %d eval rows from %s (seed %d, disjoint)",
            spec.name,
            files[carved_role].name,
            t,
            h,
            files[src_role].name,
            seed,
        )

    total_dropped = dropped["train"] + dropped["test"]
    if total_dropped:
        logger.warning(
            "task %s: dropped %d rows labelled %r (no gold label): %d train, %d eval; "
            "pass keep_unlabeled=True to keep the eval ones",
            spec.name,
            total_dropped,
            UNLABELED,
            dropped["train"],
            dropped["test"],
        )

    for role in ("train", "test"):
        if not pools[role]:
            raise DataError(
                f"{task_dir / sources[role]}: no labelled rows left for {role} (all {UNLABELED!r})"
            )
    val_rows: list[_Row] = []
    val_info: dict[str, Any] | None = None
    if val_n is not None:
        if isinstance(val_n, bool) or not isinstance(val_n, int) or val_n < 1:
            raise DataError(f"task {name!r}: val_n must be a positive int or None, got {val_n!r}")
        dev = task_dir / "dev.json"
        if eval_split == "test" and dev.is_file() and not _same_bytes(dev, files["test"]):
            dev_pool = _split_unlabeled(_read_split(dev, labels))[0]
            val_rows = _sample(dev_pool, min(val_n, len(dev_pool)), _rng(seed, spec.name, "val"))
            val_info = {"source": dev.name, "pool": len(dev_pool), "carved_from_train": False}
        else:
            pool = pools["train"]
            k = min(val_n, len(pool) - 1)
            if k < val_n:
                capped.append({"role": "val", "requested": val_n, "available": len(pool) - 1, "used": k})
            order = list(pool)
            _rng(seed, spec.name, "val").shuffle(order)
            val_rows = sorted(order[:k], key=lambda r: r.index)
            taken = {r.sentence for r in val_rows}
            pools["train"] = [r for r in pool if r.sentence not in taken]  # disjoint by text, duplicates too
            why = "dev.json is a copy of the evaluation file" if dev.is_file() else "no dev.json"
            val_info = {
                "source": f"carved from the training pool ({why})",
                "pool": len(pool),
                "carved_from_train": True,
            }
        val_info.update(
            requested=val_n,
            used=len(val_rows),
            seed=seed,
            index_digest=_digest(val_rows),
            overlap_with_test=len({r.sentence for r in val_rows} & {r.sentence for r in pools["test"]}),
        )
    chosen: dict[str, list[_Row]] = {}
    for role, requested in (("train", train_n), ("test", test_n)):
        pool = pools[role]
        if carved is None:
            n = _cap(requested, len(pool), role, spec.name, capped)
        else:  # _carve_sizes already reconciled (and recorded) the requests with the pool
            n = len(pool) if requested is None else min(requested, len(pool))
        chosen[role] = _sample(pool, n, _rng(seed, spec.name, role))

    overlap = len({r.sentence for r in chosen["train"]} & {r.sentence for r in chosen["test"]})
    if overlap:
        logger.warning(
            "task %s: %d sentences occur in both train and eval rows (as shipped)", spec.name, overlap
        )

    def role_info(role: str) -> dict[str, Any]:
        return {
            "source": sources[role],
            "available": available[role],
            "pool": len(pools[role]),
            "requested": train_n if role == "train" else test_n,
            "used": len(chosen[role]),
            "unlabeled_dropped": dropped[role],
            "index_digest": _digest(chosen[role]),
        }

    info: dict[str, Any] = {
        "task": spec.name,
        "category": spec.category,
        "path": spec.path,
        "root": str(data_root),
        "seed": seed,
        "eval_split": eval_split,
        "train": role_info("train"),
        "test": role_info("test"),
        "carved": carved,
        "capped": capped,
        "unlabeled_dropped": total_dropped,
        "unlabeled_kept": kept_unlabeled,
        "train_test_overlap": overlap,
        "val": val_info,
    }

    def examples(rows: list[_Row]) -> list[Example]:
        return [
            Example(spec.name, format_prompt(spec, r.sentence, labels), r.sentence, r.label, labels)
            for r in rows
        ]

    return TaskData(
        spec.name, labels, examples(chosen["train"]), examples(chosen["test"]), info, examples(val_rows)
    )


def load_tasks(
    names: Iterable[str],
    root: str | os.PathLike[str] | None,
    *,
    per_task: Mapping[str, Mapping[str, Any]] | None = None,
    **kwargs: Any,
) -> dict[str, TaskData]:
    """Load several tasks (keyword arguments as :func:`load_task`), keyed and ordered by name.

    ``per_task`` overrides ``train_n``/``test_n`` for single tasks, e.g. ``{"cb": {"test_n":
    None}}``. Every task's files are checked before any is read, and all problems are reported
    in one DataError, so a run fails before training starts rather than at task 9 of 15.
    """
    specs, problems = [], []
    for n in names:
        try:
            specs.append(get_task(n))
        except UnknownTaskError as err:  # reported with the file problems below, all at once
            problems.append(str(err))
    overrides: dict[str, dict[str, Any]] = {}
    for task, opts in (per_task or {}).items():
        bad = set(opts) - {"train_n", "test_n", "val_n"}
        if bad:
            raise DataError(
                f"per_task[{task!r}]: only train_n and test_n (and val_n) can be set per task, "
                f"not {sorted(bad)}"
            )
        overrides[get_task(task).name] = dict(opts)  # unknown names fail here, with suggestions
    unused = set(overrides) - {s.name for s in specs}
    if unused:
        logger.info("per_task settings for %s ignored: not in this task list", sorted(unused))
    data_root = resolve_data_root(root)
    eval_split = kwargs.get("eval_split", "test")
    problems += [p for spec in specs for p in _check_files(spec, data_root, eval_split)]
    if problems:
        raise DataError(
            f"{len(problems)} problem(s) with the benchmark data under {data_root}:\n  - "
            + "\n  - ".join(problems)
        )
    return {
        spec.name: load_task(spec.name, data_root, **{**kwargs, **overrides.get(spec.name, {})})
        for spec in specs
    }
