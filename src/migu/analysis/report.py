"""``migu report``: one Markdown report (and a self-contained HTML copy) from saved results only.

Inputs may be run directories, sweep directories and output directories of ``migu analyze``;
each kind is optional. Whatever is absent is named in the report with what it would have added,
so a partial report never looks complete.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ..runner.results import RunResults, load_results
from . import plots
from .ablations import components_table, pooled, sweep_figures
from .collect import run_label
from .document import Block, Bullets, Document, Heading, Image, Para, Table
from .effects import EFFECT_TITLES, effect_sections, effects_table
from .groups import SweepDir, group_cells, is_sweep_dir, read_sweep_dir
from .tables import METRIC_NAMES, method_table, paper_comparisons, paper_table, regime_metrics

log = logging.getLogger(__name__)

# Captions of the sweep figures, by the start of their file stem (``sweep_figures``).
_FIGURE_CAPTIONS = {
    "violin": "ACC of every seed (dots) without and with MIGU; violins where a group has two or more "
    "distinct values.",
    "cluster": "ACC of every seed (dots) with per-row MIGU and with MIGU+Cluster at the same threshold; "
    "violins where a group has two or more distinct values.",
    "threshold": "Mean ACC over seeds (bars: ± sample std) at each MIGU threshold; dotted: the same method "
    "without MIGU.",
    "acc_vs": "Mean ACC over seeds (bars: ± sample std) at each value of the swept setting.",
}
_EFFECT_CAPTION = (
    "Setting minus its baseline, in points, paired by seed: a Student-t interval over seeds, and a "
    "bootstrap over test rows (test-set sampling only)."
)


# ---------------------------------------------------------------------------- inputs
@dataclass
class Inputs:
    """Report inputs sorted by kind."""

    runs: list[tuple[Path, RunResults]] = field(default_factory=list)
    sweeps: list[SweepDir] = field(default_factory=list)
    similarity: list[Path] = field(default_factory=list)
    magnitudes: list[Path] = field(default_factory=list)


def classify(paths: Sequence[str | Path]) -> Inputs:
    """Sort directories into runs, sweeps and analysis outputs (ValueError for anything else)."""
    inputs = Inputs()
    for raw in paths:
        p = Path(raw)
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: no such directory")
        found = False
        if (p / "results.json").is_file():
            inputs.runs.append((p, load_results(p)))
            found = True
        elif is_sweep_dir(p):
            inputs.sweeps.append(read_sweep_dir(p))
            found = True
        if (p / "similarity.json").is_file():
            inputs.similarity.append(p)
            found = True
        if (p / "magnitudes.json").is_file():
            inputs.magnitudes.append(p)
            found = True
        if not found:
            raise ValueError(
                f"{p} is neither a run directory (results.json), a sweep directory (sweep.yaml / "
                "summary.json) nor a `migu analyze` output (similarity.json / magnitudes.json)"
            )
    return inputs


def migu_text(migu: dict[str, Any] | None) -> str:
    """``off`` or ``T=0.7, preset paper, mode grad, on qkv+o+ffn``."""
    if not migu:
        return "off"
    comps = "+".join(migu.get("components") or [])
    return f"T={migu.get('threshold')}, preset {migu.get('preset')}, mode {migu.get('mode')}, on {comps}"


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in text).strip("_") or "x"


@dataclass
class ReportOutput:
    """Paths written, the figures by file stem, and the sentences about missing inputs."""

    markdown: Path
    html: Path
    figures: dict[str, Figure]
    missing: list[str]
    document: Document


# ---------------------------------------------------------------------------- sections
def _runs_section(
    doc: Document,
    runs: list[tuple[Path, RunResults]],
    figdir: Path,
    figures: dict[str, Figure],
    missing: list[str],
) -> None:
    labels = [run_label(r) for _, r in runs]
    labels = [
        f"{lab} [{p.name}]" if labels.count(lab) > 1 else lab
        for lab, (p, _) in zip(labels, runs, strict=True)
    ]
    doc.add(Heading(2, "Runs"))
    metrics = regime_metrics(r for _, r in runs)
    header = [
        "run",
        "directory",
        "seed",
        "tasks",
        *(f"{METRIC_NAMES[m]} (%)" for m in metrics),
        "wall time (s)",
    ]
    rows = []
    for lab, (p, r) in zip(labels, runs, strict=True):
        done = r.trained
        tasks = f"{done}/{len(r.tasks)}"
        wall = r.wall_seconds
        rows.append(
            [
                lab,
                p.name,
                str(r.seed),
                tasks,
                *(_fmt(r.metric(k)) for k in metrics),
                f"{wall:.0f}",
            ]
        )
    doc.add(
        Table(
            header,
            rows,
            "Metrics after the last task, in %. ACC: mean accuracy over all tasks; BWT: "
            "mean change on earlier tasks since they were trained (negative = forgetting); FWT: accuracy "
            "on a task just before training it minus the untrained model's; Forgetting: mean drop from "
            "each earlier task's best accuracy.",
        )
    )
    comparisons = paper_comparisons(r for _, r in runs)
    if comparisons:
        doc.add(Heading(3, "Published vs measured"))
        doc.add(
            Table(
                *paper_table(comparisons),
                caption="The published number each config carries (its `paper:` entry) beside what these "
                "runs measured (mean ± sample std over the runs that carry it), in %.",
            )
        )
    if any(r.baseline is None for _, r in runs):
        missing.append(
            "some runs have no untrained baseline (eval_baseline: false): their FWT is shown as '-'"
        )
    for lab, (p, r) in zip(labels, runs, strict=True):
        doc.add(Heading(3, f"{lab} ({p.name})"))
        tasks = list(r.tasks)
        cfg = r.config
        model = (cfg.get("model") or {}).get("name", "?")
        data = cfg.get("data") or {}
        doc.add(
            Para(
                f"Method {r.method}, MIGU {migu_text(r.migu)}, model {model}, "
                f"seed {r.seed}, train rows per task {data.get('train_n') or 'all'}, "
                f"test rows per task "
                f"{data.get('test_n') or 'all'}. Task order: {', '.join(tasks)}."
            )
        )
        if not r.complete:
            missing.append(
                f"run {p.name} is unfinished ({r.trained} of {len(tasks)} tasks): it has no final metrics"
            )
            doc.add(Para(f"This run is unfinished: {r.trained} of {len(tasks)} tasks trained."))
        header = ["after task", *tasks]
        body = []
        if r.baseline is not None:
            body.append(["(untrained)", *(_fmt(v) for v in r.baseline)])
        for t, row in zip(tasks, r.matrix, strict=False):
            body.append([t, *(_fmt(v) for v in row)])
        doc.add(Table(header, body, "Accuracy (%) on each task (columns) after training each task (rows)."))
        stem = f"acc_matrix_{_slug(p.name)}"
        figures[stem] = plots.plot_accuracy_matrix(r, title=f"Accuracy matrix, {lab}")
        doc.add(
            Image(
                plots.save(figures[stem], figdir / f"{stem}.png"),
                f"accuracy matrix of {lab}",
                "Rows: training stage; columns: evaluated task; both in the run's order.",
            )
        )
        stem = f"acc_curves_{_slug(p.name)}"
        figures[stem] = plots.plot_accuracy_curves(r, title=f"Per-task accuracy over the sequence, {lab}")
        doc.add(
            Image(
                plots.save(figures[stem], figdir / f"{stem}.png"),
                f"per-task accuracy of {lab}",
                "Each line is one task; the large marker is the stage right after that task was trained.",
            )
        )


def _sweeps_section(
    doc: Document, sweeps: list[SweepDir], figdir: Path, figures: dict[str, Figure], missing: list[str]
) -> None:
    doc.add(Heading(2, "Sweeps"))
    shown: set[str] = set()
    for sweep in sweeps:
        doc.add(Heading(3, f"{sweep.name} ({sweep.path.name})"))
        groups = group_cells([sweep])
        done = len(sweep.cells) - len(sweep.missing)
        doc.add(Para(f"{done} of {len(sweep.cells)} cells finished."))
        if sweep.missing:
            missing.append(
                f"sweep {sweep.name}: {len(sweep.missing)} unfinished cell(s) left out: "
                + ", ".join(sweep.missing)
            )
        if not groups:
            doc.add(Para("No finished cell: nothing to summarise."))
            continue
        header, rows = method_table(groups)
        doc.add(Table(header, rows, "Mean ± sample std over seeds, in % (one seed: no std)."))
        sweep_figs, _ = sweep_figures(groups, sweep.name)
        for stem, fig in sweep_figs.items():
            name = f"{stem}_{_slug(sweep.name)}"
            figures[name] = fig
            shown.add(stem)
            caption = _FIGURE_CAPTIONS[next(k for k in _FIGURE_CAPTIONS if stem.startswith(k))]
            doc.add(Image(plots.save(fig, figdir / f"{name}.png"), f"{stem} of {sweep.name}", caption))
        for kind, effects in effect_sections(groups).items():
            doc.add(Heading(4, EFFECT_TITLES[kind]))
            doc.add(Table(*effects_table(effects), caption=_EFFECT_CAPTION))
            doc.add(Bullets([e.sentence() for e in effects]))
        comparisons = paper_comparisons(c.results for c in sweep.cells if c.results is not None)
        if comparisons:
            doc.add(Heading(4, "Published vs measured"))
            doc.add(
                Table(
                    *paper_table(comparisons),
                    caption="The sweep's `paper:` numbers beside the mean over every finished cell that "
                    "carries them (all seeds, and all orders where the paper reports a mean over orders).",
                )
            )
        comp = components_table(groups)
        if comp:
            shown.add("components")
            doc.add(Heading(4, "MIGU on block components"))
            doc.add(
                Table(
                    *comp,
                    caption="Which linear layers of each block get MIGU (qkv: attention Q/K/V; "
                    "o: attention output; ffn: feed-forward). Mean ± std over seeds, in %.",
                )
            )
    if "violin_acc" not in shown:
        missing.append(
            "no sweep ran a method both without and with MIGU over two or more seeds: no violin plot of "
            "ACC across seeds"
        )
    if "threshold_acc" not in shown:
        missing.append("no sweep ran a method at two or more MIGU thresholds: no threshold curve")
    if "components" not in shown:
        missing.append("no sweep ran MIGU on different block components: no components table")


def _copy_figure(src: Path, figdir: Path, prefix: str) -> Path:
    dst = figdir / f"{prefix}_{src.name}"
    shutil.copyfile(src, dst)
    return dst


def _analyses_section(doc: Document, inputs: Inputs, figdir: Path) -> None:
    doc.add(Heading(2, "Analyses"))
    for d in inputs.similarity:
        data = json.loads((d / "similarity.json").read_text())
        layer = data["layer"]
        doc.add(Heading(3, f"Task similarity ({d.name})"))
        doc.add(
            Para(
                f"Overlap of the rows MIGU would update for each task ({data['normalisation']}), "
                f"layer {layer}."
            )
        )
        rows = []
        for r in data["runs"]:
            lay = r["layers"][layer]
            rows.append(
                [
                    r["label"],
                    f"{r['threshold']:g}",
                    str(r["checkpoint"]),
                    str(max(r["samples_per_task"].values())),
                    f"{100 * lay['between_tasks']:.1f}",
                    f"{100 * lay['chance']:.1f}",
                    f"{100 * r['mean_over_layers_between_tasks']:.1f}",
                ]
            )
        doc.add(
            Table(
                [
                    "run",
                    "T",
                    "checkpoint",
                    "rows per task",
                    "between-task overlap, this layer (%)",
                    "chance (%)",
                    "between-task overlap, mean over layers (%)",
                ],
                rows,
            )
        )
        for stem in ("similarity_layer", "similarity_mean", "similarity_by_layer"):
            if (d / f"{stem}.png").is_file():
                doc.add(Image(_copy_figure(d / f"{stem}.png", figdir, _slug(d.name)), stem))
    for d in inputs.magnitudes:
        data = json.loads((d / "magnitudes.json").read_text())
        doc.add(Heading(3, f"Magnitude distribution ({d.name})"))
        doc.add(
            Para(
                f"One train row per task ({', '.join(data['tasks'])}) on {data['layer']} of {data['run']}; "
                f"{data['smoothing']}. Updated rows at T = {data['threshold']:g}."
            )
        )
        if (d / "magnitudes.png").is_file():
            doc.add(
                Image(_copy_figure(d / "magnitudes.png", figdir, _slug(d.name)), "magnitude distribution")
            )


def build_report(
    paths: Sequence[str | Path], out: str | Path, title: str = "MIGU report", pool: bool = False
) -> ReportOutput:
    """Write ``out/report.md``, ``out/report.html`` and ``out/figures/*.png`` from the inputs.

    ``pool``: the sweep directories as one sweep (``pooled``, which checks they ran the same setup
    on the same rows), so a baseline tuned in one pairs with FT or LoRA in another, as in
    ``migu analyze sweep --pool``."""
    inputs = classify(paths)
    if pool:
        inputs.sweeps = pooled(inputs.sweeps)
    out = Path(out).resolve()
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    doc = Document()
    figures: dict[str, Figure] = {}
    missing: list[str] = []
    doc.add(Heading(1, title))
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    doc.add(Para(f"Generated {stamp} by migu report from saved results (nothing was retrained). Inputs:"))
    items = [f"run: {p}" for p, _ in inputs.runs] + [f"sweep: {s.path}" for s in inputs.sweeps]
    items += [f"similarity analysis: {p}" for p in inputs.similarity]
    items += [f"magnitude analysis: {p}" for p in inputs.magnitudes]
    doc.add(Bullets(items or ["(none)"]))
    summary_at = len(doc.blocks)  # the "missing" list goes here once every section has spoken

    if inputs.runs:
        _runs_section(doc, inputs.runs, figdir, figures, missing)
    else:
        missing.append(
            "no run directory was given: no accuracy matrices, per-task accuracy curves or per-run metrics"
        )
    if inputs.sweeps:
        _sweeps_section(doc, inputs.sweeps, figdir, figures, missing)
    else:
        missing.append(
            "no sweep directory was given: no method x MIGU table over seeds (mean ± std), no violin "
            "plot of ACC across seeds and no threshold curve"
        )
    if inputs.similarity or inputs.magnitudes:
        _analyses_section(doc, inputs, figdir)
    if not inputs.similarity:
        missing.append("no `migu analyze similarity` output was given: no task-similarity heatmaps")
    if not inputs.magnitudes:
        missing.append("no `migu analyze magnitudes` output was given: no magnitude distribution plot")

    head: list[Block] = [Heading(2, "Not in this report")]
    head.append(
        Bullets([m[0].upper() + m[1:] + "." for m in missing])
        if missing
        else Para("Every kind of input was given.")
    )
    doc.blocks[summary_at:summary_at] = head
    md = out / "report.md"
    md.write_text(doc.to_markdown(out))
    page = out / "report.html"
    page.write_text(doc.to_html(title))
    log.info("report: %s and %s (%d figures)", md, page, len(list(figdir.glob("*.png"))))
    return ReportOutput(md, page, figures, missing, doc)


__all__ = ["Document", "ReportOutput", "build_report", "classify"]
