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

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .cl_files import (
    ROLES,
    EvalSplit,
    Row,
    TaskFiles,
    check_files,
    read_task,
    resolve_data_root,
)
from .errors import DataError
from .provenance import CapRecord, SplitProvenance, TaskProvenance
from .registry import TaskSpec, UnknownTaskError, get_task
from .splits import (
    Pools,
    Request,
    Validation,
    carve_pools,
    check_args,
    check_pools,
    pools_as_shipped,
    rows_digest,
    sample_roles,
    take_validation,
)

logger = logging.getLogger(__name__)


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


def _examples(spec: TaskSpec, rows: list[Row], labels: tuple[str, ...]) -> list[Example]:
    return [
        Example(spec.name, format_prompt(spec, r.sentence, labels), r.sentence, r.label, labels) for r in rows
    ]


def _assemble(
    spec: TaskSpec,
    found: TaskFiles,
    pools: Pools,
    val: Validation,
    chosen: Mapping[str, list[Row]],
    capped: list[CapRecord],
    req: Request,
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
            rows_digest(chosen[role]),
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
    req = Request(train_n, test_n, val_n, seed, eval_split, keep_unlabeled, eval_fraction)
    check_args(name, req)
    found = read_task(spec, root, eval_split)
    one_split = len(found.raw) == 1
    pools = carve_pools(spec.name, found, req) if one_split else pools_as_shipped(found, keep_unlabeled)
    check_pools(spec.name, found, pools)
    val = take_validation(spec.name, found, pools, req)
    left = {"train": val.train_pool, "test": pools.rows["test"]}
    chosen, sample_caps = sample_roles(spec.name, left, req, carved=one_split)
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
    problems += [p for spec in specs for p in check_files(spec, data_root, eval_split)]
    if problems:
        raise DataError(
            f"{len(problems)} problem(s) with the benchmark data under {data_root}:\n  - "
            + "\n  - ".join(problems)
        )
    return {
        spec.name: load_task(spec.name, data_root, **{**kwargs, **overrides.get(spec.name, {})})
        for spec in specs
    }
