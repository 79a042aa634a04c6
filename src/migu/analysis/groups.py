"""Sweep directories as the analyses read them, and the one grouping of their cells: ``migu sweep``
(summary.md), ``migu tune`` and ``migu analyze sweep`` all group cells here, the same way.

Cells are grouped by what their own results say (method, MIGU setting) plus the sweep's other grid
values (seed excepted), so sweeps of any grid shape combine; the seeds of a group give mean and
sample standard deviation (``analysis.tables``) and the paired effects (``analysis.effects``).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data.provenance import saved_rows_digest
from ..engine import COMPONENTS
from ..methods import list_methods
from ..runner.results import RESULTS_FILE, ResultsError, RunResults, load_results

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
    for task, entry in res.per_task.items():
        digest = saved_rows_digest(entry)  # None for pretrain runs' domain records
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


@dataclass(frozen=True)
class MIGUSetting:
    """MIGU as a run's results record it: off (``threshold`` None), or its threshold, the block
    components it watched (None: all) and the MIGU+Cluster strategy (None: per-row MIGU)."""

    threshold: float | None = None
    components: tuple[str, ...] | None = None
    cluster: str | None = None

    @classmethod
    def of(cls, results: RunResults) -> MIGUSetting:
        """The setting of a finished run (its resolved ``migu`` config)."""
        migu = results.migu
        if not migu:
            return cls()
        cluster = migu.get("cluster")
        return cls(
            float(migu.get("threshold", 0.0)),
            tuple(migu.get("components") or COMPONENTS),
            str(cluster.get("strategy", "weight")) if isinstance(cluster, dict) else None,
        )

    @property
    def on(self) -> bool:
        return self.threshold is not None

    @property
    def key(self) -> tuple[Any, ...]:
        """What groups runs: the same threshold, components (in any order) and cluster strategy."""
        return (self.threshold, tuple(sorted(self.components)) if self.components else None, self.cluster)

    @property
    def label(self) -> str:
        """``off``, ``T=0.7``, ``T=0.7 qkv+o`` (components shown only when not all three) or
        ``T=0.7 cluster=weight`` (MIGU+Cluster)."""
        if self.threshold is None:
            return "off"
        label = f"T={self.threshold:g}"
        if self.components and set(self.components) != set(COMPONENTS):
            label += " " + "+".join(self.components)
        if self.cluster:
            label += f" cluster={self.cluster}"
        return label


@dataclass
class Group:
    """Finished runs of one method and MIGU setting (and other grid values), over seeds."""

    method: str
    migu: MIGUSetting
    extra: str
    runs: list[RunResults] = field(default_factory=list)
    grid: dict[str, str] = field(default_factory=dict)  # the cells' grid labels, seed excepted
    tuned: dict[str, str] = field(default_factory=dict)  # the values ``migu tune`` chose (grid labels)

    @property
    def threshold(self) -> float | None:
        return self.migu.threshold

    @property
    def components(self) -> tuple[str, ...] | None:
        return self.migu.components

    @property
    def cluster(self) -> str | None:
        """MIGU+Cluster strategy, None for per-row MIGU (or MIGU off)."""
        return self.migu.cluster

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
        return self.migu.label

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
        out.append(((res.method, *MIGUSetting.of(res).key, extra), extra))
    return out


def group_cells(sweeps: Sequence[SweepDir]) -> list[Group]:
    """Finished cells of all ``sweeps`` grouped by (method, MIGU setting, other grid values)."""
    done = [(c.results, c.values, s.tuned) for s in sweeps for c in s.cells if c.results is not None]
    # a tuned key is what was chosen, not a setting: the group key leaves it out, the table shows it
    keyed = [(res, {k: v for k, v in values.items() if k not in tuned}) for res, values, tuned in done]
    groups: dict[tuple[Any, ...], Group] = {}
    for (res, values, tuned), (key, extra) in zip(done, group_keys(keyed), strict=True):
        g = groups.setdefault(key, Group(res.method, MIGUSetting.of(res), extra))
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
