"""Continual-learning metrics: pure functions on accuracy matrices, and paired intervals.

``R[i][j]`` is the accuracy on task j after training on tasks 0..i (rows: training stage,
columns: evaluated task, both in the run's order). Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Matrix = Sequence[Sequence[float]]


def _check_square(r: Matrix) -> int:
    n = len(r)
    if n == 0 or any(len(row) != n for row in r):
        raise ValueError(f"accuracy matrix must be square and non-empty, got shape {[len(row) for row in r]}")
    return n


def average_accuracy(r: Matrix) -> float:
    """ACC: mean of the last row over all tasks (the paper's metric; per-task, not per-sample)."""
    n = _check_square(r)
    return sum(r[n - 1]) / n


def backward_transfer(r: Matrix) -> float:
    """BWT = mean over j < T-1 of R[T-1][j] - R[j][j] (negative = forgetting); 0 for one task."""
    n = _check_square(r)
    if n < 2:
        return 0.0
    return sum(r[n - 1][j] - r[j][j] for j in range(n - 1)) / (n - 1)


def forward_transfer(r: Matrix, baseline: Sequence[float]) -> float:
    """FWT = mean over j >= 1 of R[j-1][j] - b_j, with b the untrained model's accuracies."""
    n = _check_square(r)
    if len(baseline) != n:
        raise ValueError(f"baseline has {len(baseline)} entries for {n} tasks")
    if n < 2:
        return 0.0
    return sum(r[j - 1][j] - baseline[j] for j in range(1, n)) / (n - 1)


def average_forgetting(r: Matrix) -> float:
    """Mean over j < T-1 of max_{l in [j, T-2]} R[l][j] - R[T-1][j] (Chaudhry et al. 2018)."""
    n = _check_square(r)
    if n < 2:
        return 0.0
    return sum(max(r[i][j] for i in range(j, n - 1)) - r[n - 1][j] for j in range(n - 1)) / (n - 1)


def accuracy(predictions: Sequence[str], labels: Sequence[str]) -> float:
    """Exact-match accuracy of predicted label strings."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("accuracy of an empty set is undefined")
    return sum(p == g for p, g in zip(predictions, labels, strict=True)) / len(labels)


def f1(
    predictions: Sequence[str],
    labels: Sequence[str],
    classes: Sequence[str] | None = None,
    average: str = "macro",
) -> float:
    """F1 over ``classes`` (default: the gold labels seen), ``macro`` or ``micro`` averaged; an
    off-label prediction is a miss."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    classes = list(classes) if classes is not None else sorted(set(labels))
    if not classes:
        raise ValueError("F1 needs at least one class")
    if average not in ("macro", "micro"):
        raise ValueError(f"average must be 'macro' or 'micro', got {average!r}")
    from sklearn.metrics import f1_score  # scikit-learn loads in ~1 s: only when a score is asked for

    # labels=classes: the mean over exactly these classes; a prediction outside them is a false
    # negative of its gold class; a class never predicted nor present scores 0 (zero_division=0).
    return float(f1_score(list(labels), list(predictions), labels=classes, average=average, zero_division=0))


def macro_f1(
    predictions: Sequence[str], labels: Sequence[str], classes: Sequence[str] | None = None
) -> float:
    """Macro-F1 over ``classes`` (default: the gold labels seen); an off-label prediction is a miss."""
    return f1(predictions, labels, classes, "macro")


# ---------------------------------------------------------------------------- progressive matrices
# ContinualLM's summaries of the N x N end-task matrices of continual pre-training (tools/
# forgetting_rate.py, approaches/finetune.py): cells may be None where a row was not scored.
Progressive = Sequence[Sequence[float | None]]


def mean_last_row(r: Progressive) -> float | None:
    """Final: the mean of the last row (every end task after the last domain)."""
    if not r or any(v is None for v in r[-1]):
        return None
    return sum(r[-1]) / len(r[-1])  # type: ignore[arg-type]


def mean_diagonal(r: Progressive) -> float | None:
    """Forward: the mean of the diagonal (each end task right after its own domain); None if any
    diagonal cell was not scored."""
    diag = [r[j][j] for j in range(min(len(r), len(r[0]) if r else 0))]
    if len(diag) != len(r) or any(v is None for v in diag):
        return None
    return sum(diag) / len(diag)  # type: ignore[arg-type]


def diagonal_forgetting(r: Progressive) -> float | None:
    """Forgetting: mean over j < N-1 of R[j][j] - R[N-1][j] (ContinualLM's forgetting rate)."""
    n = len(r)
    if n < 2:
        return 0.0 if n == 1 else None
    drops = [r[j][j] - r[n - 1][j] for j in range(n - 1) if r[j][j] is not None and r[n - 1][j] is not None]
    return sum(drops) / len(drops) if len(drops) == n - 1 else None  # type: ignore[operator]


def summarize(r: Matrix, baseline: Sequence[float] | None = None) -> dict[str, float | None]:
    """All matrix metrics in one dict (FWT is None without a baseline)."""
    return {
        "acc": average_accuracy(r),
        "bwt": backward_transfer(r),
        "fwt": forward_transfer(r, baseline) if baseline is not None else None,
        "forgetting": average_forgetting(r),
    }


# ---------------------------------------------------------------------------- paired statistics
@dataclass(frozen=True)
class Interval:
    """A mean difference (b - a, in accuracy fractions) and its confidence interval."""

    mean: float
    low: float
    high: float
    n: int  # pairs (seeds), or bootstrap replicates for the bootstrap
    method: str  # "paired t over seeds" | "paired bootstrap over test rows"
    confidence: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0

    def sentence(self, what: str = "MIGU") -> str:
        """``MIGU +2.1 points [+0.4, +3.8]`` or ``no difference detected at this size``."""
        points = f"{100 * self.mean:+.1f} points [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"
        if self.excludes_zero:
            return f"{what} {points} ({self.method}, {int(100 * self.confidence)}% interval)"
        return f"no difference detected at this size: {what} {points} ({self.method})"


def paired_t_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval | None:
    """Mean of b_i - a_i over pairs (the same seeds) with a Student-t interval; None for < 2 pairs
    (one pair has no spread to estimate)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} and {len(b)} values: pairs need equal lengths")
    n = len(a)
    if n < 2:
        return None
    from scipy import stats  # loads in ~0.5 s: only when an interval is asked for

    diffs = [y - x for x, y in zip(a, b, strict=True)]
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, "paired t over seeds", confidence)


def paired_bootstrap(
    a: Sequence[Mapping[str, Sequence[int]]],
    b: Sequence[Mapping[str, Sequence[int]]],
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """Bootstrap over test rows of the ACC difference b - a, paired by seed and row.

    ``a[s][task]`` / ``b[s][task]``: 0/1 correctness of each row of ``task`` for seed s (the same
    rows, in the same order, in both). Each replicate resamples the rows of every (seed, task)
    with replacement (the same draw for a and b), takes each task's accuracy, ACC as their mean,
    and the mean over seeds of the ACC differences: the spread of test-set sampling alone.
    """
    import numpy as np

    if len(a) != len(b) or not a:
        raise ValueError("paired_bootstrap needs the same, non-zero number of seeds on both sides")
    rng = np.random.default_rng(seed)
    diffs = np.zeros(n_boot)
    point = 0.0
    for ca, cb in zip(a, b, strict=True):
        if set(ca) != set(cb):
            raise ValueError(f"the two runs scored different tasks: {sorted(ca)} vs {sorted(cb)}")
        per_task = np.zeros(n_boot)
        for task in ca:
            xa, xb = np.asarray(ca[task], float), np.asarray(cb[task], float)
            if xa.shape != xb.shape or not len(xa):
                raise ValueError(
                    f"task {task!r}: the two runs scored different rows ({len(xa)} vs {len(xb)})"
                )
            idx = rng.integers(0, len(xa), size=(n_boot, len(xa)))  # [B, n] the same rows for a and b
            per_task += (xb[idx] - xa[idx]).mean(axis=1)
            point += float((xb - xa).mean()) / len(ca)
        diffs += per_task / len(ca)
    diffs /= len(a)
    point /= len(a)
    lo, hi = np.quantile(diffs, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return Interval(point, float(lo), float(hi), n_boot, "paired bootstrap over test rows", confidence)
