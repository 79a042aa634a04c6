"""Summaries of ``migu sweep`` directories for people: the method x MIGU table, ACC vs threshold, the
components ablation, ACC across seeds (violins), ACC over another grid value.

The grouping (``analysis.groups``) and the method table (``analysis.tables``) are the ones ``migu
sweep`` writes into summary.md, so the two can never disagree; this module adds the figures and the
ablation tables.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..engine import COMPONENTS
from ..methods import paper_name
from ..runner.results import METRICS
from . import plots
from .effects import EFFECT_TITLES, effect_sections, effects_table
from .groups import Group, SweepDir, group_cells, method_rank, pool_sweeps, read_sweep_dir
from .tables import METRIC_NAMES, acc_metric, markdown_table, method_table, pct, table_metrics

log = logging.getLogger(__name__)


def violin_data(groups: Sequence[Group]) -> dict[str, dict[str, list[float]]]:
    """{method: {setting: ACC per seed}} for methods run without and with MIGU over >= 2 seeds each
    (single-seed groups, e.g. of a threshold sweep, have no spread to show). Groups that differ in
    other grid values (a tuned ``train.lr``) are shown apart, named with those values."""
    out: dict[str, dict[str, list[float]]] = {}
    acc = acc_metric(groups)
    for g in groups:
        values = g.values(acc)
        if len(values) < 2:
            continue
        name = f"{paper_name(g.method)} ({g.extra})" if g.extra else paper_name(g.method)
        out.setdefault(name, {})[g.setting] = values
    return {m: s for m, s in out.items() if "off" in s and len(s) > 1}


def cluster_data(groups: Sequence[Group]) -> dict[str, dict[str, list[float]]]:
    """{method (T): {"per-row" / "cluster=<strategy>": ACC per seed}} for methods run with per-row MIGU
    and MIGU+Cluster at the same threshold and other settings (the paper's MIGU+Cluster figure)."""
    out: dict[str, dict[str, list[float]]] = {}
    for g in groups:
        values = g.values("acc")
        if g.threshold is None or not values:
            continue
        name = f"{paper_name(g.method)} T={g.threshold:g}" + (f" ({g.extra})" if g.extra else "")
        out.setdefault(name, {})["per-row" if g.cluster is None else f"cluster={g.cluster}"] = values
    return {m: s for m, s in out.items() if "per-row" in s and len(s) > 1}


def threshold_data(
    groups: Sequence[Group],
) -> tuple[dict[str, list[tuple[float, float, float, int]]], dict[str, tuple[float, float, int]]]:
    """Curves {method: [(T, mean, std, n)]} for methods with >= 2 thresholds (all components),
    and their runs without MIGU {method: (mean, std, n)}."""
    curves: dict[str, list[tuple[float, float, float, int]]] = {}
    base: dict[str, tuple[float, float, int]] = {}
    for g in groups:
        if g.extra or g.cluster:  # other settings, or MIGU+Cluster: not points of the per-row curve
            continue
        mean, std = g.mean_std("acc")
        if mean is None:
            continue
        name = paper_name(g.method)
        if g.threshold is None:
            base[name] = (mean, std or 0.0, len(g.runs))
        elif set(g.components or COMPONENTS) == set(COMPONENTS):
            curves.setdefault(name, []).append((g.threshold, mean, std or 0.0, len(g.runs)))
    curves = {m: sorted(c) for m, c in curves.items() if len({t for t, *_ in c}) >= 2}
    return curves, {m: b for m, b in base.items() if m in curves}


def grid_value_data(groups: Sequence[Group]) -> tuple[str, dict[str, list[tuple[float, float, float, int]]]]:
    """ACC curves over one numeric grid key besides MIGU and seed (e.g. ``train.lr``).

    Returns (key, {"FT" / "FT+MIGU T=0.7": [(value, mean, std, n)]}) for series with >= 2 values;
    ("", {}) when the groups vary no single numeric key.
    """
    key = ""
    curves: dict[str, list[tuple[float, float, float, int]]] = {}
    for g in groups:
        name, sep, text = g.extra.partition("=")
        if not sep or ", " in g.extra:
            continue  # no other grid key, or more than one
        try:
            value = float(text)
        except ValueError:
            continue
        if key and name != key:
            return "", {}  # two different keys: no single x axis
        mean, std = g.mean_std("acc")
        if mean is None:
            continue
        key = name
        label = paper_name(g.method) + ("" if g.threshold is None else f"+MIGU {g.setting}")
        curves.setdefault(label, []).append((value, mean, std or 0.0, len(g.runs)))
    curves = {k: sorted(c) for k, c in curves.items() if len(c) >= 2}
    return (key, curves) if curves else ("", {})


def components_table(groups: Sequence[Group]) -> tuple[list[str], list[list[str]]] | None:
    """Header and rows of the components ablation, or None if fewer than two component sets ran."""
    on = [g for g in groups if g.threshold is not None and not g.extra]
    if len({tuple(sorted(g.components or COMPONENTS)) for g in on}) < 2:
        return None
    order = {c: i for i, c in enumerate(COMPONENTS)}
    # Thresholds at which a component subset ran: the ablation compares at those T only.
    subset_t = {g.threshold for g in on if set(g.components or COMPONENTS) != set(COMPONENTS)}
    chosen = [g for g in groups if not g.extra and (g.threshold is None or g.threshold in subset_t)]
    chosen.sort(
        key=lambda g: (
            method_rank(g.method),
            g.method,
            g.threshold is not None,
            len(g.components or ()),
            [order[c] for c in g.components or ()],
        )
    )
    header = ["method", "MIGU on", "T", "seeds", *(f"{METRIC_NAMES[m]} (%)" for m in METRICS)]
    rows = []
    for g in chosen:
        comps = (
            "none (MIGU off)"
            if g.threshold is None
            else "+".join(sorted(g.components or COMPONENTS, key=order.get))
        )
        rows.append(
            [
                paper_name(g.method),
                comps,
                "-" if g.threshold is None else f"{g.threshold:g}",
                str(len(g.runs)),
            ]
            + [pct(*g.mean_std(m)) for m in METRICS]
        )
    return header, rows


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """Write one CSV table."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@dataclass
class SweepOutput:
    """What ``analyze_sweeps`` made."""

    sweeps: list[SweepDir]
    groups: list[Group]
    figures: dict[str, Figure]
    files: list[Path]
    notes: list[str]


def sweep_figures(groups: Sequence[Group], title: str) -> tuple[dict[str, Figure], list[str]]:
    """The violin and threshold figures the groups allow, and sentences on those they do not."""
    figures: dict[str, Figure] = {}
    notes: list[str] = []
    violins = violin_data(groups)
    if violins:
        figures["violin_acc"] = plots.plot_violins(
            violins, f"ACC across seeds without and with MIGU ({title})"
        )
    else:
        notes.append(
            "no method ran both without and with MIGU over two or more seeds: "
            "no violin plot of ACC across seeds"
        )
    clusters = cluster_data(groups)
    if clusters:
        figures["cluster_acc"] = plots.plot_violins(
            clusters, f"ACC with MIGU per row and per cluster ({title})", legend="MIGU rows (dots: seeds)"
        )
    curves, base = threshold_data(groups)
    if curves:
        figures["threshold_acc"] = plots.plot_threshold_curve(
            curves, base, f"ACC vs MIGU threshold ({title})"
        )
    else:
        notes.append("no method ran at two or more MIGU thresholds: no threshold curve")
    key, value_curves = grid_value_data(groups)
    if value_curves:
        figures[f"acc_vs_{key.split('.')[-1]}"] = plots.plot_grid_value_curve(
            value_curves, key, f"ACC vs {key} ({title})"
        )
    return figures, notes


def _sweep_tables(
    sweep: SweepDir, groups: list[Group], out: Path, suffix: str, label: str
) -> tuple[list[str], list[Path]]:
    """CSV tables of one sweep and its Markdown section."""
    files: list[Path] = []
    raw_header = ["method", "migu", "threshold", "components", "other", "chosen", "n", "seeds"]
    metrics = table_metrics(groups)
    raw_header += [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
    raw_rows = []
    for g in groups:
        row: list[Any] = [
            g.method,
            g.setting,
            "" if g.threshold is None else g.threshold,
            "+".join(g.components or ()),
            g.extra,
            "; ".join(f"{k}={v}" for k, v in g.tuned.items()),  # what migu tune chose for this setting
            len(g.runs),
            " ".join(map(str, g.seeds)),
        ]
        for m in metrics:
            mean, std = g.mean_std(m)
            row += ["" if mean is None else f"{mean:.6f}", "" if std is None else f"{std:.6f}"]
        raw_rows.append(row)
    files.append(write_csv(out / f"sweep_summary{suffix}.csv", raw_header, raw_rows))
    header, rows = method_table(groups)
    done = len(sweep.cells) - len(sweep.missing)
    md = [
        f"## {label} ({done} of {len(sweep.cells)} cells finished)",
        "",
        markdown_table(header, rows),
        "",
        "mean ± sample std over seeds, in %",
    ]
    for kind, effects in effect_sections(groups).items():
        header, rows = effects_table(effects)
        files.append(write_csv(out / f"{kind}_effects{suffix}.csv", header, rows))
        md += ["", f"### {EFFECT_TITLES[kind]}", "", markdown_table(header, rows), ""]
        md += [f"- {e.sentence()}" for e in effects]
    comp = components_table(groups)
    if comp:
        files.append(write_csv(out / f"components{suffix}.csv", *comp))
        md += ["", "### MIGU on block components", "", markdown_table(*comp)]
    curves, base = threshold_data(groups)
    if curves:
        files.append(
            write_csv(
                out / f"threshold{suffix}.csv",
                ["method", "threshold", "acc_mean", "acc_std", "n"],
                [[m, t, f"{mu:.6f}", f"{sd:.6f}", n] for m, pts in curves.items() for t, mu, sd, n in pts]
                + [[m, "off", f"{mu:.6f}", f"{sd:.6f}", n] for m, (mu, sd, n) in base.items()],
            )
        )
    return md, files


def sweep_labels(sweeps: Sequence[SweepDir]) -> list[str]:
    """A distinct name per sweep for file suffixes and headings: its own name, or, where two share it
    (every ``migu tune`` writes a ``test`` directory), its parent directory's name before it."""
    names = [s.name for s in sweeps]
    labels = [
        n if names.count(n) == 1 else f"{s.path.resolve().parent.name}_{n}"
        for s, n in zip(sweeps, names, strict=True)
    ]
    seen: dict[str, int] = {}
    out = []
    for label in labels:  # still equal (the same directory twice, or equal parents): numbered
        seen[label] = seen.get(label, 0) + 1
        out.append(label if labels.count(label) == 1 else f"{label}_{seen[label]}")
    return out


def pooled(sweeps: list[SweepDir]) -> list[SweepDir]:
    """``sweeps`` as one sweep (``pool_sweeps``, cells labelled by ``sweep_labels``), for
    ``analyze sweep --pool`` and ``report --pool``; a single sweep is returned as it is."""
    return [pool_sweeps(sweeps, sweep_labels(sweeps))] if len(sweeps) > 1 else sweeps


def analyze_sweeps(sweep_dirs: Sequence[str | Path], out: str | Path, pool: bool = False) -> SweepOutput:
    """Tables (CSV + Markdown) and figures of each sweep directory, written to ``out``.

    Sweeps are summarised one by one (two sweeps may differ in model or data); with several sweeps
    the file names get the sweep name as a suffix. ``pool``: all cells as one sweep, so a method in
    one pairs with its base method (FT, LoRA) in another, once ``pool_sweeps`` has checked that they
    ran the same setup on the same rows.
    """
    sweeps = [read_sweep_dir(d) for d in sweep_dirs]
    if pool:
        sweeps = pooled(sweeps)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    figures: dict[str, Figure] = {}
    all_notes: list[str] = []
    all_groups: list[Group] = []
    md: list[str] = ["# Sweep summary", ""]
    for sweep, label in zip(sweeps, sweep_labels(sweeps), strict=True):
        suffix = "" if len(sweeps) == 1 else f"_{label}"
        groups = group_cells([sweep])
        all_groups += groups
        if not groups:
            note = f"sweep {label} has no finished cell"
            md += [f"## {label}", "", note, ""]
            all_notes.append(note)
            continue
        section, written = _sweep_tables(sweep, groups, out, suffix, label)
        md += section
        files += written
        figs, notes = sweep_figures(groups, label)
        if sweep.missing:
            notes.append(f"{len(sweep.missing)} cell(s) not finished, left out: {', '.join(sweep.missing)}")
        if notes:
            md += ["", "Not shown / left out:", "", *(f"- {n}" for n in notes)]
        md.append("")
        all_notes += [f"{label}: {n}" for n in notes]
        for stem, fig in figs.items():
            figures[f"{stem}{suffix}"] = fig
            files.append(plots.save(fig, out / f"{stem}{suffix}.png"))
    path = out / "sweep_summary.md"
    path.write_text("\n".join(md) + "\n")
    files.append(path)
    return SweepOutput(sweeps, all_groups, figures, files, all_notes)
