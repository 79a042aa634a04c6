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
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from .errors import DataError


def _bad(what: str, err: Exception) -> ValueError:
    missing = f"no {err.args[0]!r}" if isinstance(err, KeyError) else str(err)
    return DataError(f"not a task provenance record ({what}): {missing}")


class _Flat:
    """A record of plain values whose JSON is its fields in order (``_KEYS`` renames a field's
    key; a field in ``_OPTIONAL`` may be missing from saved results that predate it)."""

    _KEYS: ClassVar[dict[str, str]] = {}
    _OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {self._KEYS.get(f.name, f.name): getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Any:
        """The record saved by :meth:`to_json` (KeyError naming a missing key)."""
        kwargs = {}
        for f in fields(cls):  # type: ignore[arg-type]
            key = cls._KEYS.get(f.name, f.name)
            kwargs[f.name] = d.get(key) if f.name in cls._OPTIONAL else d[key]
        return cls(**kwargs)


@dataclass(frozen=True)
class SplitProvenance(_Flat):
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

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({"index_digest"})


@dataclass(frozen=True)
class CarveRecord(_Flat):
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

    _KEYS: ClassVar[dict[str, str]] = {"source": "from"}


@dataclass(frozen=True)
class CapRecord(_Flat):
    """A size request that did not fit what was available, and what was used instead."""

    role: str  # "train", "test" or "val"
    requested: int
    available: int
    used: int


@dataclass(frozen=True)
class ValProvenance(_Flat):
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

    _OPTIONAL: ClassVar[frozenset[str]] = frozenset({"index_digest"})


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
        """The dict results store (``per_task``): the fields in order, records as their JSON, and
        the dropped-row total before ``unlabeled_kept`` (the loader's historical key order)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "unlabeled_kept":
                out["unlabeled_dropped"] = self.unlabeled_dropped
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [v.to_json() for v in value]
            elif isinstance(value, _Flat):
                value = value.to_json()
            out[f.name] = value
        return out

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
