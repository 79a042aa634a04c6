"""The tables every summary prints (``migu sweep``'s summary.md, ``migu tune``, ``migu analyze
sweep``, ``migu report``): method x MIGU as mean ± std over seeds, the groups as plain data, and
the published numbers beside the measured ones."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..methods import paper_name
from ..runner.results import METRICS, RunResults
from .groups import Group, MIGUSetting, method_rank

METRIC_NAMES = {
    "acc": "ACC",
    "bwt": "BWT",
    "fwt": "FWT",
    "forgetting": "Forgetting",
    "final_mf1": "MF1",
    "final_acc": "ACC",
    "forward_mf1": "forward MF1",
    "forward_acc": "forward ACC",
    "forgetting_mf1": "forgetting MF1",
    "forgetting_acc": "forgetting ACC",
}
# Continual pre-training's summary (stages.PretrainStages.summary): end-task macro-F1 and accuracy
# after the last domain (the paper's DAS table), on the diagonal, and diagonal minus last row.
PRETRAIN_METRICS = (
    "final_mf1",
    "final_acc",
    "forward_mf1",
    "forward_acc",
    "forgetting_mf1",
    "forgetting_acc",
)


def regime_metrics(runs: Iterable[RunResults]) -> tuple[str, ...]:
    """The summary metrics tables show for these runs: continual pre-training's end-task MF1/ACC when
    every run is a ``pretrain`` run, else finetuning's ACC/BWT/FWT/forgetting."""
    regimes = {r.regime for r in runs}
    return PRETRAIN_METRICS if regimes == {"pretrain"} else METRICS


def table_metrics(groups: Sequence[Group]) -> tuple[str, ...]:
    """:func:`regime_metrics` of every run in ``groups``."""
    return regime_metrics(r for g in groups for r in g.runs)


def acc_metric(groups: Sequence[Group]) -> str:
    """The accuracy the paired effects and violins compare: ACC after the last task, or in continual
    pre-training the end-task ACC after the last domain."""
    return "final_acc" if table_metrics(groups) == PRETRAIN_METRICS else "acc"


def pct(mean: float | None, std: float | None) -> str:
    """``78.80 ± 0.45`` (percent), ``78.80`` for a single seed, or ``-``."""
    if mean is None:
        return "-"
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def method_table(groups: Sequence[Group]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: method, MIGU, [other], seeds, each metric as mean ± std (%)."""
    show_extra = any(g.extra for g in groups)
    tuned = sorted({k for g in groups for k in g.tuned})
    metrics = table_metrics(groups)
    header = ["method", "MIGU", *(["other settings"] if show_extra else [])]
    header += [f"chosen {', '.join(tuned)}"] if tuned else []
    header += ["seeds", *(f"{METRIC_NAMES[m]} (%)" for m in metrics)]
    rows = []
    for g in groups:
        row = [paper_name(g.method), g.setting, *([g.extra or "-"] if show_extra else [])]
        row += [", ".join(g.tuned.get(k, "-") for k in tuned)] if tuned else []
        row.append(str(len(g.runs)))
        row += [pct(*g.mean_std(m)) for m in metrics]
        rows.append(row)
    return header, rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table (``|`` inside a cell escaped)."""
    cells = [[str(c).replace("|", "\\|") for c in r] for r in [header, *rows]]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
    return "\n".join(lines)


def summary_rows(groups: Sequence[Group]) -> list[dict[str, Any]]:
    """The groups as plain data (summary.json): their grid labels, mean and std of every metric,
    seeds, and the settings read from the results."""
    out = []
    for g in groups:
        row: dict[str, Any] = {
            **g.grid,
            "method": g.method,
            "setting": g.setting,
            "threshold": g.threshold,
            "components": list(g.components) if g.components else None,
            "other": g.extra,
            "n": len(g.runs),
            "seeds": g.seeds,
        }
        for m in table_metrics(groups):
            row[f"{m}_mean"], row[f"{m}_std"] = g.mean_std(m)
        out.append(row)
    return out


# ---------------------------------------------------------------------------- published vs measured
@dataclass
class PaperComparison:
    """Finished runs that carry the same published number (config ``paper``), and what they measured."""

    method: str
    setting: str
    metric: str
    paper: float  # in %
    source: str
    measured: list[float] = field(default_factory=list)  # in %, one per run that has the metric
    runs: int = 0

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.measured) if self.measured else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.measured) if len(self.measured) > 1 else None


def paper_comparisons(results: Iterable[RunResults]) -> list[PaperComparison]:
    """Group complete runs by (method, MIGU setting, metric, published value, source).

    The measured side is the mean over every such run (all seeds, and all orders of a sweep whose
    paper number is a mean over orders, as Table 2's are): the paper's own aggregation.
    """
    out: dict[tuple[Any, ...], PaperComparison] = {}
    for r in results:
        paper = r.config.get("paper") if isinstance(r.config, dict) else None
        if not r.complete or not isinstance(paper, dict):
            continue
        setting = MIGUSetting.of(r).label
        for metric, value in (paper.get("values") or {}).items():
            key = (r.method, setting, metric, float(value), str(paper.get("source", "")))
            comp = out.setdefault(key, PaperComparison(r.method, setting, metric, float(value), key[4]))
            comp.runs += 1
            measured = r.metric(metric)
            if measured is not None:
                comp.measured.append(100 * measured)
    return sorted(out.values(), key=lambda c: (method_rank(c.method), c.setting != "off", c.metric))


def paper_table(comparisons: Sequence[PaperComparison]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: published number, measured mean ± std over runs, and the gap, in points."""
    header = ["method", "MIGU", "metric", "paper (%)", "measured (%)", "runs", "measured - paper", "source"]
    rows = []
    for c in comparisons:
        mean = c.mean
        rows.append(
            [
                paper_name(c.method),
                c.setting,
                c.metric,
                f"{c.paper:.2f}",
                "-" if mean is None else (f"{mean:.2f}" + ("" if c.std is None else f" ± {c.std:.2f}")),
                f"{len(c.measured)}/{c.runs}" if len(c.measured) != c.runs else str(c.runs),
                "-" if mean is None else f"{mean - c.paper:+.2f}",
                c.source,
            ]
        )
    return header, rows
