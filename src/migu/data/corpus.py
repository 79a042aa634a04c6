"""Domain corpora and end tasks of continual pre-training: reading, validation, blocks, cache.

A domain (``domains.yaml``) has a corpus and an end task. :func:`load_domain` reads and checks both
before any model loads (files present, non-empty, UTF-8, labels consistent; the corpus's content
hash recorded); :func:`corpus_blocks` then tokenizes the corpus and groups it into fixed-length
blocks the way Hugging Face's ``run_mlm`` recipe does (every document tokenized with its special
tokens, all concatenated, cut into ``block_size`` pieces, the remainder dropped), cached on disk
under a key of the tokenizer, the corpus hash and the block size, so a rerun does not tokenize
again and a changed file or tokenizer makes a new entry.

Corpus files are read with the ``datasets`` library (``load_dataset("text" | "json",
data_files=...)``). A corpus carved from a CL_Benchmark task takes the task's rows that its own end
task does not use (disjoint by sentence text, seeded), and records the counts.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from .cl_benchmark import Example, TaskData, load_task
from .cl_files import SPLITS, read_labels, read_split
from .errors import DataError
from .registry import DomainSpec, EndTaskSpec, get_domain, get_task

log = logging.getLogger(__name__)

CACHE_ENV = "MIGU_CACHE"
_READ_CHUNK = 1 << 20


class TokenizerLike(Protocol):
    """The part of a Hugging Face tokenizer the block builder uses."""

    name_or_path: str

    def __call__(self, text: list[str], **kwargs: Any) -> Any: ...


@dataclass
class CorpusFile:
    """One corpus file: its path, size and content hash (checked UTF-8 while hashing)."""

    path: Path
    bytes: int
    sha256: str


@dataclass
class DomainData:
    """A domain as a run uses it: where the corpus is (or its texts), and the end task's rows."""

    name: str
    files: list[CorpusFile]
    texts: list[str] | None  # carved corpora hold their texts; file corpora are read when blocked
    text_format: str
    text_field: str
    end_task: TaskData
    end_spec: EndTaskSpec
    info: dict[str, Any] = field(default_factory=dict)
    source_files: list[Path] = field(default_factory=list)  # end-task / carved-corpus files read

    @property
    def fingerprint(self) -> str:
        """Hash of the corpus content (files' hashes, or the carved texts)."""
        h = hashlib.sha256()
        if self.texts is not None:
            for t in self.texts:
                h.update(t.encode())
                h.update(b"\0")
        for f in self.files:
            h.update(f.sha256.encode())
        return h.hexdigest()[:16]


@dataclass
class Blocks:
    """Fixed-length token blocks of a corpus: [n, block_size] ids and special-token flags."""

    input_ids: torch.Tensor  # [n, L] int64
    special_tokens_mask: torch.Tensor  # [n, L] bool

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        """One block as the MLM collator takes it (lists, so the collator pads and masks)."""
        return {
            "input_ids": self.input_ids[i].tolist(),
            "special_tokens_mask": self.special_tokens_mask[i].int().tolist(),
        }

    def rows(self) -> list[dict[str, list[int]]]:
        return [self[i] for i in range(len(self))]


# ---------------------------------------------------------------------------- reading + checks
def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (read in 1 MB chunks)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_READ_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _hash_utf8(path: Path) -> CorpusFile:
    """sha256 of a file, checking on the way that it is non-empty UTF-8 (one pass)."""
    if not path.is_file():
        raise DataError(f"{path}: corpus file not found")
    h = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    size = 0
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(_READ_CHUNK):
                h.update(chunk)
                decoder.decode(chunk)
                size += len(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not UTF-8 text (byte {size + err.start} of the chunk read: {err.reason})"
        ) from None
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err}") from None
    if size == 0:
        raise DataError(f"{path}: corpus file is empty")
    return CorpusFile(path, size, h.hexdigest())


def _jsonl_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {n}: malformed JSON ({err.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or "label" not in row:
            raise DataError(f"{path}: line {n}: needs a 'text' string and a 'label'")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _examples(task: str, rows: Sequence[tuple[str, str]], labels: tuple[str, ...]) -> list[Example]:
    """End-task rows as Examples: the raw text is the model input (no instruction), as ContinualLM."""
    return [Example(task, text, text, label, labels) for text, label in rows]


def _end_task_from_dir(domain: str, spec: EndTaskSpec, root: Path) -> TaskData:
    assert spec.path is not None
    d = root / spec.path
    if not d.is_dir():
        raise DataError(f"domain {domain!r}: end-task directory {d} not found")
    name = f"{domain}/end_task"
    if spec.format == "cl_benchmark":
        labels = read_labels(d / "labels.json")
        split = {role: read_split(d / f"{role}.json", labels) for role in ("train", "test")}
        rows = {role: [(r.sentence, r.label) for r in split[role]] for role in split}
    else:
        raw = {role: _jsonl_rows(d / f"{role}.jsonl") for role in ("train", "test")}
        labels_file = d / "labels.json"
        labels = (
            read_labels(labels_file)
            if labels_file.is_file()
            else tuple(sorted({str(r["label"]) for r in raw["train"]}))
        )
        rows = {}
        for role, rs in raw.items():
            bad = sorted({str(r["label"]) for r in rs} - set(labels))
            if bad:
                raise DataError(
                    f"{d / f'{role}.jsonl'}: labels {bad} not among the task's labels {list(labels)}"
                )
            rows[role] = [(r["text"], str(r["label"])) for r in rs]
    notes = {"source": str(d), "format": spec.format, "train": len(rows["train"]), "test": len(rows["test"])}
    return TaskData(
        name,
        labels,
        _examples(name, rows["train"], labels),
        _examples(name, rows["test"], labels),
        notes=notes,
    )


def _end_task_from_cl(domain: str, spec: EndTaskSpec, root: Path, seed: int) -> TaskData:
    assert spec.task is not None
    src = load_task(spec.task, root, train_n=spec.train_n, test_n=spec.test_n, seed=seed)
    name = f"{domain}/end_task"
    train = [(e.sentence, e.label) for e in src.train]
    test = [(e.sentence, e.label) for e in src.test]
    return TaskData(
        name,
        src.labels,
        _examples(name, train, src.labels),
        _examples(name, test, src.labels),
        provenance=src.provenance,  # info: {"source_task", then the task's provenance}, as results store it
        notes={"source_task": spec.task},
    )


def _carved_corpus(
    domain: str, task: str, rows: int | None, root: Path, end: TaskData, seed: int
) -> tuple[list[str], dict[str, Any]]:
    """The task's rows (every split file, deduplicated by text) not used by the end task, sampled."""
    spec = get_task(task)
    d = root / spec.path
    labels = read_labels(d / "labels.json")
    pool: dict[str, None] = {}
    files = []
    for split in SPLITS:
        path = d / f"{split}.json"
        if path.is_file():
            files.append(path.name)
            for r in read_split(path, labels):
                pool.setdefault(r.sentence, None)
    used = {e.sentence for e in end.train} | {e.sentence for e in end.test}
    spare = [t for t in pool if t not in used]
    n = len(spare) if rows is None else min(rows, len(spare))
    if rows is not None and n < rows:
        log.warning("domain %s: %d corpus rows requested, %d left beside the end task", domain, rows, n)
    texts = sorted(random.Random(f"{seed}:{domain}:corpus").sample(spare, n)) if n < len(spare) else spare
    overlap = len(set(texts) & used)
    if overlap:  # impossible by construction: a bug, not bad data
        raise AssertionError(f"domain {domain}: {overlap} corpus rows overlap the end task")
    info = {
        "from_task": task,
        "files": files,
        "pool": len(pool),
        "end_task_rows": len(used),
        "requested": rows,
        "used": n,
        "disjoint_from_end_task": True,
        "seed": seed,
    }
    return texts, info


def load_domain(name: str, root: str | os.PathLike[str], seed: int = 42) -> DomainData:
    """Read and check a domain's corpus and end task (no tokenizer needed; nothing is trained)."""
    spec: DomainSpec = get_domain(name)
    root = Path(root)
    end = (
        _end_task_from_dir(spec.name, spec.end_task, root)
        if spec.end_task.path is not None
        else _end_task_from_cl(spec.name, spec.end_task, root, seed)
    )
    corpus = spec.corpus
    if corpus.from_task:
        texts, info = _carved_corpus(spec.name, corpus.from_task, corpus.rows, root, end, seed)
        files: list[CorpusFile] = []
    else:
        paths = [root / f for f in corpus.files]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise DataError(
                f"domain {spec.name!r}: corpus file(s) not found: {', '.join(missing)} (the DAS corpora are "
                "not shipped: point --data at a directory with ContinualLM's data layout)"
            )
        files = [_hash_utf8(p) for p in paths]
        texts = None
        info = {"files": [{"path": str(f.path), "bytes": f.bytes, "sha256": f.sha256} for f in files]}
    data = DomainData(spec.name, files, texts, corpus.format, corpus.text_field, end, spec.end_task, info)
    data.info["fingerprint"] = data.fingerprint
    data.source_files = _source_files(spec, root)
    return data


def _source_files(spec: DomainSpec, root: Path) -> list[Path]:
    """The labelled files a domain reads besides its corpus files (end task, carved corpus source)."""
    out: list[Path] = []
    for task in {spec.corpus.from_task, spec.end_task.task} - {None}:
        d = root / get_task(str(task)).path
        out += [d / f for f in ("labels.json", *(f"{s}.json" for s in SPLITS)) if (d / f).is_file()]
    if spec.end_task.path is not None:
        d = root / spec.end_task.path
        out += sorted(p for p in d.iterdir() if p.suffix in (".json", ".jsonl")) if d.is_dir() else []
    return out


def check_domains(names: Sequence[str], root: str | os.PathLike[str]) -> None:
    """Every domain's corpus files and end-task directory exist (one error listing all problems)."""
    problems = []
    for n in names:
        spec = get_domain(n)
        for f in spec.corpus.files:
            if not (Path(root) / f).is_file():
                problems.append(f"domain {spec.name!r}: corpus file {Path(root) / f} not found")
        if spec.end_task.path is not None and not (Path(root) / spec.end_task.path).is_dir():
            problems.append(
                f"domain {spec.name!r}: end-task directory {Path(root) / spec.end_task.path} not found"
            )
    if problems:
        raise DataError(
            f"{len(problems)} problem(s) with the domain data under {root} (the DAS corpora are not shipped; "
            "see docs/continual_pretraining.md):\n  - " + "\n  - ".join(problems)
        )


# ---------------------------------------------------------------------------- blocks
def default_cache_dir() -> Path:
    """``$MIGU_CACHE``, else ``~/.cache/migu``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "migu"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of what decides token ids: the tokenizer's class, its full serialized state (fast
    tokenizers) or vocabulary, and its special tokens."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)  # per-call settings a tokenizer call leaves behind, not the vocabulary
        state.pop("padding", None)
        h.update(json.dumps(state, sort_keys=True).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _read_texts(data: DomainData) -> list[str]:
    if data.texts is not None:
        return data.texts
    from datasets import load_dataset  # heavy: only when a file corpus is actually tokenized

    kind = "text" if data.text_format == "text" else "json"
    ds = load_dataset(kind, data_files=[str(f.path) for f in data.files], split="train")
    column = "text" if kind == "text" else data.text_field
    if column not in ds.column_names:
        raise DataError(
            f"domain {data.name!r}: JSONL corpus has no field {column!r} (fields: {ds.column_names})"
        )
    return [t for t in ds[column] if isinstance(t, str) and t.strip()]


def group_blocks(
    ids: Sequence[Sequence[int]], special: Sequence[Sequence[int]], block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """run_mlm's group_texts: concatenate every document's ids and cut ``block_size`` blocks,
    dropping the remainder. Returns ([n, L] ids, [n, L] bool special-token flags)."""
    flat = torch.tensor([t for doc in ids for t in doc], dtype=torch.long)
    spec = torch.tensor([t for doc in special for t in doc], dtype=torch.bool)
    n = flat.numel() // block_size
    return flat[: n * block_size].view(n, block_size), spec[: n * block_size].view(n, block_size)


def corpus_blocks(
    data: DomainData, tokenizer: Any, block_size: int, cache_dir: str | os.PathLike[str] | None = None
) -> Blocks:
    """The domain's corpus as token blocks, from the cache when the same corpus, tokenizer and block
    size were blocked before."""
    from safetensors.torch import load_file, save_file

    if block_size < 2:
        raise DataError(f"block size must be >= 2 tokens, got {block_size}")
    key = hashlib.sha256(f"{data.fingerprint}:{tokenizer_fingerprint(tokenizer)}:{block_size}".encode())
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / "blocks" / f"{data.name}-{key.hexdigest()[:20]}.safetensors"
    if path.is_file():
        t = load_file(str(path))
        log.info(
            "domain %s: %d blocks of %d tokens from the cache %s",
            data.name,
            len(t["input_ids"]),
            block_size,
            path,
        )
        data.info["blocks_cache"] = {"path": str(path), "hit": True}
        return Blocks(t["input_ids"].long(), t["special_tokens_mask"].bool())
    texts = _read_texts(data)
    # verbose=False: documents longer than the model's positions are fine here, the blocks cut them
    enc = tokenizer(
        texts, add_special_tokens=True, return_special_tokens_mask=True, truncation=False, verbose=False
    )
    ids, special = group_blocks(enc["input_ids"], enc["special_tokens_mask"], block_size)
    if ids.shape[0] == 0:
        where = (
            ", ".join(str(f.path) for f in data.files) or f"the rows carved from {data.info.get('from_task')}"
        )
        total = sum(len(x) for x in enc["input_ids"])
        raise DataError(
            f"domain {data.name!r}: corpus ({where}) has {total} tokens, less than one block of {block_size}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_file({"input_ids": ids.to(torch.int32), "special_tokens_mask": special.to(torch.uint8)}, str(tmp))
    os.replace(tmp, path)
    log.info(
        "domain %s: %d documents -> %d blocks of %d tokens (cached at %s)",
        data.name,
        len(texts),
        len(ids),
        block_size,
        path,
    )
    data.info["blocks_cache"] = {"path": str(path), "hit": False}
    return Blocks(ids, special)
