"""Paired effects: a setting minus its baseline on the seeds (and test rows) both have. MIGU on
minus off, MIGU+Cluster minus per-row MIGU, and a method minus its plain base method, each with a
paired t interval over seeds and a paired bootstrap over test rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..methods import LoRA, get_method_class, paper_name
from ..metrics import Interval, paired_bootstrap, paired_t_interval
from .groups import Group
from .tables import acc_metric


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
