"""Sweep summaries, report rendering (also with missing inputs), and the plotting functions."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from support.results import fake_results

from migu.analysis import plots
from migu.analysis.ablations import analyze_sweeps
from migu.analysis.groups import group_cells, read_sweep_dir
from migu.analysis.report import build_report
from migu.analysis.tables import pct
from migu.cli import main
from migu.runner.results import RunResults


def _rows(path: Path) -> list[list[str]]:
    with path.open() as fh:
        return list(csv.reader(fh))


def test_sweep_groups_over_seeds(table_sweep: Path) -> None:
    sweep = read_sweep_dir(table_sweep)
    assert sweep.name == "proxy_table" and sweep.missing == ["method-lora_migu-on_seed-2048"]
    groups = {(g.method, g.setting): g for g in group_cells([sweep])}
    assert set(groups) == {("ft", "off"), ("ft", "T=0.7"), ("lora", "off"), ("lora", "T=0.7")}
    ft_on = groups[("ft", "T=0.7")]
    assert ft_on.seeds == [42, 1024, 2048]
    mean, std = ft_on.mean_std("acc")
    assert mean == pytest.approx(0.66) and std == pytest.approx(0.01)
    assert len(groups[("lora", "T=0.7")].runs) == 2
    assert pct(mean, std) == "66.00 ± 1.00" and pct(0.5, None) == "50.00" and pct(None, None) == "-"


def test_analyze_threshold_and_component_sweep(ablation_sweep: Path, tmp_path: Path) -> None:
    res = analyze_sweeps([ablation_sweep], tmp_path)
    thr = _rows(tmp_path / "threshold.csv")
    assert thr[0] == ["method", "threshold", "acc_mean", "acc_std", "n"]
    assert [r[1] for r in thr[1:]] == [str(round(0.1 * i, 1)) for i in range(10)] + ["off"]
    comp = _rows(tmp_path / "components.csv")
    assert [r[1] for r in comp[1:]] == ["none (MIGU off)", "qkv", "o", "ffn", "qkv+o", "qkv+o+ffn"]
    assert "threshold_acc" in res.figures and "violin_acc" not in res.figures  # one seed: no spread
    ax = res.figures["threshold_acc"].axes[0]
    assert ax.get_ylabel() == "ACC after the last task (%)" and ax.get_xlabel().startswith("MIGU threshold T")
    labels = ax.get_legend_handles_labels()[1]
    assert "FT+MIGU" in labels and "FT without MIGU" in labels
    md = (tmp_path / "sweep_summary.md").read_text()
    assert "MIGU on block components" in md and "no violin plot" in md


def test_report_with_every_input(
    finished_run: Path, table_sweep: Path, ablation_sweep: Path, similarity_out: tuple, tmp_path: Path
) -> None:
    _, sim_dir = similarity_out
    out = tmp_path / "report"
    rc = main(
        ["report", str(finished_run), str(table_sweep), str(ablation_sweep), str(sim_dir), "-o", str(out)]
    )
    assert rc == 0
    md = (out / "report.md").read_text()
    for text in (
        "## Runs",
        "## Sweeps",
        "### proxy_table",
        "MIGU on block components",
        "Task similarity",
        "| after task | agnews | amazon |",
        "(untrained)",
    ):
        assert text in md, text
    assert "unfinished cell" in md  # the missing lora cell is named
    assert "No `migu analyze magnitudes` output was given" in md
    figs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "violin_acc_proxy_table.png" in figs and "threshold_acc_ablation.png" in figs
    assert any(f.startswith("acc_matrix_") for f in figs) and any("similarity_layer" in f for f in figs)
    for line in md.splitlines():  # every image the Markdown names exists
        if line.startswith("!["):
            assert (out / line.split("](")[1].rstrip(")")).is_file()
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == md.count("![")
    assert 'src="figures' not in page  # self-contained


def test_report_with_missing_optional_inputs(finished_run: Path, tmp_path: Path) -> None:
    res = build_report([finished_run], tmp_path)
    md = res.markdown.read_text()
    assert "## Not in this report" in md
    assert "No sweep directory was given" in md and "no violin plot" in md and "no threshold curve" in md
    assert "No `migu analyze similarity` output was given" in md
    assert "## Sweeps" not in md and "violin" not in " ".join(res.figures)
    fig = res.figures[f"acc_matrix_{finished_run.name}"]
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["agnews", "amazon"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["untrained", "after agnews", "after amazon"]
    assert ax.get_xlabel() == "evaluated task" and "(%)" in fig.axes[1].get_ylabel()
    curves = res.figures[f"acc_curves_{finished_run.name}"].axes[0]
    assert curves.get_ylabel() == "accuracy (%)"
    assert [t.get_text() for t in curves.get_legend().get_texts()] == ["agnews", "amazon"]
    assert res.html.read_text().startswith("<!DOCTYPE html>")


def test_report_from_sweep_only(table_sweep: Path, tmp_path: Path) -> None:
    res = build_report([table_sweep], tmp_path)
    md = res.markdown.read_text()
    assert "No run directory was given" in md and "no threshold curve" in md and "no components table" in md
    assert "violin_acc_proxy_table" in res.figures
    ax = res.figures["violin_acc_proxy_table"].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["FT", "LoRA"]
    assert ax.get_ylabel() == "ACC after the last task (%)"


def test_report_rejects_other_directories(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a run directory"):
        build_report([tmp_path / "empty"], tmp_path / "out")
    assert main(["report", str(tmp_path / "nope"), "-o", str(tmp_path / "out")]) == 2


def test_plots_with_partial_inputs(tmp_path: Path) -> None:
    data = fake_results("ft", None, 1, 0.5)
    data.update(complete=False, matrix=data["matrix"][:1], baseline=None)
    res = RunResults.from_json(data)
    fig = plots.plot_accuracy_matrix(res)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["after dbpedia"]
    assert len(fig.axes[0].texts) == 3
    plots.save(plots.plot_accuracy_curves(res), tmp_path / "curves.png")
    # one seed per group: dots only, no violin (a KDE of one point is undefined)
    fig = plots.plot_violins({"FT": {"off": [0.5], "T=0.7": [0.6, 0.6]}}, "t")
    assert len(fig.axes[0].collections) == 2
    assert plots.save(fig, tmp_path / "v.png").stat().st_size > 0
    # a setting the first method lacks (DER++'s own T) still gets its legend entry
    fig = plots.plot_violins(
        {"LoRA": {"off": [0.5, 0.6], "T=0.7": [0.6, 0.7]}, "DER++": {"T=0.4": [0.7, 0.8]}}, "t"
    )
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["off", "T=0.7", "T=0.4"]
    np.testing.assert_allclose(plots.moving_average(np.array([1.0, 2.0, 3.0, 4.0]), 3), [1.5, 2.0, 3.0, 3.5])
    keep = np.array([[1, 0, 1, 0], [0, 1, 0, 1]], dtype=bool)
    fig = plots.plot_magnitudes(
        ["a", "b"], np.full((2, 4), 0.25), keep, window=1, layer="L", threshold=0.5, title="m"
    )
    top, bottom = fig.axes
    assert "(%)" in top.get_ylabel() and [t.get_text() for t in bottom.get_yticklabels()] == ["a", "b"]
    assert bottom.get_xlabel().startswith("output row of L")


def test_sweep_command(table_sweep: Path, tmp_path: Path) -> None:
    assert main(["analyze", "sweep", str(table_sweep), "-o", str(tmp_path)]) == 0
    summary = _rows(tmp_path / "sweep_summary.csv")
    assert summary[0][:8] == ["method", "migu", "threshold", "components", "other", "chosen", "n", "seeds"]
    assert len(summary) == 1 + 4
    assert (tmp_path / "violin_acc.png").is_file() and not (tmp_path / "threshold.csv").exists()


def test_analyze_a_learning_rate_sweep(make_sweep, tmp_path: Path) -> None:
    """A numeric grid key besides MIGU and seed (train.lr) gets an ACC curve per MIGU setting."""
    cells = []
    for lr in (3e-5, 1e-4, 3e-4):
        for on in (False, True):
            for seed in (42, 1024):
                acc = (0.6 if not on else 0.4 + 1000 * lr) + (0.02 if seed == 42 else 0.0)
                setting = {"threshold": 0.7, "preset": "paper", "mode": "grad"} if on else None
                res = fake_results("ft", setting, seed, acc)
                values = {"train.lr": lr, "migu": "on" if on else "off", "seed": seed}
                cells.append((f"lr-{lr}_migu-{'on' if on else 'off'}_seed-{seed}", values, res))
    sweep = make_sweep(tmp_path / "lr", "proxy_lr", cells)
    res = analyze_sweeps([sweep], tmp_path / "out")
    ax = res.figures["acc_vs_lr"].axes[0]
    assert ax.get_xlabel() == "train.lr" and ax.get_xscale() == "log"  # 3e-5..3e-4 spans 10x
    lines = {c.get_label(): c.lines[0] for c in ax.containers}  # errorbar: (data line, caps, bars)
    assert set(lines) == {"FT", "FT+MIGU T=0.7"}
    np.testing.assert_allclose(lines["FT"].get_xdata(), [3e-5, 1e-4, 3e-4])
    np.testing.assert_allclose(lines["FT"].get_ydata(), [61.0, 61.0, 61.0])  # mean of 62 and 60
    np.testing.assert_allclose(lines["FT+MIGU T=0.7"].get_ydata(), [44.0, 51.0, 71.0])
    assert (tmp_path / "out" / "acc_vs_lr.png").is_file()


def test_a_tuned_sweep_gets_its_violin_named_with_the_chosen_setting(tmp_path: Path) -> None:
    """Groups that share another grid value (the tuned lr) are shown without and with MIGU."""
    from support.results import write_sweep

    from migu.analysis.ablations import violin_data

    cells = []
    for migu, acc in (("off", 0.6), ("on", 0.55)):
        for seed in (42, 1024):
            res = fake_results("ft", None if migu == "off" else {"threshold": 0.7}, seed, acc + seed / 1e5)
            values = {"method": "ft", "migu": migu, "train.lr": 1e-4, "seed": seed}
            cells.append((f"migu-{migu}_lr-0.0001_seed-{seed}", values, res))
    groups = group_cells([read_sweep_dir(write_sweep(tmp_path / "tuned", "tuned", cells))])
    violins = violin_data(groups)
    assert list(violins) == ["FT (train.lr=0.0001)"]
    assert sorted(violins["FT (train.lr=0.0001)"]) == ["T=0.7", "off"]
    assert "violin_acc" in analyze_sweeps([tmp_path / "tuned"], tmp_path / "out").figures


def test_two_tune_test_dirs_are_summarized_apart_under_their_tune_names(tmp_path: Path) -> None:
    """Every `migu tune` names its test directory `test`: two of them get files and headings named by
    their tune (they overwrote each other), each with its own chosen lr and its own MIGU effect."""
    from support.results import write_sweep

    dirs = []
    for method, lr_on, gain in (("ft", 1e-4, -0.03), ("lora", 3e-3, 0.01)):
        cells = []
        for seed in (42, 1024, 2048):
            for migu, lr in (("off", 1e-4 if method == "ft" else 1e-3), ("on", lr_on)):
                setting = None if migu == "off" else {"threshold": 0.7}
                res = fake_results(method, setting, seed, 0.6 + (gain if migu == "on" else 0) + seed / 1e6)
                values = {"method": method, "migu": migu, "train.lr": lr, "seed": seed}
                cells.append((f"{method}_{migu}_seed-{seed}", values, res))
        dirs.append(write_sweep(tmp_path / f"tune_{method}" / "test", "test", cells, tuned=["train.lr"]))
    out = analyze_sweeps(dirs, tmp_path / "out")
    md = (tmp_path / "out" / "sweep_summary.md").read_text()
    assert "## tune_ft_test (6 of 6" in md and "## tune_lora_test (6 of 6" in md
    for name, diff, chosen in (("tune_ft_test", "-3.00", "0.0001"), ("tune_lora_test", "+1.00", "0.003")):
        effects = _rows(tmp_path / "out" / f"migu_effects_{name}.csv")
        assert effects[1][3] == diff
        rows = _rows(tmp_path / "out" / f"sweep_summary_{name}.csv")
        assert rows[2][5] == f"train.lr={chosen}"  # the MIGU row's chosen lr
    assert {"violin_acc_tune_ft_test", "violin_acc_tune_lora_test"} <= set(out.figures)


def test_a_cluster_ablation_gets_its_table_effects_and_figure(tmp_path: Path) -> None:
    """Issue 15: per-row MIGU vs MIGU+Cluster (weight, co-magnitude), paired by seed, with known answers."""
    from support.results import write_sweep

    from migu.analysis.ablations import cluster_data
    from migu.analysis.effects import cluster_effects

    bundles = {
        "none": {"label": "none", "migu.cluster": None},
        "weight": {"label": "weight", "migu.cluster.strategy": "weight"},
        "comagnitude": {"label": "comagnitude", "migu.cluster.strategy": "comagnitude"},
    }
    shift = {"none": 0.0, "weight": 0.03, "comagnitude": -0.01}  # weight: +2, +3, +4 points by seed
    cells = []
    for method in ("ft", "lora"):
        for label, bundle in bundles.items():
            for k, seed in enumerate((42, 1024, 2048)):
                cluster = None if label == "none" else {"strategy": label, "n_clusters": 0.0625}
                acc = 0.6 + 0.02 * k + shift[label] + (0.01 * (k - 1) if label == "weight" else 0.0)
                res = fake_results(method, {"threshold": 0.7, "cluster": cluster}, seed, acc)
                values = {"recipe": {"label": method, "method.name": method}, "cluster": bundle, "seed": seed}
                cells.append((f"recipe-{method}_cluster-{label}_seed-{seed}", values, res))
    sweep = write_sweep(tmp_path / "cl", "proxy_cluster", cells)
    groups = group_cells([read_sweep_dir(sweep)])
    # the MIGU setting (cluster strategy included) is read from the results, not from the grid label
    assert [(g.method, g.setting, g.extra) for g in groups] == [
        (m, s, "")
        for m in ("ft", "lora")
        for s in ("T=0.7", "T=0.7 cluster=comagnitude", "T=0.7 cluster=weight")
    ]
    effects = {(e.method, e.setting): e for e in cluster_effects(groups)}
    assert set(effects) == {
        (m, f"T=0.7 cluster={c}") for m in ("ft", "lora") for c in ("weight", "comagnitude")
    }
    w = effects[("ft", "T=0.7 cluster=weight")]
    assert w.baseline == "T=0.7" and w.seeds == [42, 1024, 2048]
    # diffs +2, +3, +4 points: mean 3, sd 1, t(0.975, 2) = 4.303 -> half width 4.303 / sqrt(3)
    assert w.by_seed is not None and w.by_seed.mean == pytest.approx(0.03)
    assert w.by_seed.high - w.by_seed.mean == pytest.approx(0.01 * 4.302653 / 3**0.5, rel=1e-5)
    assert "T=0.7 cluster=weight vs T=0.7" in w.sentence()
    assert effects[("lora", "T=0.7 cluster=comagnitude")].by_seed.mean == pytest.approx(-0.01)
    assert sorted(cluster_data(groups)["FT T=0.7"]) == ["cluster=comagnitude", "cluster=weight", "per-row"]

    res = analyze_sweeps([sweep], tmp_path / "out")
    assert "cluster_acc" in res.figures and (tmp_path / "out" / "cluster_acc.png").is_file()
    assert "threshold_acc" not in res.figures  # one threshold: the cluster groups are no T curve
    ax = res.figures["cluster_acc"].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["FT T=0.7", "LoRA T=0.7"]
    rows = _rows(tmp_path / "out" / "cluster_effects.csv")
    assert rows[1][:4] == ["FT", "T=0.7 cluster=comagnitude vs T=0.7", "3", "-1.00"]
    md = (tmp_path / "out" / "sweep_summary.md").read_text()
    assert "MIGU+Cluster effect on ACC" in md and "other settings" not in md
    # the same sections in `migu sweep`'s own summary
    from migu.grid.sweep import write_summary

    assert "MIGU+Cluster effect on ACC" in write_summary(sweep)


def test_sweep_labels_are_distinct() -> None:
    from migu.analysis.ablations import sweep_labels
    from migu.analysis.groups import SweepDir

    a, b = SweepDir("test", Path("/r/tune_ft/test"), []), SweepDir("test", Path("/r/tune_lora/test"), [])
    c = SweepDir("proxy_table", Path("/r/x"), [])
    assert sweep_labels([a, b, c]) == ["tune_ft_test", "tune_lora_test", "proxy_table"]
    assert sweep_labels([a, a]) == ["tune_ft_test_1", "tune_ft_test_2"]  # the same directory twice


def _ft_and_ewc_tunes(tmp_path: Path) -> list[Path]:
    """Two `migu tune` test folders, FT at 60% and EWC at 64% ACC (3 seeds each): EWC − FT = +4."""
    from support.results import write_sweep

    dirs = []
    for method, acc in (("ft", 0.60), ("ewc", 0.64)):
        cells = []
        for seed in (42, 1024, 2048):
            res = fake_results(method, None, seed, acc + seed / 1e6)
            cells.append((f"{method}_seed-{seed}", {"method": method, "train.lr": 1e-4, "seed": seed}, res))
        dirs.append(write_sweep(tmp_path / f"tune_{method}" / "test", "test", cells, tuned=["train.lr"]))
    return dirs


def test_analyze_sweep_pool_pairs_across_two_tunes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`migu analyze sweep A B --pool`: one section, EWC (tune B) minus FT (tune A) = +4 points."""
    dirs = _ft_and_ewc_tunes(tmp_path)
    out = tmp_path / "out"
    assert main(["analyze", "sweep", *map(str, dirs), "--pool", "-o", str(out)]) == 0
    md = (out / "sweep_summary.md").read_text()
    assert md.count("\n## ") == 1 and "## tune_ft_test + tune_ewc_test (6 of 6 cells finished)" in md
    rows = _rows(out / "vs_base_effects.csv")
    assert rows[1][:4] == ["EWC", "off vs FT", "3", "+4.00"]
    assert "Against the plain method" in capsys.readouterr().out


def test_report_pool_pairs_across_two_tunes(tmp_path: Path) -> None:
    """`migu report A B --pool`: one sweep section with EWC (tune B) minus FT (tune A) = +4 points;
    without --pool the two tunes stay apart and no method-minus-FT section can be written."""
    dirs = _ft_and_ewc_tunes(tmp_path)
    assert main(["report", *map(str, dirs), "--pool", "-o", str(tmp_path / "pooled")]) == 0
    md = (tmp_path / "pooled" / "report.md").read_text()
    assert md.count("\n### ") == 1 and "### tune_ft_test + tune_ewc_test" in md
    assert "Against the plain method" in md and "+4.00" in md
    assert main(["report", *map(str, dirs), "-o", str(tmp_path / "apart")]) == 0
    md = (tmp_path / "apart" / "report.md").read_text()
    assert md.count("\n### ") == 2 and "Against the plain method" not in md
