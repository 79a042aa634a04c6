"""Figures of the analyses and reports, as matplotlib ``Figure`` objects (no global pyplot state).

Every function returns the Figure so callers (and tests) can inspect its axes before saving.
Conventions: values shown in percent, task names on axes in the run's order, colour maps that
stay readable in grey print (viridis / cividis), heatmap cells annotated with their value, and
lines told apart by marker and dash as well as by colour.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure  # pyplot-free: no window, no global figure list to leak
from matplotlib.image import AxesImage

from ..runner.results import RunResults

HEATMAP_CMAP = "viridis"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p", "8", "H", "d")
DASHES = ("-", "--", "-.", ":")
DPI = 110


def series_style(i: int, n: int) -> dict[str, Any]:
    """Colour (viridis, spread in lightness), marker and dash of series ``i`` of ``n``."""
    cmap = matplotlib.colormaps["viridis"]
    colour = cmap(0.0 if n <= 1 else 0.75 * i / (n - 1))  # stop before yellow: visible on white
    return {"color": colour, "marker": MARKERS[i % len(MARKERS)], "linestyle": DASHES[i % len(DASHES)]}


def _text_colour(rgba: Sequence[float]) -> str:
    """Black on light cells, white on dark ones (relative luminance)."""
    r, g, b = rgba[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"


def heatmap(
    ax: Axes,
    data: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    vmin: float = 0.0,
    vmax: float = 100.0,
    cmap: str = HEATMAP_CMAP,
    fmt: str = "{:.0f}",
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
) -> AxesImage:
    """An annotated heatmap on ``ax``; NaN cells are left blank (light grey)."""
    data = np.asarray(data, dtype=float)
    cm = matplotlib.colormaps[cmap].with_extremes(bad="#eeeeee")
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cm, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(col_labels)), labels=list(col_labels))
    ax.set_yticks(range(len(row_labels)), labels=list(row_labels))
    if max((len(c) for c in col_labels), default=0) > 8 or len(col_labels) > 6:
        ax.tick_params(axis="x", labelrotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
    n = max(data.shape)
    size = 10 if n <= 5 else 8 if n <= 9 else 7
    norm = Normalize(vmin=vmin, vmax=vmax)
    for (i, j), v in np.ndenumerate(data):
        if math.isfinite(v):
            ax.text(
                j, i, fmt.format(v), ha="center", va="center", fontsize=size, color=_text_colour(cm(norm(v)))
            )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return im


def save(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as PNG (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


# ---------------------------------------------------------------------------- similarity
def plot_overlap(
    panels: Sequence[tuple[str, np.ndarray, Sequence[str]]],
    *,
    suptitle: str,
    chance: Sequence[float | None] | None = None,
) -> Figure:
    """Side-by-side overlap heatmaps (one panel per run), shared 0-100 % scale and one colour bar.

    ``panels``: (title, overlap matrix as fractions, task names in the run's order).
    """
    n = len(panels)
    size = max(len(p[2]) for p in panels)
    cell = 0.55 if size > 6 else 0.9
    side = max(3.2, 1.6 + cell * size)
    fig = Figure(figsize=(side * n + 1.0, side + 0.9), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    im = None
    for k, (ax, (title, matrix, tasks)) in enumerate(zip(axes, panels, strict=True)):
        sub = title
        if chance is not None and chance[k] is not None:
            sub += f"\nchance level {100 * chance[k]:.0f} %"  # type: ignore[operator]
        im = heatmap(
            ax,
            100 * np.asarray(matrix, dtype=float),
            tasks,
            tasks,
            xlabel="task B",
            ylabel="task A" if k == 0 else "",
            title=sub,
        )
        ax.set_aspect("equal")
    assert im is not None
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="overlap |A ∩ B| / |A| (%)")
    fig.suptitle(suptitle)
    return fig


def plot_overlap_by_layer(
    series: Sequence[tuple[str, Sequence[str], Sequence[float]]],
    *,
    chance: Sequence[float] | None,
    title: str,
) -> Figure:
    """Mean between-task overlap (%) of every analysed layer, one line per run; ``chance`` (one
    value per layer: k / d_out) dotted."""
    names = list(series[0][1])
    fig = Figure(figsize=(max(6.0, 0.28 * len(names) + 2.5), 4.2), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(names))
    for i, (label, layers, values) in enumerate(series):
        if list(layers) != names:
            raise ValueError("every run must have the same analysed layers to share one axis")
        y = 100 * np.asarray(values, dtype=float)
        ax.plot(x, y, label=label, markersize=5, **series_style(i, len(series)))
    if chance is not None:
        c = 100 * np.asarray(chance, dtype=float)
        text = f"{c.min():.0f} %" if np.ptp(c) < 0.5 else f"{c.min():.0f}-{c.max():.0f} %"
        ax.plot(x, c, color="grey", linestyle=":", linewidth=1.4, label=f"chance, k / d_out ({text})")
    ax.set_xticks(x, labels=names, rotation=90, fontsize=7)
    ax.set_ylim(0, 100)
    ax.set_xlabel("layer (block number, module)")
    ax.set_ylabel("mean overlap between tasks (%)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return fig


# ---------------------------------------------------------------------------- magnitudes
def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average of the same length; the window shrinks at the edges (no zero padding)."""
    v = np.asarray(values, dtype=float)
    if window <= 1 or v.size == 0:
        return v.copy()
    kernel = np.ones(int(window))
    sums = np.convolve(v, kernel, mode="same")
    counts = np.convolve(np.ones_like(v), kernel, mode="same")
    return sums / counts


def plot_magnitudes(
    tasks: Sequence[str],
    vectors: np.ndarray,
    keep: np.ndarray,
    *,
    window: int,
    layer: str,
    threshold: float,
    title: str,
) -> Figure:
    """Top: each task's single-sample magnitude distribution over the rows, smoothed; bottom: the
    rows MIGU would update for that sample at T (one strip per task)."""
    vectors = np.asarray(vectors, dtype=float)
    n, d = vectors.shape
    fig = Figure(figsize=(8.0, 4.2 + 0.35 * n), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3.0, 0.35 * n + 0.4])
    x = np.arange(d)
    for i, task in enumerate(tasks):
        style = series_style(i, n)
        top.plot(
            x,
            100 * moving_average(vectors[i], window),
            label=task,
            color=style["color"],
            linestyle=style["linestyle"],
            linewidth=1.6,
        )
    top.axhline(
        100.0 / d, color="grey", linestyle=":", linewidth=1.0, label=f"uniform (1/{d} = {100 / d:.3g} %)"
    )
    top.set_ylabel("share of the layer's |output| (%)")
    top.set_title(title)
    top.legend(fontsize=8, loc="lower center", ncol=min(n + 1, 4))  # the band below the curves is empty
    top.grid(alpha=0.3)
    top.set_ylim(bottom=0)
    # More rows than pixels would alias: show the share of updated rows per bin of neighbours.
    width = max(1, math.ceil(d / 384))
    k = np.asarray(keep, dtype=float)
    bins = math.ceil(d / width)
    padded = np.full((n, bins * width), np.nan)
    padded[:, :d] = k
    img = np.nanmean(padded.reshape(n, bins, width), axis=2)
    bottom.imshow(
        img,
        aspect="auto",
        cmap="Greys",
        vmin=0,
        vmax=1,
        interpolation="nearest",
        extent=(-0.5, bins * width - 0.5, n - 0.5, -0.5),
    )
    bottom.set_xlim(-0.5, d - 0.5)
    bottom.set_yticks(range(n), labels=list(tasks))
    bottom.set_xlabel(f"output row of {layer} (0 .. {d - 1}, model order, unsorted)")
    binned = f"; grey: share of updated rows in bins of {width}" if width > 1 else ""
    bottom.set_title(f"rows MIGU would update at T = {threshold:g} (black{binned})", fontsize=9)
    return fig


# ---------------------------------------------------------------------------- runs
def plot_accuracy_matrix(results: RunResults, title: str | None = None) -> Figure:
    """Accuracy (%) after each training stage (rows) on each task (columns), run order on both."""
    tasks = list(results.tasks)
    rows = [list(r) for r in results.matrix]
    labels = [f"after {t}" for t in tasks[: len(rows)]]
    if results.baseline is not None:
        rows = [list(results.baseline), *rows]
        labels = ["untrained", *labels]
    data = 100 * np.array(rows, dtype=float) if rows else np.full((1, len(tasks)), np.nan)
    if not rows:
        labels = ["(no finished task)"]
    n = len(tasks)
    fig = Figure(figsize=(max(4.5, 1.6 + 0.75 * n), max(3.2, 1.3 + 0.55 * len(labels))), layout="constrained")
    ax = fig.subplots()
    im = heatmap(
        ax,
        data,
        labels,
        tasks,
        xlabel="evaluated task",
        ylabel="training stage",
        title=title or "",
        fmt="{:.1f}" if n <= 6 else "{:.0f}",
    )
    if results.baseline is not None and len(labels) > 1:
        ax.axhline(0.5, color="white", linewidth=3)  # the untrained row is a reference, not a stage
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    return fig


def plot_accuracy_curves(results: RunResults, title: str | None = None) -> Figure:
    """Each task's accuracy (%) through the training sequence; the big marker = just trained on it."""
    tasks = list(results.tasks)
    matrix = [list(r) for r in results.matrix]
    stages = [f"after {t}" for t in tasks[: len(matrix)]]
    offset = 0
    if results.baseline is not None:
        matrix = [list(results.baseline), *matrix]
        stages = ["untrained", *stages]
        offset = 1
    fig = Figure(figsize=(max(6.0, 1.2 * len(stages) + 2.5), 4.2), layout="constrained")
    ax = fig.subplots()
    data = 100 * np.array(matrix, dtype=float) if matrix else np.zeros((0, len(tasks)))
    x = np.arange(len(stages))
    for j, task in enumerate(tasks):
        style = series_style(j, len(tasks))
        ax.plot(x, data[:, j] if len(data) else [], label=task, markersize=5, **style)
        trained = j + offset
        if trained < len(data):
            ax.plot(
                [trained],
                [data[trained, j]],
                marker=style["marker"],
                markersize=11,
                color=style["color"],
                markeredgecolor="black",
                linestyle="none",
            )
    ax.set_xticks(
        x, labels=stages, rotation=30 if len(stages) > 4 else 0, ha="right" if len(stages) > 4 else "center"
    )
    ax.set_ylim(0, 100)
    ax.set_xlabel("training stage (run order)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "per-task accuracy over the sequence (large marker: the task just trained)")
    ax.grid(alpha=0.3)
    ax.legend(title="evaluated task", fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


# ---------------------------------------------------------------------------- sweeps
def plot_violins(
    groups: Mapping[str, Mapping[str, Sequence[float]]], title: str, legend: str = "MIGU (dots: seeds)"
) -> Figure:
    """ACC (%) across seeds per method, one violin per MIGU setting, each seed drawn as a dot.

    A violin needs two or more distinct values; with fewer only the dots are drawn.
    """
    methods = list(groups)
    settings: list[str] = []
    for g in groups.values():
        settings += [s for s in g if s not in settings]
    fig = Figure(
        figsize=(max(5.0, 1.6 * len(methods) * max(1, len(settings)) / 2 + 2.0), 4.4), layout="constrained"
    )
    ax = fig.subplots()
    width = 0.8 / max(1, len(settings))
    fills = [series_style(i, len(settings))["color"] for i in range(len(settings))]
    rng = np.random.default_rng(0)
    for k, setting in enumerate(settings):
        labelled = False  # one legend entry per setting, from the first method that ran it
        for m, method in enumerate(methods):
            vals = 100 * np.asarray(groups[method].get(setting, []), dtype=float)
            if vals.size == 0:
                continue
            pos = m + (k - (len(settings) - 1) / 2) * width
            if np.unique(vals).size >= 2:
                parts = ax.violinplot(
                    [vals], positions=[pos], widths=width * 0.9, showmeans=True, showextrema=True
                )
                for body in parts["bodies"]:
                    body.set_facecolor(fills[k])
                    body.set_edgecolor("black")
                    body.set_alpha(0.55)
                for key in ("cmeans", "cmins", "cmaxes", "cbars"):
                    if key in parts:
                        parts[key].set_color("black")
            jitter = rng.uniform(-width * 0.12, width * 0.12, size=vals.size)
            ax.scatter(
                pos + jitter,
                vals,
                s=22,
                color=fills[k],
                edgecolor="black",
                zorder=3,
                marker=MARKERS[k % len(MARKERS)],
                label=None if labelled else setting,
            )
            labelled = True
    ax.set_xticks(range(len(methods)), labels=methods)
    ax.set_xlabel("CL method")
    ax.set_ylabel("ACC after the last task (%)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title=legend, fontsize=8)
    return fig


def _mean_std_series(
    ax: Axes, pts: Sequence[tuple[float, float, float, int]], label: str, style: Mapping[str, Any]
) -> None:
    """One curve of (x, mean, std, n) points: ACC in %, ± std bars where any std is non-zero."""
    x = np.array([p[0] for p in pts])
    mean = 100 * np.array([p[1] for p in pts])
    std = 100 * np.array([p[2] for p in pts])
    yerr = std if np.any(std > 0) else None
    ax.errorbar(x, mean, yerr=yerr, label=label, capsize=3, markersize=6, **style)


def plot_threshold_curve(
    curves: Mapping[str, Sequence[tuple[float, float, float, int]]],
    baselines: Mapping[str, tuple[float, float, int]],
    title: str,
) -> Figure:
    """ACC (%) vs MIGU threshold per method: mean with ± std bars over seeds; without MIGU dashed.

    ``curves[method]``: (T, mean, std, n); ``baselines[method]``: (mean, std, n) without MIGU.
    """
    fig = Figure(figsize=(6.8, 4.4), layout="constrained")
    ax = fig.subplots()
    methods = list(dict.fromkeys([*curves, *baselines]))
    for i, method in enumerate(methods):
        style = series_style(i, len(methods))
        pts = sorted(curves.get(method, []))
        if pts:
            _mean_std_series(ax, pts, f"{method}+MIGU", style)
        if method in baselines:
            m = 100 * baselines[method][0]
            ax.axhline(m, color=style["color"], linestyle=":", linewidth=1.4, label=f"{method} without MIGU")
    ax.set_xlabel("MIGU threshold T (fraction of rows whose gradient is masked)")
    ax.set_ylabel("ACC after the last task (%)")
    ax.set_xticks(np.round(np.arange(0.0, 1.0, 0.1), 1))
    ax.set_xlim(-0.05, 0.95)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_grid_value_curve(
    curves: Mapping[str, Sequence[tuple[float, float, float, int]]], key: str, title: str
) -> Figure:
    """ACC (%) vs one numeric grid value (e.g. ``train.lr``) per series (method, MIGU setting):
    mean with ± std bars over seeds; a log x axis when the values span 10x or more."""
    fig = Figure(figsize=(6.8, 4.4), layout="constrained")
    ax = fig.subplots()
    xs: list[float] = []
    for i, (label, pts) in enumerate(curves.items()):
        _mean_std_series(ax, pts, label, series_style(i, len(curves)))
        xs.extend(p[0] for p in pts)
    if min(xs) > 0 and max(xs) / min(xs) > 9.999:  # 10x, robust to 3e-4 / 3e-5 = 9.999...
        ax.set_xscale("log")
        ax.minorticks_off()  # label the grid values only
    ax.set_xticks(sorted(set(xs)))
    ax.set_xticklabels([f"{v:g}" for v in sorted(set(xs))])
    ax.set_xlabel(key)
    ax.set_ylabel("ACC after the last task (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------------------- instruction tuning
def plot_learning_forgetting(
    curves: Mapping[str, Sequence[tuple[str, float, float]]], learning: str, general: str, title: str
) -> Figure:
    """Learning vs forgetting over stages, one line per run (the paper's LLM figure): x = the general
    score (higher = less forgetting), y = the learning score; each point a stage, labelled by it.

    ``curves[run]``: (stage label, learning, general) in training order.
    """
    fig = Figure(figsize=(6.8, 4.8), layout="constrained")
    ax = fig.subplots()
    for i, (name, pts) in enumerate(curves.items()):
        style = series_style(i, len(curves))
        xs = [100 * g for _, _, g in pts]
        ys = [100 * v for _, v, _ in pts]
        ax.plot(xs, ys, label=name, markersize=5, **style)
        for (stage, _, _), x, y in zip(pts, xs, ys, strict=True):
            ax.annotate(
                stage, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7, color=style["color"]
            )
    ax.set_xlabel(f"{general} (%) - forgetting: lower is more")
    ax.set_ylabel(f"{learning} (%) - learning")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
