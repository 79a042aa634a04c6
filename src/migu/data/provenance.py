"""Where a CL_Benchmark task's rows came from: the typed record :func:`~.cl_benchmark.load_task`
returns as ``TaskData.provenance``.

Results store it as JSON (``results.json``'s ``per_task``), so :meth:`TaskProvenance.to_json` writes
the loader's historical dict exactly, key order included, and :meth:`TaskProvenance.from_json` reads
it back, tolerating results written before a key existed (no ``val``, no ``index_digest``). The
readers that used to dig into that dict with string keys ask the record instead: which files a run
read (:meth:`TaskProvenance.data_files`), which rows it scored (:meth:`TaskProvenance.scored_rows_digest`,
and :func:`saved_rows_digest` for a saved ``per_task`` entry that may not be a task's at all).

Standard library only: the analysis commands read saved results without loading torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError


def _bad(what: str, err: Exception) -> ValueError:
    missing = f"no {err.args[0]!r}" if isinstance(err, KeyError) else str(err)
    return DataError(f"not a task provenance record ({what}): {missing}")


@dataclass(frozen=True)
class SplitProvenance:
    """One role's rows (``train`` or ``test``, the evaluation rows): the file they came from, how many
    it had, how many were eligible (``pool``: after unlabelled rows, carving and validation), asked
    for and used, and a digest of the row indices used, so two runs can be shown to share rows."""

    source: str  # file name in the task directory (both roles name the same file when one was carved)
    available: int  # rows in that file
    pool: int
    requested: int | None
    used: int
    unlabeled_dropped: int
    index_digest: str | None = None  # None only in a record read from results that predate it

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "available": self.available,
            "pool": self.pool,
            "requested": self.requested,
            "used": self.used,
            "unlabeled_dropped": self.unlabeled_dropped,
            "index_digest": self.index_digest,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SplitProvenance:
        return cls(
            d["source"],
            d["available"],
            d["pool"],
            d["requested"],
            d["used"],
            d["unlabeled_dropped"],
            d.get("index_digest"),
        )


@dataclass(frozen=True)
class CarveRecord:
    """How a lone split on disk was shared between both roles: seeded, disjoint by sentence text
    (duplicate sentences dropped from the pool first)."""

    role: str  # the role whose file is missing ("train" or "test")
    source: str  # the file both roles were carved from (JSON key "from")
    missing: str  # the missing file
    seed: int
    eval_fraction: float
    pool: int  # labelled, distinct sentences carved
    train_pool: int
    test_pool: int
    duplicates_dropped: int
    disjoint: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "from": self.source,
            "missing": self.missing,
            "seed": self.seed,
            "eval_fraction": self.eval_fraction,
            "pool": self.pool,
            "train_pool": self.train_pool,
            "test_pool": self.test_pool,
            "duplicates_dropped": self.duplicates_dropped,
            "disjoint": self.disjoint,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CarveRecord:
        return cls(
            d["role"],
            d["from"],
            d["missing"],
            d["seed"],
            d["eval_fraction"],
            d["pool"],
            d["train_pool"],
            d["test_pool"],
            d["duplicates_dropped"],
            d["disjoint"],
        )


@dataclass(frozen=True)
class CapRecord:
    """A size request that did not fit what was available, and what was used instead."""

    role: str  # "train", "test" or "val"
    requested: int
    available: int
    used: int

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "requested": self.requested,
            "available": self.available,
            "used": self.used,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CapRecord:
        return cls(d["role"], d["requested"], d["available"], d["used"])


@dataclass(frozen=True)
class ValProvenance:
    """The validation rows: from a ``dev.json`` that is not a copy of the evaluation file, else carved
    out of the training pool (``source`` then says why, in words)."""

    source: str
    pool: int
    carved_from_train: bool
    requested: int
    used: int
    seed: int
    index_digest: str | None
    overlap_with_test: int

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "pool": self.pool,
            "carved_from_train": self.carved_from_train,
            "requested": self.requested,
            "used": self.used,
            "seed": self.seed,
            "index_digest": self.index_digest,
            "overlap_with_test": self.overlap_with_test,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ValProvenance:
        return cls(
            d["source"],
            d["pool"],
            d["carved_from_train"],
            d["requested"],
            d["used"],
            d["seed"],
            d.get("index_digest"),
            d["overlap_with_test"],
        )


@dataclass(frozen=True)
class TaskProvenance:
    """Where every row of one loaded task came from (written into results as :meth:`to_json`)."""

    task: str
    category: str
    path: str  # the task directory, relative to ``root``
    root: str  # the CL_Benchmark directory the run read
    seed: int
    eval_split: str  # the file that gave the evaluation rows: "test" or "dev"
    train: SplitProvenance
    test: SplitProvenance  # the evaluation rows, whichever file they came from
    carved: CarveRecord | None
    capped: tuple[CapRecord, ...]
    unlabeled_kept: int  # "-" evaluation rows kept (keep_unlabeled=True)
    train_test_overlap: int  # sentences in both the train and the evaluation rows, as shipped
    val: ValProvenance | None = None  # None: no validation rows asked for (or results predating them)

    @property
    def unlabeled_dropped(self) -> int:
        """``"-"`` rows dropped from both roles."""
        return self.train.unlabeled_dropped + self.test.unlabeled_dropped

    @property
    def task_dir(self) -> Path:
        return Path(self.root) / self.path

    def data_files(self) -> list[Path]:
        """The files whose rows the run uses: labels.json, each role's source file (one file when a
        split was carved), and dev.json when the validation rows were drawn from it."""
        names = ["labels.json", self.train.source, self.test.source]
        if self.val is not None and not self.val.carved_from_train:
            names.append(self.val.source)
        return [self.task_dir / n for n in dict.fromkeys(names)]

    def scored_rows_digest(self, split: str | None = None) -> str | None:
        """Digest of the rows scored on ``split``: ``"test"`` (the default: the evaluation rows,
        from whichever file ``eval_split`` names) or ``"val"``; None where there are none or the
        record predates digests."""
        if split in (None, "test"):
            return self.test.index_digest
        if split == "val":
            return self.val.index_digest if self.val is not None else None
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")

    def to_json(self) -> dict[str, Any]:
        """The dict results store (``per_task``): the loader's historical keys, in their order."""
        return {
            "task": self.task,
            "category": self.category,
            "path": self.path,
            "root": self.root,
            "seed": self.seed,
            "eval_split": self.eval_split,
            "train": self.train.to_json(),
            "test": self.test.to_json(),
            "carved": self.carved.to_json() if self.carved is not None else None,
            "capped": [c.to_json() for c in self.capped],
            "unlabeled_dropped": self.unlabeled_dropped,
            "unlabeled_kept": self.unlabeled_kept,
            "train_test_overlap": self.train_test_overlap,
            "val": self.val.to_json() if self.val is not None else None,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TaskProvenance:
        """A record read back from saved results; DataError if ``d`` is not one (a pretrain run's
        ``per_task`` holds domain records, not task provenances)."""
        if not isinstance(d, Mapping):
            raise _bad(type(d).__name__, TypeError("not a mapping"))
        try:
            return cls(
                d["task"],
                d["category"],
                d["path"],
                d["root"],
                d["seed"],
                d["eval_split"],
                SplitProvenance.from_json(d["train"]),
                SplitProvenance.from_json(d["test"]),
                CarveRecord.from_json(d["carved"]) if d["carved"] is not None else None,
                tuple(CapRecord.from_json(c) for c in d["capped"]),
                d["unlabeled_kept"],
                d["train_test_overlap"],
                ValProvenance.from_json(d["val"]) if d.get("val") is not None else None,
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise _bad(str(d.get("task", "?")), err) from None


def saved_rows_digest(entry: Any) -> str | None:
    """The evaluation rows' digest in a saved ``per_task`` entry; None for an entry that is not a
    task provenance (a pretrain run's domain record) or predates the digests.

    Lenient on purpose, unlike :meth:`TaskProvenance.from_json`: the pooling check compares what it
    can and must not fail on results written by an older version. A task provenance is recognised by
    its ``eval_split`` key; the evaluation rows sit under ``test`` whichever file gave them.
    """
    if not isinstance(entry, Mapping) or not entry.get("eval_split"):
        return None
    test = entry.get("test")
    return test.get("index_digest") if isinstance(test, Mapping) else None
