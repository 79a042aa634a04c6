"""CL_Benchmark reader: validated rows, seeded sampling, disjoint carving of missing splits.

Layout: ``<root>/<category>/<task>/{train,dev,test,labels}.json``; each split is a JSON list
of ``{"sentence", "label"}`` and ``labels.json`` lists the label strings. In the public copy
``dev.json`` is a byte copy of ``test.json`` for every task that has both.

Rules the loader keeps, because a CL result is only as good as its splits:

- Every bad input is a :class:`DataError` naming the file (and row) at fault; nothing is
  skipped silently.
- MNLI-style ``"-"`` labels (no gold label) are dropped by default with a warning and the count
  in the provenance; ``keep_unlabeled=True`` keeps them in the evaluation rows (the authors'
  protocol: they always count as misses). Training rows never keep them.
- A missing split is carved out of the other one: seeded, disjoint by row (and by sentence
  text, duplicates in the pool are dropped first), and recorded in ``provenance.carved``.
- Size requests larger than what is available are capped with a warning, recorded in
  ``provenance.capped``, rather than failing: a proxy config stays runnable on a smaller copy.

:func:`load_task` runs one step after another, each a function below: check the arguments, read
(labels and the splits present, validated), make each role's pool (both splits as shipped, or one
split carved), take the validation rows, sample, then assemble the TaskData and its
:class:`~.provenance.TaskProvenance` (``TaskData.info`` is that record's JSON, as results store it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..validation import ValidationError, check_choice, check_int, check_number, interval, invalid
from .provenance import CapRecord, CarveRecord, SplitProvenance, TaskProvenance, ValProvenance
from .registry import TaskSpec, UnknownTaskError, get_task

logger = logging.getLogger(__name__)

ENV_VAR = "MIGU_DATA"
UNLABELED = "-"  # MNLI's "no gold label" marker
SPLITS = ("train", "dev", "test")
ROLES = ("train", "test")  # what a split file serves as: training rows, evaluation rows
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
    """A task's train, evaluation (test) and validation rows, and ``provenance``: where every row
    came from. ``val`` is empty unless ``val_n`` was asked for.

    ``provenance`` is None only for rows not read by :func:`load_task` (a pretraining domain's
    end-task directory); such data describes itself in ``notes``.
    """

    name: str
    labels: tuple[str, ...]
    train: list[Example]
    test: list[Example]
    provenance: TaskProvenance | None = None
    val: list[Example] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)  # written into ``info`` before the provenance

    @property
    def info(self) -> dict[str, Any]:
        """The JSON results store for this task (a fresh dict: edits do not stick): ``notes``, then
        ``provenance.to_json()``. Readers that need a field should ask ``provenance``."""
        return {**self.notes, **(self.provenance.to_json() if self.provenance is not None else {})}


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


def _cap(requested: int | None, available: int, role: str, task: str, capped: list[CapRecord]) -> int:
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
        capped.append(CapRecord(role, requested, available, available))
        return available
    return requested


def _sample(pool: list[_Row], n: int, rng: random.Random) -> list[_Row]:
    """``n`` rows without replacement, returned in file order (stable, easy to trace)."""
    if n >= len(pool):
        return list(pool)
    return _in_file_order(rng.sample(pool, n))


def _in_file_order(rows: Iterable[_Row]) -> list[_Row]:
    return sorted(rows, key=lambda r: r.index)


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
    n: int, train_n: int | None, test_n: int | None, eval_fraction: float, capped: list[CapRecord]
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
        capped.append(CapRecord("train", train_n, n, t))
        capped.append(CapRecord("test", test_n, n, n - t))
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
            capped.append(CapRecord("train", train_n, n - 1, t))
            logger.warning(
                "carving: train_n=%d exceeds the %d rows that leave an eval part; using %d", train_n, n - 1, t
            )
        return t, n - t
    if test_n is not None:
        h = min(test_n, n - 1)
        if h < test_n:
            capped.append(CapRecord("test", test_n, n - 1, h))
            logger.warning(
                "carving: test_n=%d exceeds the %d rows that leave a train part; using %d", test_n, n - 1, h
            )
        return n - h, h
    h = min(max(1, round(eval_fraction * n)), n - 1)
    return n - h, h


@dataclass(frozen=True)
class _Request:
    """What :func:`load_task` was asked for, as every step reads it."""

    train_n: int | None
    test_n: int | None
    val_n: int | None
    seed: int
    eval_split: str
    keep_unlabeled: bool
    eval_fraction: float

    def size(self, role: str) -> int | None:
        """The rows requested for ``role`` (``train``, ``test`` or ``val``)."""
        return {"train": self.train_n, "test": self.test_n, "val": self.val_n}[role]


@contextmanager
def _reworded(message: str) -> Iterator[None]:
    """A ValidationError from the package's helper inside becomes a DataError saying ``message``."""
    try:
        yield
    except ValidationError:
        raise DataError(message) from None


def _check_args(name: str, req: _Request) -> None:
    """The arguments, checked before any file is read, so a bad size fails at once.

    The package's validation helper decides what is valid; the DataError keeps the loader's own
    wording, which callers and tests match (``task 'agnews': train_n must be a positive int or
    None, got 0``).
    """
    with _reworded(str(invalid("eval_split", "'test' or 'dev'", req.eval_split))):
        check_choice(req.eval_split, "eval_split", ("test", "dev"))
    for role in ("train", "test"):
        arg, value = f"{role}_n", req.size(role)
        with _reworded(str(invalid(f"task {name!r}: {arg}", "a positive int or None", value))):
            check_int(value, arg, minimum=1, none=True)
    where = interval(0, 1, low_open=True, high_open=True)
    with _reworded(f"eval_fraction must be in {where}, got {req.eval_fraction}"):
        check_number(req.eval_fraction, "eval_fraction", low=0, high=1, low_open=True, high_open=True)
    with _reworded(str(invalid(f"task {name!r}: val_n", "a positive int or None", req.val_n))):
        check_int(req.val_n, "val_n", minimum=1, none=True)


@dataclass
class _TaskFiles:
    """What the read step found: the task directory, its labels, the file that would serve each role,
    and the rows of those present (validated; ``"-"`` rows still in, each role handles them)."""

    root: Path
    task_dir: Path
    labels: tuple[str, ...]
    files: dict[str, Path]  # role -> file ("train.json", and test.json or dev.json for evaluation)
    raw: dict[str, list[_Row]]  # role -> rows, for the files that exist


def _read_task(spec: TaskSpec, root: str | os.PathLike[str] | None, eval_split: str) -> _TaskFiles:
    """Read labels.json and whichever of the two role files exist, every row validated.

    Everything that can be wrong with the files fails here (a DataError naming the file and row),
    before any row is drawn; a missing split is not an error but the carve step's job.
    """
    data_root = resolve_data_root(root)
    problems = _check_files(spec, data_root, eval_split)
    if problems:
        raise DataError("; ".join(problems))
    task_dir = _task_dir(spec, data_root)
    labels = _read_labels(task_dir / "labels.json")
    files = {"train": task_dir / "train.json", "test": task_dir / f"{eval_split}.json"}
    raw = {role: _read_split(p, labels) for role, p in files.items() if p.is_file()}
    return _TaskFiles(data_root, task_dir, labels, files, raw)


@dataclass
class _Pools:
    """The rows each role may draw from (before validation and sampling) and how they were obtained."""

    rows: dict[str, list[_Row]]  # role -> eligible rows, in file order
    source: dict[str, str]  # role -> file name
    available: dict[str, int]  # role -> rows in that file
    dropped: dict[str, int]  # role -> "-" rows dropped
    kept_unlabeled: int = 0
    carved: CarveRecord | None = None
    capped: list[CapRecord] = field(default_factory=list)


def _pools_as_shipped(found: _TaskFiles, keep_unlabeled: bool) -> _Pools:
    """Both splits on disk: each serves its own role. Training never keeps ``"-"`` rows (they have
    no target); evaluation keeps them only on request (the authors' protocol scores them as misses).
    """
    train_rows, train_unl = _split_unlabeled(found.raw["train"])
    test_rows, test_unl = _split_unlabeled(found.raw["test"])
    return _Pools(
        rows={"train": train_rows, "test": found.raw["test"] if keep_unlabeled else test_rows},
        source={role: found.files[role].name for role in ROLES},
        available={role: len(found.raw[role]) for role in ROLES},
        dropped={"train": len(train_unl), "test": 0 if keep_unlabeled else len(test_unl)},
        kept_unlabeled=len(test_unl) if keep_unlabeled else 0,
    )


def _distinct_sentences(rows: list[_Row]) -> list[_Row]:
    """The first row of each sentence: equal sentences must not land on both sides of a carving."""
    seen: set[str] = set()
    unique: list[_Row] = []
    for r in rows:
        if r.sentence not in seen:
            seen.add(r.sentence)
            unique.append(r)
    return unique


_CARVED = "task %s: no %s; carved %d train / %d eval rows from %s (seed %d, disjoint)"


def _carve_pools(task: str, found: _TaskFiles, req: _Request) -> _Pools:
    """One split on disk serves both roles: its distinct labelled sentences, shuffled by a seeded
    stream of their own, are cut into a disjoint evaluation part and train part.

    Carving is the only way a task without a train (or test) file can run, and a result is only as
    good as the disjointness of its splits, hence duplicates are dropped first and the cut recorded
    (``CarveRecord``). ``"-"`` rows can only be evaluation rows. Room is left in the train part for
    validation rows carved out of it later (``val_n``).
    """
    ((src_role, src_rows),) = found.raw.items()
    carved_role = "test" if src_role == "train" else "train"
    labeled, unl = _split_unlabeled(src_rows)
    unique = _distinct_sentences(labeled)
    capped: list[CapRecord] = []
    try:
        want = req.train_n + req.val_n if req.train_n is not None and req.val_n is not None else req.train_n
        t, h = _carve_sizes(len(unique), want, req.test_n, req.eval_fraction, capped)
    except DataError as err:
        raise DataError(f"{found.files[src_role]}: {err}") from None
    order = list(unique)
    _rng(req.seed, task, "carve").shuffle(order)
    test_part, train_part = order[:h], order[h : h + t]
    if req.keep_unlabeled:
        test_part = test_part + unl  # never usable for training, so no overlap risk
    rows = {"train": _in_file_order(train_part), "test": _in_file_order(test_part)}
    source, missing = found.files[src_role].name, found.files[carved_role].name
    dupes = len(labeled) - len(unique)
    record = CarveRecord(
        carved_role, source, missing, req.seed, req.eval_fraction, len(unique), t, len(rows["test"]), dupes
    )
    logger.info(_CARVED, task, missing, t, h, source, req.seed)
    return _Pools(
        rows=rows,
        source={role: source for role in ROLES},
        available={role: len(src_rows) for role in ROLES},
        dropped={"train": 0, "test": 0 if req.keep_unlabeled else len(unl)},
        kept_unlabeled=len(unl) if req.keep_unlabeled else 0,
        carved=record,
        capped=capped,
    )


def _check_pools(task: str, found: _TaskFiles, pools: _Pools) -> None:
    """Warn about the ``"-"`` rows dropped (a silent drop would change what a score means), and fail
    when a role has no labelled row left to draw from."""
    total = pools.dropped["train"] + pools.dropped["test"]
    if total:
        logger.warning(
            "task %s: dropped %d rows labelled %r (no gold label): %d train, %d eval; "
            "pass keep_unlabeled=True to keep the eval ones",
            task,
            total,
            UNLABELED,
            pools.dropped["train"],
            pools.dropped["test"],
        )
    for role in ROLES:
        if not pools.rows[role]:
            raise DataError(
                f"{found.task_dir / pools.source[role]}: no labelled rows left for {role} (all {UNLABELED!r})"
            )


def _val_from_train(
    task: str, pool: list[_Row], val_n: int, seed: int
) -> tuple[list[_Row], list[_Row], CapRecord | None]:
    """Validation rows carved out of the training pool, and the training pool left after them.

    Seeded, and disjoint from the training rows by sentence text: a duplicate of a validation
    sentence leaves the training pool too, or model selection would score rows it trained on. At
    least one training row stays; a request that leaves none is capped (and the cap returned).
    """
    k = min(val_n, len(pool) - 1)
    cap = CapRecord("val", val_n, len(pool) - 1, k) if k < val_n else None
    order = list(pool)
    _rng(seed, task, "val").shuffle(order)
    val_rows = _in_file_order(order[:k])
    taken = {r.sentence for r in val_rows}
    return val_rows, [r for r in pool if r.sentence not in taken], cap


@dataclass
class _Validation:
    """The validation step's result: its rows and record, and the training pool it leaves."""

    rows: list[_Row]
    record: ValProvenance | None
    train_pool: list[_Row]
    capped: list[CapRecord]


def _take_validation(task: str, found: _TaskFiles, pools: _Pools, req: _Request) -> _Validation:
    """Validation rows for model selection (none unless ``val_n``), taken before training rows are
    sampled so that they can be kept out of the training pool.

    From dev.json when it exists and is not a byte copy of the evaluation file: in the public
    CL_Benchmark it copies test.json, and selecting on it would select on the test rows. Otherwise
    carved out of the training pool (:func:`_val_from_train`).
    """
    train_pool, val_n = pools.rows["train"], req.val_n
    if val_n is None:
        return _Validation([], None, train_pool, [])
    dev = found.task_dir / "dev.json"
    capped: list[CapRecord] = []
    if req.eval_split == "test" and dev.is_file() and not _same_bytes(dev, found.files["test"]):
        dev_pool = _split_unlabeled(_read_split(dev, found.labels))[0]
        rows = _sample(dev_pool, min(val_n, len(dev_pool)), _rng(req.seed, task, "val"))
        source, pool, carved = dev.name, len(dev_pool), False
    else:
        rows, left, cap = _val_from_train(task, train_pool, val_n, req.seed)
        capped += [cap] if cap is not None else []
        why = "dev.json is a copy of the evaluation file" if dev.is_file() else "no dev.json"
        source, pool, carved = f"carved from the training pool ({why})", len(train_pool), True
        train_pool = left
    overlap = len({r.sentence for r in rows} & {r.sentence for r in pools.rows["test"]})
    record = ValProvenance(source, pool, carved, val_n, len(rows), req.seed, _digest(rows), overlap)
    return _Validation(rows, record, train_pool, capped)


def _sample_roles(
    task: str, pools: Mapping[str, list[_Row]], req: _Request, carved: bool
) -> tuple[dict[str, list[_Row]], list[CapRecord]]:
    """The train and evaluation rows: seeded draws without replacement, one stream per role, so the
    train sample never depends on ``test_n``.

    A request above its pool is capped with a warning and recorded, rather than failing: a proxy
    config stays runnable on a smaller copy. A carved split's requests were reconciled with its pool
    (and recorded) by the carving already, so they are only clipped here.
    """
    capped: list[CapRecord] = []
    chosen: dict[str, list[_Row]] = {}
    for role in ROLES:
        pool, requested = pools[role], req.size(role)
        if carved:
            n = len(pool) if requested is None else min(requested, len(pool))
        else:
            n = _cap(requested, len(pool), role, task, capped)
        chosen[role] = _sample(pool, n, _rng(req.seed, task, role))
    return chosen, capped


def _examples(spec: TaskSpec, rows: list[_Row], labels: tuple[str, ...]) -> list[Example]:
    return [
        Example(spec.name, format_prompt(spec, r.sentence, labels), r.sentence, r.label, labels) for r in rows
    ]


def _assemble(
    spec: TaskSpec,
    found: _TaskFiles,
    pools: _Pools,
    val: _Validation,
    chosen: Mapping[str, list[_Row]],
    capped: list[CapRecord],
    req: _Request,
) -> TaskData:
    """The TaskData: the chosen rows as prompts, and the provenance record of how each was chosen.

    Sentences found in both the train and the evaluation rows can only come from the files as
    shipped (carving is disjoint): they are counted and warned about, not removed.
    """
    overlap = len({r.sentence for r in chosen["train"]} & {r.sentence for r in chosen["test"]})
    if overlap:
        logger.warning(
            "task %s: %d sentences occur in both train and eval rows (as shipped)", spec.name, overlap
        )
    left = {"train": val.train_pool, "test": pools.rows["test"]}
    split = {
        role: SplitProvenance(
            pools.source[role],
            pools.available[role],
            len(left[role]),
            req.size(role),
            len(chosen[role]),
            pools.dropped[role],
            _digest(chosen[role]),
        )
        for role in ROLES
    }
    provenance = TaskProvenance(
        task=spec.name,
        category=spec.category,
        path=spec.path,
        root=str(found.root),
        seed=req.seed,
        eval_split=req.eval_split,
        train=split["train"],
        test=split["test"],
        carved=pools.carved,
        capped=tuple(capped),
        unlabeled_kept=pools.kept_unlabeled,
        train_test_overlap=overlap,
        val=val.record,
    )
    return TaskData(
        spec.name,
        found.labels,
        _examples(spec, chosen["train"], found.labels),
        _examples(spec, chosen["test"], found.labels),
        provenance=provenance,
        val=_examples(spec, val.rows, found.labels),
    )


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
            Requests above what is available are capped with a warning (``provenance.capped``).
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
            training rows are sampled. Recorded in ``provenance.val``.
    """
    spec = get_task(name)
    req = _Request(train_n, test_n, val_n, seed, eval_split, keep_unlabeled, eval_fraction)
    _check_args(name, req)
    found = _read_task(spec, root, eval_split)
    one_split = len(found.raw) == 1
    pools = _carve_pools(spec.name, found, req) if one_split else _pools_as_shipped(found, keep_unlabeled)
    _check_pools(spec.name, found, pools)
    val = _take_validation(spec.name, found, pools, req)
    left = {"train": val.train_pool, "test": pools.rows["test"]}
    chosen, sample_caps = _sample_roles(spec.name, left, req, carved=one_split)
    return _assemble(spec, found, pools, val, chosen, [*pools.capped, *val.capped, *sample_caps], req)


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
