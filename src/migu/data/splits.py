"""A task's rows per role, step by step: the pools (both splits as shipped, or one split carved
into a disjoint train and evaluation part), the validation rows, and the seeded samples, each
recorded for the provenance."""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..validation import ValidationError, check_choice, check_int, check_number, interval, invalid
from .cl_files import (
    ROLES,
    UNLABELED,
    Row,
    TaskFiles,
    read_split,
    same_bytes,
)
from .errors import DataError
from .provenance import CapRecord, CarveRecord, ValProvenance

logger = logging.getLogger(__name__)


def rows_digest(rows: Iterable[Row]) -> str:
    """Short fingerprint of the row indices used, so results can show two runs used one split."""
    ids = ",".join(str(r.index) for r in sorted(rows, key=lambda r: r.index))
    return hashlib.sha256(ids.encode()).hexdigest()[:16]


def role_rng(seed: int, task: str, role: str) -> random.Random:
    # One stream per (seed, task, role): the train sample never depends on test_n, and a
    # string seed hashes the same in every process (unlike hash()).
    return random.Random(f"{seed}:{task}:{role}")


def cap(requested: int | None, available: int, role: str, task: str, capped: list[CapRecord]) -> int:
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


def sample(pool: list[Row], n: int, rng: random.Random) -> list[Row]:
    """``n`` rows without replacement, returned in file order (stable, easy to trace)."""
    if n >= len(pool):
        return list(pool)
    return in_file_order(rng.sample(pool, n))


def in_file_order(rows: Iterable[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: r.index)


def split_unlabeled(rows: list[Row]) -> tuple[list[Row], list[Row]]:
    labeled = [r for r in rows if r.label != UNLABELED]
    return labeled, [r for r in rows if r.label == UNLABELED]


def carve_sizes(
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
class Request:
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
def as_data_error(message: str) -> Iterator[None]:
    """A ValidationError from the package's helper inside becomes a DataError saying ``message``."""
    try:
        yield
    except ValidationError:
        raise DataError(message) from None


def check_args(name: str, req: Request) -> None:
    """The arguments, checked before any file is read, so a bad size fails at once.

    The package's validation helper decides what is valid; the DataError keeps the loader's own
    wording, which callers and tests match (``task 'agnews': train_n must be a positive int or
    None, got 0``).
    """
    with as_data_error(str(invalid("eval_split", "'test' or 'dev'", req.eval_split))):
        check_choice(req.eval_split, "eval_split", ("test", "dev"))
    for role in ("train", "test"):
        arg, value = f"{role}_n", req.size(role)
        with as_data_error(str(invalid(f"task {name!r}: {arg}", "a positive int or None", value))):
            check_int(value, arg, minimum=1, none=True)
    where = interval(0, 1, low_open=True, high_open=True)
    with as_data_error(f"eval_fraction must be in {where}, got {req.eval_fraction}"):
        check_number(req.eval_fraction, "eval_fraction", low=0, high=1, low_open=True, high_open=True)
    with as_data_error(str(invalid(f"task {name!r}: val_n", "a positive int or None", req.val_n))):
        check_int(req.val_n, "val_n", minimum=1, none=True)


@dataclass
class Pools:
    """The rows each role may draw from (before validation and sampling) and how they were obtained."""

    rows: dict[str, list[Row]]  # role -> eligible rows, in file order
    source: dict[str, str]  # role -> file name
    available: dict[str, int]  # role -> rows in that file
    dropped: dict[str, int]  # role -> "-" rows dropped
    kept_unlabeled: int = 0
    carved: CarveRecord | None = None
    capped: list[CapRecord] = field(default_factory=list)


def pools_as_shipped(found: TaskFiles, keep_unlabeled: bool) -> Pools:
    """Both splits on disk: each serves its own role. Training never keeps ``"-"`` rows (they have
    no target); evaluation keeps them only on request (the authors' protocol scores them as misses).
    """
    train_rows, train_unl = split_unlabeled(found.raw["train"])
    test_rows, test_unl = split_unlabeled(found.raw["test"])
    return Pools(
        rows={"train": train_rows, "test": found.raw["test"] if keep_unlabeled else test_rows},
        source={role: found.files[role].name for role in ROLES},
        available={role: len(found.raw[role]) for role in ROLES},
        dropped={"train": len(train_unl), "test": 0 if keep_unlabeled else len(test_unl)},
        kept_unlabeled=len(test_unl) if keep_unlabeled else 0,
    )


def distinct_sentences(rows: list[Row]) -> list[Row]:
    """The first row of each sentence: equal sentences must not land on both sides of a carving."""
    seen: set[str] = set()
    unique: list[Row] = []
    for r in rows:
        if r.sentence not in seen:
            seen.add(r.sentence)
            unique.append(r)
    return unique


CARVED_LOG = "task %s: no %s; carved %d train / %d eval rows from %s (seed %d, disjoint)"


def carve_pools(task: str, found: TaskFiles, req: Request) -> Pools:
    """One split on disk serves both roles: its distinct labelled sentences, shuffled by a seeded
    stream of their own, are cut into a disjoint evaluation part and train part.

    Carving is the only way a task without a train (or test) file can run, and a result is only as
    good as the disjointness of its splits, hence duplicates are dropped first and the cut recorded
    (``CarveRecord``). ``"-"`` rows can only be evaluation rows. Room is left in the train part for
    validation rows carved out of it later (``val_n``).
    """
    ((src_role, src_rows),) = found.raw.items()
    carved_role = "test" if src_role == "train" else "train"
    labeled, unl = split_unlabeled(src_rows)
    unique = distinct_sentences(labeled)
    capped: list[CapRecord] = []
    try:
        want = req.train_n + req.val_n if req.train_n is not None and req.val_n is not None else req.train_n
        t, h = carve_sizes(len(unique), want, req.test_n, req.eval_fraction, capped)
    except DataError as err:
        raise DataError(f"{found.files[src_role]}: {err}") from None
    order = list(unique)
    role_rng(req.seed, task, "carve").shuffle(order)
    test_part, train_part = order[:h], order[h : h + t]
    if req.keep_unlabeled:
        test_part = test_part + unl  # never usable for training, so no overlap risk
    rows = {"train": in_file_order(train_part), "test": in_file_order(test_part)}
    source, missing = found.files[src_role].name, found.files[carved_role].name
    dupes = len(labeled) - len(unique)
    record = CarveRecord(
        carved_role, source, missing, req.seed, req.eval_fraction, len(unique), t, len(rows["test"]), dupes
    )
    logger.info(CARVED_LOG, task, missing, t, h, source, req.seed)
    return Pools(
        rows=rows,
        source={role: source for role in ROLES},
        available={role: len(src_rows) for role in ROLES},
        dropped={"train": 0, "test": 0 if req.keep_unlabeled else len(unl)},
        kept_unlabeled=len(unl) if req.keep_unlabeled else 0,
        carved=record,
        capped=capped,
    )


def check_pools(task: str, found: TaskFiles, pools: Pools) -> None:
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


def val_from_train(
    task: str, pool: list[Row], val_n: int, seed: int
) -> tuple[list[Row], list[Row], CapRecord | None]:
    """Validation rows carved out of the training pool, and the training pool left after them.

    Seeded, and disjoint from the training rows by sentence text: a duplicate of a validation
    sentence leaves the training pool too, or model selection would score rows it trained on. At
    least one training row stays; a request that leaves none is capped (and the cap returned).
    """
    k = min(val_n, len(pool) - 1)
    cap = CapRecord("val", val_n, len(pool) - 1, k) if k < val_n else None
    order = list(pool)
    role_rng(seed, task, "val").shuffle(order)
    val_rows = in_file_order(order[:k])
    taken = {r.sentence for r in val_rows}
    return val_rows, [r for r in pool if r.sentence not in taken], cap


@dataclass
class Validation:
    """The validation step's result: its rows and record, and the training pool it leaves."""

    rows: list[Row]
    record: ValProvenance | None
    train_pool: list[Row]
    capped: list[CapRecord]


def take_validation(task: str, found: TaskFiles, pools: Pools, req: Request) -> Validation:
    """Validation rows for model selection (none unless ``val_n``), taken before training rows are
    sampled so that they can be kept out of the training pool.

    From dev.json when it exists and is not a byte copy of the evaluation file: in the public
    CL_Benchmark it copies test.json, and selecting on it would select on the test rows. Otherwise
    carved out of the training pool (:func:`val_from_train`).
    """
    train_pool, val_n = pools.rows["train"], req.val_n
    if val_n is None:
        return Validation([], None, train_pool, [])
    dev = found.task_dir / "dev.json"
    capped: list[CapRecord] = []
    if req.eval_split == "test" and dev.is_file() and not same_bytes(dev, found.files["test"]):
        dev_pool = split_unlabeled(read_split(dev, found.labels))[0]
        rows = sample(dev_pool, min(val_n, len(dev_pool)), role_rng(req.seed, task, "val"))
        source, pool, carved = dev.name, len(dev_pool), False
    else:
        rows, left, cap = val_from_train(task, train_pool, val_n, req.seed)
        capped += [cap] if cap is not None else []
        why = "dev.json is a copy of the evaluation file" if dev.is_file() else "no dev.json"
        source, pool, carved = f"carved from the training pool ({why})", len(train_pool), True
        train_pool = left
    overlap = len({r.sentence for r in rows} & {r.sentence for r in pools.rows["test"]})
    record = ValProvenance(source, pool, carved, val_n, len(rows), req.seed, rows_digest(rows), overlap)
    return Validation(rows, record, train_pool, capped)


def sample_roles(
    task: str, pools: Mapping[str, list[Row]], req: Request, carved: bool
) -> tuple[dict[str, list[Row]], list[CapRecord]]:
    """The train and evaluation rows: seeded draws without replacement, one stream per role, so the
    train sample never depends on ``test_n``.

    A request above its pool is capped with a warning and recorded, rather than failing: a proxy
    config stays runnable on a smaller copy. A carved split's requests were reconciled with its pool
    (and recorded) by the carving already, so they are only clipped here.
    """
    capped: list[CapRecord] = []
    chosen: dict[str, list[Row]] = {}
    for role in ROLES:
        pool, requested = pools[role], req.size(role)
        if carved:
            n = len(pool) if requested is None else min(requested, len(pool))
        else:
            n = cap(requested, len(pool), role, task, capped)
        chosen[role] = sample(pool, n, role_rng(req.seed, task, role))
    return chosen, capped
