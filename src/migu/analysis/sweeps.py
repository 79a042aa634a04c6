"""Reading ``migu sweep`` directories and summarising them for people: method x MIGU table, ACC
vs threshold, the components ablation, ACC across seeds.

Cells are grouped by what their own ``results.json`` says (method, MIGU threshold and
components), not by the labels in ``summary.json``, so sweeps of any grid shape (and several
sweeps at once) combine; the seeds of a group give mean and sample std.
"""

from __future__ import annotations

import csv
import json
import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure

from ..engine import COMPONENTS
from ..methods import list_methods, paper_name
from . import plots

log = logging.getLogger(__name__)

METRICS = ("acc", "bwt", "fwt", "forgetting")
METRIC_NAMES = {"acc": "ACC", "bwt": "BWT", "fwt": "FWT", "forgetting": "Forgetting"}
_GROUPING_KEYS = ("method", "method.name", "migu", "seed")


method_name = paper_name  # the paper's spelling of a registry name (unknown names unchanged)


def _method_rank(method: str) -> int:
    """The registry's order (the paper's: FT, LoRA, IncLoRA, OIncLoRA, LoRAReplay, ...), others after."""
    order = list_methods()
    return order.index(method) if method in order else len(order)


@dataclass
class Cell:
    """One run of a sweep; ``results`` is None when it is missing or unfinished."""

    name: str
    values: dict[str, Any]
    path: Path
    results: dict[str, Any] | None


@dataclass
class Sweep:
    """A sweep directory as read from disk."""

    name: str
    path: Path
    cells: list[Cell]

    @property
    def missing(self) -> list[str]:
        """Cells without a finished run."""
        return [c.name for c in self.cells if c.results is None]


def is_sweep_dir(path: str | Path) -> bool:
    """A directory made by ``migu sweep`` (sweep.yaml or summary.json, no results.json of its own)."""
    p = Path(path)
    return (
        p.is_dir()
        and not (p / "results.json").is_file()
        and ((p / "sweep.yaml").is_file() or (p / "summary.json").is_file())
    )


def _finished(path: Path) -> dict[str, Any] | None:
    f = path / "results.json"
    if not f.is_file():
        return None
    res = json.loads(f.read_text())
    return res if res.get("complete") else None


def load_sweep(path: str | Path) -> Sweep:
    """Cells from ``sweep.yaml`` (else every sub-directory holding a results.json)."""
    p = Path(path)
    spec_path = p / "sweep.yaml"
    if spec_path.is_file():
        spec = yaml.safe_load(spec_path.read_text()) or {}
        cells = [
            Cell(
                str(c["name"]), dict(c.get("values") or {}), p / str(c["name"]), _finished(p / str(c["name"]))
            )
            for c in spec.get("cells") or []
        ]
        return Sweep(str(spec.get("name") or p.name), p, cells)
    cells = [Cell(d.name, {}, d, _finished(d)) for d in sorted(p.iterdir()) if (d / "results.json").is_file()]
    if not cells:
        raise FileNotFoundError(f"{p} has no sweep.yaml and no run directories: not a sweep directory")
    return Sweep(p.name, p, cells)


def migu_setting(results: dict[str, Any]) -> tuple[float | None, tuple[str, ...] | None]:
    """(threshold, components) of a run; (None, None) without MIGU."""
    migu = results.get("migu")
    if not migu:
        return None, None
    return float(migu.get("threshold", 0.0)), tuple(migu.get("components") or COMPONENTS)


def setting_label(threshold: float | None, components: tuple[str, ...] | None) -> str:
    """``off``, ``T=0.7`` or ``T=0.7 qkv+o`` (components shown only when not all three)."""
    if threshold is None:
        return "off"
    label = f"T={threshold:g}"
    if components and set(components) != set(COMPONENTS):
        label += " " + "+".join(components)
    return label


@dataclass
class Group:
    """Runs of one method and MIGU setting (and other grid values), over seeds."""

    method: str
    threshold: float | None
    components: tuple[str, ...] | None
    extra: str
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def setting(self) -> str:
        return setting_label(self.threshold, self.components)

    def values(self, metric: str) -> list[float]:
        return [r["metrics"][metric] for r in self.runs if (r.get("metrics") or {}).get(metric) is not None]

    def mean_std(self, metric: str) -> tuple[float | None, float | None]:
        """Mean and sample std over seeds (std None for one seed: undefined; both None without values)."""
        v = self.values(metric)
        if not v:
            return None, None
        return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else None

    @property
    def seeds(self) -> list[Any]:
        return [r.get("seed") for r in self.runs]


def _value_label(value: Any) -> Any:
    """A grid value as shown: an override bundle (recipe) by its ``label``."""
    return value.get("label", value) if isinstance(value, dict) else value


def group_cells(sweeps: Sequence[Sweep]) -> list[Group]:
    """Finished cells of all ``sweeps`` grouped by (method, MIGU setting, other grid values)."""
    groups: dict[tuple[Any, ...], Group] = {}
    for sweep in sweeps:
        for cell in sweep.cells:
            if cell.results is None:
                continue
            t, comps = migu_setting(cell.results)
            method = cell.results.get("method")
            extra = ", ".join(
                f"{k}={_value_label(v)}"
                for k, v in cell.values.items()
                if k not in _GROUPING_KEYS
                and not k.startswith("migu.")
                and _value_label(v) != method  # a recipe bundle named after its method says nothing new
            )
            key = (cell.results.get("method"), t, tuple(sorted(comps)) if comps else None, extra)
            group = groups.setdefault(key, Group(str(cell.results.get("method")), t, comps, extra))
            group.runs.append(cell.results)
    return sorted(
        groups.values(),
        key=lambda g: (
            _method_rank(g.method),
            g.method,
            g.extra,
            g.threshold is not None,
            g.threshold or 0.0,
            g.setting,
        ),
    )


def pct(mean: float | None, std: float | None) -> str:
    """``78.80 ± 0.45`` (percent), ``78.80`` for a single seed, or ``-``."""
    if mean is None:
        return "-"
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def method_table(groups: Sequence[Group]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: method, MIGU, [other], seeds, each metric as mean ± std (%)."""
    show_extra = any(g.extra for g in groups)
    header = ["method", "MIGU", *(["other settings"] if show_extra else []), "seeds"]
    header += [f"{METRIC_NAMES[m]} (%)" for m in METRICS]
    rows = []
    for g in groups:
        row = [method_name(g.method), g.setting, *([g.extra or "-"] if show_extra else []), str(len(g.runs))]
        row += [pct(*g.mean_std(m)) for m in METRICS]
        rows.append(row)
    return header, rows


def violin_data(groups: Sequence[Group]) -> dict[str, dict[str, list[float]]]:
    """{method: {setting: ACC per seed}} for methods run without and with MIGU over >= 2 seeds each
    (single-seed groups, e.g. of a threshold sweep, have no spread to show)."""
    out: dict[str, dict[str, list[float]]] = {}
    for g in groups:
        values = g.values("acc")
        if g.extra or len(values) < 2:
            continue
        out.setdefault(method_name(g.method), {})[g.setting] = values
    return {m: s for m, s in out.items() if "off" in s and len(s) > 1}


def threshold_data(
    groups: Sequence[Group],
) -> tuple[dict[str, list[tuple[float, float, float, int]]], dict[str, tuple[float, float, int]]]:
    """Curves {method: [(T, mean, std, n)]} for methods with >= 2 thresholds (all components),
    and their runs without MIGU {method: (mean, std, n)}."""
    curves: dict[str, list[tuple[float, float, float, int]]] = {}
    base: dict[str, tuple[float, float, int]] = {}
    for g in groups:
        if g.extra:
            continue
        mean, std = g.mean_std("acc")
        if mean is None:
            continue
        name = method_name(g.method)
        if g.threshold is None:
            base[name] = (mean, std or 0.0, len(g.runs))
        elif set(g.components or COMPONENTS) == set(COMPONENTS):
            curves.setdefault(name, []).append((g.threshold, mean, std or 0.0, len(g.runs)))
    curves = {m: sorted(c) for m, c in curves.items() if len(c) >= 2}
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
        label = method_name(g.method) + ("" if g.threshold is None else f"+MIGU {g.setting}")
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
            _method_rank(g.method),
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
                method_name(g.method),
                comps,
                "-" if g.threshold is None else f"{g.threshold:g}",
                str(len(g.runs)),
            ]
            + [pct(*g.mean_std(m)) for m in METRICS]
        )
    return header, rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


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

    sweeps: list[Sweep]
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


def _sweep_tables(sweep: Sweep, groups: list[Group], out: Path, suffix: str) -> tuple[list[str], list[Path]]:
    """CSV tables of one sweep and its Markdown section."""
    files: list[Path] = []
    raw_header = ["method", "migu", "threshold", "components", "other", "n", "seeds"]
    raw_header += [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
    raw_rows = []
    for g in groups:
        row: list[Any] = [
            g.method,
            g.setting,
            "" if g.threshold is None else g.threshold,
            "+".join(g.components or ()),
            g.extra,
            len(g.runs),
            " ".join(map(str, g.seeds)),
        ]
        for m in METRICS:
            mean, std = g.mean_std(m)
            row += ["" if mean is None else f"{mean:.6f}", "" if std is None else f"{std:.6f}"]
        raw_rows.append(row)
    files.append(write_csv(out / f"sweep_summary{suffix}.csv", raw_header, raw_rows))
    header, rows = method_table(groups)
    done = len(sweep.cells) - len(sweep.missing)
    md = [
        f"## {sweep.name} ({done} of {len(sweep.cells)} cells finished)",
        "",
        markdown_table(header, rows),
        "",
        "mean ± sample std over seeds, in %",
    ]
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


def analyze_sweeps(sweep_dirs: Sequence[str | Path], out: str | Path) -> SweepOutput:
    """Tables (CSV + Markdown) and figures of each sweep directory, written to ``out``.

    Sweeps are summarised one by one (never pooled: two sweeps may differ in model or data);
    with several sweeps the file names get the sweep name as a suffix.
    """
    sweeps = [load_sweep(d) for d in sweep_dirs]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    figures: dict[str, Figure] = {}
    all_notes: list[str] = []
    all_groups: list[Group] = []
    md: list[str] = ["# Sweep summary", ""]
    for sweep in sweeps:
        suffix = "" if len(sweeps) == 1 else f"_{sweep.name}"
        groups = group_cells([sweep])
        all_groups += groups
        if not groups:
            note = f"sweep {sweep.name} has no finished cell"
            md += [f"## {sweep.name}", "", note, ""]
            all_notes.append(note)
            continue
        section, written = _sweep_tables(sweep, groups, out, suffix)
        md += section
        files += written
        figs, notes = sweep_figures(groups, sweep.name)
        if sweep.missing:
            notes.append(f"{len(sweep.missing)} cell(s) not finished, left out: {', '.join(sweep.missing)}")
        if notes:
            md += ["", "Not shown / left out:", "", *(f"- {n}" for n in notes)]
        md.append("")
        all_notes += [f"{sweep.name}: {n}" for n in notes]
        for stem, fig in figs.items():
            figures[f"{stem}{suffix}"] = fig
            files.append(plots.save(fig, out / f"{stem}{suffix}.png"))
    path = out / "sweep_summary.md"
    path.write_text("\n".join(md) + "\n")
    files.append(path)
    return SweepOutput(sweeps, all_groups, figures, files, all_notes)
