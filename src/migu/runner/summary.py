"""Sweep summaries, the one aggregation: ``migu sweep`` (summary.md) and ``migu analyze sweep``
(sweep_summary.md, figures) both read a sweep directory here and group its cells the same way.

Cells are grouped by what their own results say (method, MIGU threshold and components) plus the
sweep's other grid values (seed excepted), so sweeps of any grid shape combine; the seeds of a
group give mean and sample standard deviation.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..engine import COMPONENTS
from ..methods import LoRA, get_method_class, list_methods, paper_name
from ..metrics import Interval, paired_bootstrap, paired_t_interval
from .results import METRICS, RESULTS_FILE, ResultsError, RunResults, load_results

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


SWEEP_FILE = "sweep.yaml"


@dataclass
class SweepCell:
    """One run of a sweep directory; ``results`` is None when it is missing or unfinished."""

    name: str
    values: dict[str, Any]
    path: Path
    results: RunResults | None


@dataclass
class SweepDir:
    """A sweep directory as read from disk."""

    name: str
    path: Path
    cells: list[SweepCell]
    # grid keys ``migu tune`` chose per setting (its test/ directory): shown, not grouped by, so a
    # method tuned to one lr without MIGU and another with it still pairs
    tuned: tuple[str, ...] = ()

    @property
    def missing(self) -> list[str]:
        """Cells without a finished run."""
        return [c.name for c in self.cells if c.results is None]


def is_sweep_dir(path: str | Path) -> bool:
    """A directory made by ``migu sweep`` (sweep.yaml or summary.json, no results.json of its own)."""
    p = Path(path)
    return (
        p.is_dir()
        and not (p / RESULTS_FILE).is_file()
        and ((p / SWEEP_FILE).is_file() or (p / "summary.json").is_file())
    )


def _finished(path: Path) -> RunResults | None:
    if not (path / RESULTS_FILE).is_file():
        return None
    res = load_results(path)
    return res if res.complete else None


def read_sweep_dir(path: str | Path) -> SweepDir:
    """Cells from ``sweep.yaml`` (else every sub-directory holding a results.json)."""
    p = Path(path)
    spec_path = p / SWEEP_FILE
    if spec_path.is_file():
        try:
            spec = yaml.safe_load(spec_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ResultsError(f"{spec_path}: not valid YAML ({exc})") from None
        names = [(str(c["name"]), dict(c.get("values") or {})) for c in spec.get("cells") or []]
        cells = [SweepCell(name, values, p / name, _finished(p / name)) for name, values in names]
        tuned = spec.get("tuned") or []
        if not isinstance(tuned, list) or not all(isinstance(k, str) for k in tuned):
            raise ResultsError(f"{spec_path}: 'tuned' must be a list of grid keys, got {tuned!r}")
        return SweepDir(str(spec.get("name") or p.name), p, cells, tuple(tuned))
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such directory")
    dirs = [d for d in sorted(p.iterdir()) if (d / RESULTS_FILE).is_file()]
    if not dirs:
        raise FileNotFoundError(f"{p} has no {SWEEP_FILE} and no run directories: not a sweep directory")
    return SweepDir(p.name, p, [SweepCell(d.name, {}, d, _finished(d)) for d in dirs])


# Config fields a pooled comparison may differ in: what names a run or says where its files are, and
# what the grids vary on purpose (method and its options, MIGU, seed). Everything else must agree.
POOL_FREE = ("name", "seed", "method", "migu", "data_root", "keep_checkpoints", "tensorboard", "paper")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (empty dicts kept as values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _grid_keys(sweep: SweepDir) -> set[str]:
    """Every config key a sweep's grid sets (bundle keys included, their labels not)."""
    keys = set(sweep.tuned)
    for c in sweep.cells:
        for k, v in c.values.items():
            keys.update((kk for kk in v if kk != "label") if isinstance(v, dict) else (k,))
    return keys


def _eval_rows(res: RunResults) -> dict[str, Any]:
    """Task -> digest of the rows it was scored on (empty for results that predate the digests)."""
    out = {}
    for task, info in res.per_task.items():
        split = info.get("eval_split") if isinstance(info, dict) else None
        digest = (info.get(split) or {}).get("index_digest") if split else None
        if digest is not None:
            out[task] = digest
    return out


def pool_sweeps(sweeps: Sequence[SweepDir], labels: Sequence[str]) -> SweepDir:
    """The cells of ``sweeps`` as one sweep, so a method in one pairs with its base method in another
    (the baselines' ``migu tune`` against FT's). Refused with a ResultsError naming the field and two
    cells unless every finished cell ran the same setup apart from what the grids vary (``POOL_FREE``
    and the grid keys) and runs of one seed were scored on the same rows. A field only one side has
    (added to the config schema later, at its default) is not compared."""
    free = set(POOL_FREE).union(*(_grid_keys(s) for s in sweeps))

    def compared(key: str) -> bool:
        return not any(key == f or key.startswith(f"{f}.") for f in free)

    cells: list[SweepCell] = []
    seen: dict[str, tuple[Any, str]] = {}  # config key -> (value, first cell that had it)
    rows: dict[int, tuple[dict[str, Any], str]] = {}  # seed -> (scored rows, first cell)
    for sweep, label in zip(sweeps, labels, strict=True):
        for c in sweep.cells:
            name = f"{label}/{c.name}"
            cells.append(SweepCell(name, c.values, c.path, c.results))
            if c.results is None:
                continue
            for key, value in _flat(c.results.config).items():
                if not compared(key):
                    continue
                first = seen.setdefault(key, (value, name))
                if first[0] != value:
                    raise ResultsError(
                        f"cannot pool these sweeps: {first[1]} ran with {key}={first[0]!r}, {name} with "
                        f"{key}={value!r}; pooled cells must share the setup apart from the grid keys"
                    )
            scored = _eval_rows(c.results)
            first_rows = rows.setdefault(c.results.seed, (scored, name))
            common = first_rows[0].keys() & scored.keys()
            if any(first_rows[0][t] != scored[t] for t in common):
                raise ResultsError(
                    f"cannot pool these sweeps: {first_rows[1]} and {name} (seed {c.results.seed}) were "
                    "scored on different rows (per_task index digests differ); pairing needs the same rows"
                )
    tuned = tuple(dict.fromkeys(k for s in sweeps for k in s.tuned))
    return SweepDir(" + ".join(labels), sweeps[0].path, cells, tuned)


def migu_setting(results: RunResults) -> tuple[float | None, tuple[str, ...] | None, str | None]:
    """(threshold, components, cluster strategy) of a run; (None, None, None) without MIGU, cluster
    None for plain (per-row) MIGU."""
    if not results.migu:
        return None, None, None
    cluster = results.migu.get("cluster")
    strategy = str(cluster.get("strategy", "weight")) if isinstance(cluster, dict) else None
    return (
        float(results.migu.get("threshold", 0.0)),
        tuple(results.migu.get("components") or COMPONENTS),
        strategy,
    )


def setting_label(
    threshold: float | None, components: tuple[str, ...] | None, cluster: str | None = None
) -> str:
    """``off``, ``T=0.7``, ``T=0.7 qkv+o`` (components shown only when not all three) or
    ``T=0.7 cluster=weight`` (MIGU+Cluster)."""
    if threshold is None:
        return "off"
    label = f"T={threshold:g}"
    if components and set(components) != set(COMPONENTS):
        label += " " + "+".join(components)
    if cluster:
        label += f" cluster={cluster}"
    return label


@dataclass
class Group:
    """Finished runs of one method and MIGU setting (and other grid values), over seeds."""

    method: str
    threshold: float | None
    components: tuple[str, ...] | None
    extra: str
    cluster: str | None = None  # MIGU+Cluster strategy, None for per-row MIGU (or MIGU off)
    runs: list[RunResults] = field(default_factory=list)
    grid: dict[str, str] = field(default_factory=dict)  # the cells' grid labels, seed excepted
    tuned: dict[str, str] = field(default_factory=dict)  # the values ``migu tune`` chose (grid labels)

    def add(self, results: RunResults, values: dict[str, Any]) -> None:
        self.runs.append(results)
        for k, v in values.items():
            if k == "seed":
                continue
            label = grid_label(k, v)
            old = self.grid.get(k)
            self.grid[k] = label if old is None or old == label else f"{old}/{label}"

    @property
    def setting(self) -> str:
        return setting_label(self.threshold, self.components, self.cluster)

    def values(self, metric: str) -> list[float]:
        return [v for r in self.runs if (v := r.metric(metric)) is not None]

    def mean_std(self, metric: str) -> tuple[float | None, float | None]:
        """Mean and sample std over seeds (std None for one seed: undefined; both None without values)."""
        v = self.values(metric)
        if not v:
            return None, None
        return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else None

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]


def migu_grid_value(value: Any) -> Any:
    """Grid values for ``migu``: off/false/null -> None, on/true -> {} (method default), a number ->
    that threshold, a mapping as is."""
    # Identity/str checks, not ``in``: 0.0 == False and 1 == True in Python.
    if value is None or value is False or value in ("off", "none"):
        return None
    if value is True or value == "on":
        return {}
    if isinstance(value, int | float):
        return {"threshold": float(value)}
    return value


def grid_label(key: str, value: Any) -> str:
    """How a cell's grid value is named (directory names, summary columns)."""
    if key == "migu":
        value = migu_grid_value(value)
        if value is None:
            return "off"
        if isinstance(value, dict) and "label" not in value:
            return "on" if not value else "-".join(f"{k}{v}" for k, v in value.items())
    if isinstance(value, dict) and "label" in value:
        return str(value["label"])
    if value is None:
        return "off"
    if isinstance(value, list | tuple):
        return "+".join(str(v) for v in value)
    return str(value)


def method_rank(method: str) -> int:
    """The registry's order (the paper's: FT, LoRA, IncLoRA, OIncLoRA, LoRAReplay, ...), others after."""
    order = list_methods()
    return order.index(method) if method in order else len(order)


def _described(key: str) -> bool:
    """A config key whose effect a run's results record (its method and MIGU setting)."""
    return key in ("method", "method.name", "migu") or key.startswith("migu.")


def group_keys(
    cells: Sequence[tuple[RunResults, dict[str, Any]]], skip: Sequence[str] = ("seed",)
) -> list[tuple[tuple[Any, ...], str]]:
    """Each cell's group key (method, MIGU setting, other settings) and its other settings as shown.

    The method and MIGU setting come from the results. A plain grid key (``skip`` excepted) is shown
    as ``key=value``. An override bundle (recipe) is shown by the keys it sets beyond the method and
    MIGU, and only those whose value differs between bundles of the same method: so
    ``{label: ewc+migu, method.name: ewc, train.lr: 1e-4, migu: {}}`` pairs with ``{label: ewc,
    method.name: ewc, train.lr: 1e-4, migu: null}`` instead of differing by its label.
    """
    plain: list[dict[str, str]] = []
    bundled: list[dict[str, str]] = []
    for _, values in cells:
        p: dict[str, str] = {}
        b: dict[str, str] = {}
        for k, v in values.items():
            if k in skip or _described(k):
                continue
            if isinstance(v, dict):  # a bundle of overrides, applied as in sweep.load_sweep
                b.update(
                    {kk: grid_label(kk, vv) for kk, vv in v.items() if kk != "label" and not _described(kk)}
                )
            else:
                p[k] = grid_label(k, v)
        plain.append(p)
        bundled.append(b)
    keys = {k for b in bundled for k in b}
    seen: dict[str, dict[str, set[str | None]]] = {}  # method -> bundle key -> values over its cells
    for (res, _), b in zip(cells, bundled, strict=True):
        per = seen.setdefault(res.method, {})
        for k in keys:
            per.setdefault(k, set()).add(b.get(k))
    out = []
    for (res, _), p, b in zip(cells, plain, bundled, strict=True):
        varying = {k: v for k, v in b.items() if len(seen[res.method][k]) > 1}
        extra = ", ".join(f"{k}={v}" for k, v in {**p, **varying}.items())
        t, comps, cluster = migu_setting(res)
        out.append(((res.method, t, tuple(sorted(comps)) if comps else None, cluster, extra), extra))
    return out


def group_cells(sweeps: Sequence[SweepDir]) -> list[Group]:
    """Finished cells of all ``sweeps`` grouped by (method, MIGU setting, other grid values)."""
    done = [(c.results, c.values, s.tuned) for s in sweeps for c in s.cells if c.results is not None]
    # a tuned key is what was chosen, not a setting: the group key leaves it out, the table shows it
    keyed = [(res, {k: v for k, v in values.items() if k not in tuned}) for res, values, tuned in done]
    groups: dict[tuple[Any, ...], Group] = {}
    for (res, values, tuned), (key, extra) in zip(done, group_keys(keyed), strict=True):
        t, comps, cluster = migu_setting(res)
        g = groups.setdefault(key, Group(res.method, t, comps, extra, cluster))
        g.add(res, values)
        g.tuned.update({k: g.grid[k] for k in tuned if k in g.grid})
    return sorted(
        groups.values(),
        key=lambda g: (
            method_rank(g.method),
            g.method,
            g.extra,
            g.threshold is not None,
            g.threshold or 0.0,
            g.cluster is not None,
            g.setting,
        ),
    )


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


# ---------------------------------------------------------------------------- paired effects
@dataclass(frozen=True)
class Effect:
    """One setting minus its baseline, paired by seed (and by test row): MIGU on minus MIGU off,
    MIGU+Cluster minus per-row MIGU at the same threshold (both on the same method), or a method
    minus its plain base method (``baseline`` then names it: ``FT``, ``FT, T=0.7``)."""

    method: str
    setting: str  # the MIGU setting (e.g. T=0.7, T=0.7 cluster=weight)
    extra: str
    metric: str
    seeds: list[int]
    by_seed: Interval | None  # paired t over seeds (None for one seed)
    by_rows: Interval | None  # paired bootstrap over test rows (None without per-row results)
    baseline: str = "off"  # the setting subtracted (or the base method and its setting)

    @property
    def contrast(self) -> str:
        """The compared settings as a table shows them: ``T=0.7``, or ``T=0.7 cluster=weight vs T=0.7``."""
        return self.setting if self.baseline == "off" else f"{self.setting} vs {self.baseline}"

    @property
    def what(self) -> str:
        """What the difference measures, as a sentence names it."""
        return f"MIGU ({self.setting})" if self.baseline == "off" else self.contrast

    def sentence(self) -> str:
        best = self.by_seed or self.by_rows
        head = f"{paper_name(self.method)}: "
        if best is None:
            return head + "no interval (one seed, no per-row results)"
        out = head + best.sentence(self.what)
        if self.by_seed is not None and self.by_rows is not None:
            r = self.by_rows
            out += f"; over test rows {100 * r.mean:+.1f} [{100 * r.low:+.1f}, {100 * r.high:+.1f}]"
        return out


# the metrics whose value is the mean over tasks of the accuracy of the rows in ``final_correct``
ROW_METRICS = ("acc", "final_acc")


def _paired(g: Group, base: Group, metric: str, split: str) -> Effect | None:
    """``g`` minus ``base`` on the seeds both finished: t over seeds, bootstrap over test rows."""
    on = {r.seed: r for r in g.runs if r.metric(metric) is not None}
    off = {r.seed: r for r in base.runs if r.metric(metric) is not None}
    seeds = sorted(on.keys() & off.keys())
    if not seeds:
        return None
    a = [off[s].metric(metric) for s in seeds]
    b = [on[s].metric(metric) for s in seeds]
    by_seed = paired_t_interval(a, b)  # type: ignore[arg-type]
    rows_a = [(off[s].final_correct or {}).get(split) for s in seeds]
    rows_b = [(on[s].final_correct or {}).get(split) for s in seeds]
    by_rows = None
    # the rows' 0/1 resample accuracy only: an F1 difference has no bootstrap over rows here
    if metric in ROW_METRICS and all(rows_a) and all(rows_b):
        by_rows = paired_bootstrap(rows_a, rows_b, seed=0)  # type: ignore[arg-type]
    return Effect(g.method, g.setting, g.extra, metric, seeds, by_seed, by_rows, base.setting)


def paired_effects(groups: Sequence[Group], metric: str = "acc", split: str = "test") -> list[Effect]:
    """For each method run without and with MIGU (same other settings), the paired difference of
    ``metric`` on the seeds both have, with a t interval over seeds and a bootstrap over rows."""
    offs = {(g.method, g.extra): g for g in groups if g.threshold is None}
    pairs = [(g, offs.get((g.method, g.extra))) for g in groups if g.threshold is not None]
    return [e for g, base in pairs if base is not None and (e := _paired(g, base, metric, split))]


def cluster_effects(groups: Sequence[Group], metric: str = "acc", split: str = "test") -> list[Effect]:
    """For each MIGU+Cluster group, the paired difference against per-row MIGU of the same method,
    threshold, components and other settings (the paper's No Cluster vs Weight / Co-magnitude)."""

    def key(g: Group) -> tuple[Any, ...]:
        return (g.method, g.threshold, g.components, g.extra)

    plain = {key(g): g for g in groups if g.threshold is not None and g.cluster is None}
    pairs = [(g, plain.get(key(g))) for g in groups if g.cluster is not None]
    return [e for g, base in pairs if base is not None and (e := _paired(g, base, metric, split))]


def base_method(method: str) -> str | None:
    """The plain method a CL method builds on, the one a user would run instead: ``lora`` for the
    LoRA family (LoRA+EWC, IncLoRA, ...), ``ft`` for the rest (EWC, DER++, OSF, DAS, ...); None for
    those two themselves and for a name no method is registered under."""
    try:
        cls = get_method_class(method)
    except ValueError:
        return None
    base = "lora" if issubclass(cls, LoRA) else "ft"
    return None if cls.name == base else base


def base_effects(
    groups: Sequence[Group], metric: str = "acc", split: str = "test", with_migu: bool = False
) -> list[Effect]:
    """Each method's groups minus its plain base method (``base_method``) on the seeds both have.

    ``with_migu`` False: against the base without MIGU (every setting of the method: is EWC, or
    EWC+MIGU, better than plain FT?). True: the method without MIGU against the base with MIGU (the
    paper's DAS vs FT+MIGU), where the base has exactly one per-row MIGU setting. The base group is
    the one with the same other settings, else the only candidate; with several, none is guessed.
    """
    candidates: dict[str, list[Group]] = {}
    for g in groups:
        if g.cluster is None and (g.threshold is not None) == with_migu:
            candidates.setdefault(g.method, []).append(g)
    out: list[Effect] = []
    for g in groups:
        ref = base_method(g.method)
        if ref is None or (with_migu and g.threshold is not None) or g.cluster is not None:
            continue
        pool = candidates.get(ref, [])
        same = [b for b in pool if b.extra == g.extra]
        pick = same if same else pool
        if len(pick) != 1:
            continue
        base = pick[0]
        label = paper_name(ref) + (f", {base.setting}" if with_migu else "")
        e = _paired(g, base, metric, split)
        if e is not None:
            out.append(dataclasses.replace(e, baseline=label))
    return out


EFFECT_TITLES = {
    "migu": "MIGU effect on ACC (with minus without MIGU, paired by seed)",
    "migu_mf1": "MIGU effect on macro-F1 (with minus without MIGU, paired by seed)",
    "cluster": "MIGU+Cluster effect on ACC (cluster minus per-row MIGU at the same T, paired by seed)",
    "vs_base": "Against the plain method (FT, or LoRA for the LoRA family) without MIGU, on ACC "
    "(method minus base, paired by seed)",
    "vs_base_migu": "Against the plain method with MIGU, on ACC (method without MIGU minus base with "
    "MIGU, paired by seed: the paper's DAS vs FT+MIGU)",
}


def effect_sections(groups: Sequence[Group]) -> dict[str, list[Effect]]:
    """The paired contrasts a set of groups allows, by kind (``EFFECT_TITLES``), empty kinds left out:
    what every summary (sweep, analyze sweep, report) shows."""
    acc = acc_metric(groups)
    found = {
        "migu": paired_effects(groups, acc),
        # continual pre-training also reports the end tasks' macro-F1
        "migu_mf1": paired_effects(groups, "final_mf1") if acc == "final_acc" else [],
        "cluster": cluster_effects(groups, acc),
        "vs_base": base_effects(groups, acc),
        "vs_base_migu": base_effects(groups, acc, with_migu=True),
    }
    return {k: v for k, v in found.items() if v}


def effects_table(effects: Sequence[Effect]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the paired MIGU effects (in points)."""
    header = ["method", "MIGU", "seeds", "mean diff", "95% CI over seeds", "95% CI over test rows", "verdict"]

    def ci(iv: Interval | None) -> str:
        return "-" if iv is None else f"[{100 * iv.low:+.1f}, {100 * iv.high:+.1f}]"

    rows = []
    for e in effects:
        best = e.by_seed or e.by_rows
        verdict = "-" if best is None else ("differs" if best.excludes_zero else "no difference detected")
        mean = "-" if best is None else f"{100 * best.mean:+.2f}"
        rows.append(
            [
                paper_name(e.method) + (f" ({e.extra})" if e.extra else ""),
                e.contrast,
                str(len(e.seeds)),
                mean,
                ci(e.by_seed),
                ci(e.by_rows),
                verdict,
            ]
        )
    return header, rows


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
        setting = setting_label(*migu_setting(r))
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
