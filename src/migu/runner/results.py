"""Results on disk, the one reader and writer: ``results.json`` and ``accuracy_matrix.csv``.

Every command that reads a finished run (``migu show``, sweeps, analyses, reports) goes through
:func:`load_results`, which returns a typed :class:`RunResults` or raises :class:`ResultsError`
naming the file when it is missing, truncated, not a results file, or of another schema version.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from .files import atomic_write_texts

RESULTS_FILE = "results.json"
MATRIX_FILE = "accuracy_matrix.csv"
SCHEMA_VERSION = 1
METRICS = ("acc", "bwt", "fwt", "forgetting")


class ResultsError(ValueError):
    """A results file that cannot be read as this version's results; the message names the file."""


Matrix = list[list[float | None]]


def package_versions() -> dict[str, str]:
    """Python and the packages that decide a run's numbers (results ``versions``, cache keys)."""
    out = {"python": platform.python_version()}
    for pkg in ("migu", "torch", "transformers", "peft", "accelerate"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def machine_versions() -> dict[str, str]:
    """The processor that ran (CPU model, torch's CPU kernel level, GPU name): kernels may round
    differently on another machine, so a rerun that differs can be told apart from nondeterminism.
    Results ``versions`` only, never cache keys (a cache hit on another CPU is still the same run)."""
    import torch  # here, not at the top: reading results needs no torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass  # not Linux: platform's answer stands
    out = {"cpu": cpu, "cpu_capability": str(torch.backends.cpu.get_cpu_capability())}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    return out


@dataclass(frozen=True)
class RunResults:
    """One run's results. Scores are fractions in [0, 1].

    ``matrices[m][i][j]`` is metric ``m`` on column j (task, domain's end task) after stage i;
    None where it was not measured (a pretrain run evaluating after the last domain only).
    ``primary`` names the matrix that ``matrix`` means: ``acc`` (finetune: ``acc`` and ``f1``
    matrices) or ``mf1`` (pretrain: ``mf1`` and ``acc``). ``metrics`` hold the regime's summary
    (finetune: ACC/BWT/FWT/forgetting; pretrain: final/forward/forgetting per metric), set once
    the run is complete. ``baselines`` are the untrained model's scores per metric.
    """

    name: str
    method: str
    seed: int
    tasks: list[str]
    complete: bool
    matrices: dict[str, Matrix]
    regime: str = "finetune"
    primary: str = "acc"
    stages: list[str] = field(default_factory=list)  # row labels (the tasks / domains trained)
    method_options: dict[str, Any] = field(default_factory=dict)
    migu: dict[str, Any] | None = None  # the resolved MIGUConfig, None = MIGU off
    baselines: dict[str, list[float]] | None = None
    columns: dict[str, list[str]] = field(default_factory=dict)  # a metric's columns, when not ``tasks``
    # after the last stage: split -> task -> 0/1 per scored row (what the paired bootstrap resamples)
    final_correct: dict[str, dict[str, list[int]]] | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    per_task: dict[str, Any] = field(default_factory=dict)  # where each task's rows came from
    timings: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # the resolved run config
    # why the run stopped before its end (a non-finite loss: stage, step, reason); None = not failed
    failure: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def matrix(self) -> Matrix:
        """The primary metric's matrix (accuracy in the finetuning regime)."""
        return self.matrices.get(self.primary, [])

    @property
    def baseline(self) -> list[float] | None:
        """The untrained model's primary scores (FWT), if measured."""
        return None if self.baselines is None else self.baselines.get(self.primary)

    @property
    def threshold(self) -> float | None:
        """MIGU's T, or None without MIGU."""
        return None if not self.migu else float(self.migu.get("threshold", 0.0))

    @property
    def trained(self) -> int:
        """Tasks finished so far."""
        return len(self.matrix)

    def metric(self, name: str) -> float | None:
        value = self.metrics.get(name)
        return None if value is None else float(value)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, source: str = "results") -> RunResults:
        """Validate a parsed results mapping (ResultsError naming ``source`` otherwise)."""
        if not isinstance(data, dict):
            raise ResultsError(f"{source}: not a results file (top level is {type(data).__name__})")
        version = data.get("schema_version", SCHEMA_VERSION)  # files before versioning: the same layout
        if version != SCHEMA_VERSION:
            raise ResultsError(
                f"{source}: results schema version {version!r}, this migu reads version {SCHEMA_VERSION} "
                "(re-run the run with this version, or read it with the migu that wrote it)"
            )
        data = _upgrade(data)
        names = {f.name for f in fields(cls)}
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise ResultsError(f"{source}: not a migu results file (missing {missing})")
        return cls(**{k: v for k, v in data.items() if k in names})


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """Files written before ``matrices`` existed (one accuracy and one F1 matrix): same content."""
    if "matrices" in data or "matrix" not in data:
        return data
    data = dict(data)
    data["matrices"] = {"acc": data.pop("matrix")}
    f1 = data.pop("f1_matrix", None)
    if f1:
        data["matrices"]["f1"] = f1
    base, base_f1 = data.pop("baseline", None), data.pop("baseline_f1", None)
    if base is not None:
        data["baselines"] = {"acc": base, **({"f1": base_f1} if base_f1 is not None else {})}
    data.pop("final_macro_f1", None)  # the last row of the F1 matrix
    return data


def results_path(run_dir: str | Path) -> Path:
    """``RUN/results.json`` (a path to the file itself is accepted too)."""
    p = Path(run_dir)
    return p if p.name == RESULTS_FILE else p / RESULTS_FILE


def load_results(run_dir: str | Path) -> RunResults:
    """The results of a run directory (or a results.json path)."""
    path = results_path(run_dir)
    if not path.is_file():
        raise ResultsError(f"no {RESULTS_FILE} in {path.parent} (is it a finished migu run directory?)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ResultsError(
            f"{path}: truncated or not JSON (line {exc.lineno} column {exc.colno}: {exc.msg}); "
            "re-run the command that wrote it"
        ) from None
    return RunResults.from_json(data, str(path))


def _strict_json(value: Any, key: str = "") -> Any:
    """NaN/inf as null: strict JSON parsers reject bare NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    return value


def write_results(run_dir: Path, results: RunResults) -> None:
    """Write both result files atomically (a reader never sees a half-written file, and a failed
    write, a full disk, leaves both as they were)."""
    body = json.dumps(_strict_json(results.to_json()), indent=1, allow_nan=False)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["after_task", *results.tasks])
    if results.baseline is not None:
        writer.writerow(["(untrained)", *(f"{100 * v:.2f}" for v in results.baseline)])
    for name, row in zip(results.stages or results.tasks, results.matrix, strict=False):
        writer.writerow([name, *("" if v is None else f"{100 * v:.2f}" for v in row)])
    atomic_write_texts({run_dir / RESULTS_FILE: body, run_dir / MATRIX_FILE: buf.getvalue()})


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:6.2f}"


def format_results(results: RunResults) -> str:
    """The accuracy matrix (%) and metrics as a plain-text table."""
    tasks = results.tasks
    width = max(12, *(len(t) for t in tasks)) + 2
    lines = [
        f"run: {results.name}  method: {results.method}  "
        f"MIGU: {'off' if results.threshold is None else results.threshold}"
    ]
    what = {"acc": "accuracy", "mf1": "end-task F1", "f1": "macro-F1"}.get(results.primary, results.primary)
    lines.append(f"{what} (%) after training on each stage (rows) for each task (columns)")
    lines.append("after".ljust(width) + "".join(t[:10].rjust(11) for t in tasks))
    if results.baseline is not None:
        lines.append("(untrained)".ljust(width) + "".join(_fmt(v).rjust(11) for v in results.baseline))
    for name, row in zip(results.stages or tasks, results.matrix, strict=False):
        lines.append(name[: width - 1].ljust(width) + "".join(_fmt(v).rjust(11) for v in row))
    if results.metrics:
        lines.append("")
        keys = METRICS if results.regime == "finetune" else tuple(results.metrics)
        lines.append("  ".join(f"{k.upper()} {_fmt(results.metric(k)).strip()}" for k in keys))
    if results.failure:
        lines.append(f"FAILED: {results.failure.get('reason', results.failure)}")
    if not results.complete:
        lines.append(f"(incomplete: {results.trained} of {len(tasks)} tasks finished)")
    lines.append(f"wall time {results.wall_seconds:.0f}s")
    return "\n".join(lines)
