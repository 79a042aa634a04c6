"""Published numbers in configs (``paper:``) and the paper-vs-measured tables (issue 18.4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.results import fake_results, write_sweep

from migu.analysis.report import build_report
from migu.analysis.tables import paper_comparisons, paper_table
from migu.grid.spec import load_sweep
from migu.grid.sweep import write_summary
from migu.runner.config import ConfigError, build_run_config, read_yaml_config
from migu.runner.results import RunResults
from migu.runner.state import config_hash

PAPER = Path(__file__).resolve().parents[2] / "configs" / "paper"


@pytest.mark.parametrize(
    ("paper", "message"),
    [
        ({"source": " ", "values": {"acc": 1}}, "paper.source"),
        ({"source": "x", "values": {}}, "paper.values must be a mapping of at least one results metric"),
        ({"source": "x", "values": {"acc": "high"}}, "paper.values must be a mapping to numbers"),
        (
            {"source": "x", "values": {"ACC": 1}},
            "paper.values must be keyed by results metric names (e.g. acc, final_mf1), got 'ACC'",
        ),
        (
            {"source": "x", "values": {"acc": 101}},
            "paper.values.acc must be a number in [-100, 100], got 101",
        ),
        ({"source": "x", "value": {"acc": 1}}, "unknown key(s) ['value'] in paper"),
    ],
)
def test_bad_paper_entry_is_named(paper: dict, message: str) -> None:
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        build_run_config({"order": "standard_proxy", "paper": paper})


def test_paper_entry_is_not_part_of_the_config_hash() -> None:
    plain = build_run_config({"order": "standard_proxy"}).to_dict()
    with_paper = build_run_config(
        {"order": "standard_proxy", "paper": {"source": "Table 2", "values": {"acc": 75.7}}}
    ).to_dict()
    assert with_paper["paper"] == {"source": "Table 2", "values": {"acc": 75.7}}
    assert config_hash(plain) == config_hash(with_paper)  # runs started before the entry still resume


def test_every_paper_config_carries_its_published_number() -> None:
    """method.md's numbers, one place each: the run configs and the two Table 2 sweeps."""
    expected = {
        "order1_ft.yaml": {"acc": 75.7},
        "order1_ft_migu.yaml": {"acc": 78.8},
        "order4_ft.yaml": {"acc": 68.3},
        "order6_ft_migu.yaml": {"acc": 73.8},
        "das_order7_ft.yaml": {"final_mf1": 76.36, "final_acc": 80.77},
        "das_order7_ft_migu.yaml": {"final_mf1": 76.73, "final_acc": 81.19},
        "llama2_code_lora.yaml": {"final_general": 58.4},
        "llama2_code_lora_migu.yaml": {"final_general": 59.4},
    }
    for name, values in expected.items():
        cfg = build_run_config(read_yaml_config(PAPER / name))
        assert cfg.paper is not None and cfg.paper.values == values, name
    _, cells = load_sweep(PAPER / "table2_long.yaml")
    published = {
        (c.config["method"]["name"], c.config["migu"] is not None): c.config["paper"]["values"]["acc"]
        for c in cells
    }
    assert published == {
        ("ft", False): 68.3,
        ("ft", True): 73.8,
        ("lora", False): 46.0,
        ("lora", True): 61.2,
        ("inclora", False): 64.7,
        ("inclora", True): 68.7,
        ("lora_replay", False): 75.2,
        ("lora_replay", True): 76.5,
        ("olora", False): 69.6,
        ("olora", True): 70.0,
    }
    assert all("orders 4-6" in c.config["paper"]["source"] for c in cells)


def _sweep_file(tmp_path: Path, paper: str) -> Path:
    (tmp_path / "base.yaml").write_text(
        "order: standard_proxy\npaper: {source: base's own, values: {acc: 1.0}}\n"
    )
    p = tmp_path / "s.yaml"
    p.write_text(
        "name: s\nbase: base.yaml\ngrid:\n  method: [ft, lora, inclora]\n  migu: [off, on]\n" + paper
    )
    return p


def test_sweep_paper_table_goes_to_each_cell(tmp_path: Path) -> None:
    spec = (
        "paper:\n  source: T2\n  metric: acc\n  values:\n"
        "    FT: {base: 75.7, migu: 78.8}\n    lora: {migu: 73.3}\n"
    )
    _, cells = load_sweep(_sweep_file(tmp_path, spec))
    got = {(c.values["method"], "on" if c.values["migu"] else "off"): c.config.get("paper") for c in cells}
    assert got[("ft", "off")] == {"source": "T2", "values": {"acc": 75.7}}  # the paper's name is accepted
    assert got[("ft", "on")] == {"source": "T2", "values": {"acc": 78.8}}
    assert got[("lora", "on")] == {"source": "T2", "values": {"acc": 73.3}}
    # no number for these cells: none, and not the base config's (which is for its own method)
    assert got[("lora", "off")] is None and got[("inclora", "off")] is None
    _, cells = load_sweep(_sweep_file(tmp_path, ""))
    assert all("paper" not in c.config for c in cells)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "paper:\n  source: T2\n  values:\n    ft: {off: 75.7}\n",
            r"paper.values.ft must be a mapping with keys base",
        ),
        ("paper:\n  source: T2\n  values:\n    sgd: {base: 1}\n", r"paper.values: unknown CL method 'sgd'"),
        (
            "paper:\n  source: T2\n  values:\n    ft: {base: high}\n",
            r"paper.values.ft.base must be a number in \[-100, 100\], got \'high\'",
        ),
        ("paper:\n  source: T2\n  table: {}\n", r"paper must be a mapping with keys source, metric, values"),
    ],
)
def test_bad_sweep_paper_table_is_named(tmp_path: Path, spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_sweep(_sweep_file(tmp_path, spec))


def _with_paper(res: dict, value: float, source: str = "T2") -> dict:
    res["config"]["paper"] = {"source": source, "values": {"acc": value}}
    return res


def test_paper_comparisons_known_answer() -> None:
    runs = [
        RunResults.from_json(_with_paper(fake_results("ft", None, s, acc), 75.7))
        for s, acc in ((1, 0.50), (2, 0.70))
    ]
    runs.append(RunResults.from_json(_with_paper(fake_results("ft", {"threshold": 0.7}, 1, 0.8), 78.8)))
    unfinished = _with_paper(fake_results("ft", None, 3, 0.9), 75.7)
    unfinished["complete"] = False
    runs.append(RunResults.from_json(unfinished))
    runs.append(RunResults.from_json(fake_results("lora", None, 1, 0.4)))  # no paper entry: not shown
    comps = paper_comparisons(runs)
    assert [(c.method, c.setting, c.paper, c.runs) for c in comps] == [
        ("ft", "off", 75.7, 2),
        ("ft", "T=0.7", 78.8, 1),
    ]
    assert comps[0].mean == pytest.approx(60.0) and comps[0].std == pytest.approx(14.142, abs=1e-3)
    _header, rows = paper_table(comps)
    assert rows[0][:7] == ["FT", "off", "acc", "75.70", "60.00 ± 14.14", "2", "-15.70"]
    assert rows[1][4:7] == ["80.00", "1", "+1.20"] and rows[1][7] == "T2"


def test_sweep_summary_and_report_show_paper_beside_measured(tmp_path: Path) -> None:
    cells = [
        (f"m-ft_migu-{m}_seed-{s}", {"method": "ft", "migu": m, "seed": s}, res)
        for m, paper in (("off", 75.7), ("on", 78.8))
        for s in (1, 2)
        for res in [
            _with_paper(fake_results("ft", None if m == "off" else {"threshold": 0.7}, s, 0.6), paper)
        ]
    ]
    sweep = write_sweep(tmp_path / "sw", "t2", cells)
    md = write_summary(sweep)
    assert "Published vs measured" in md and "| FT | off | acc | 75.70 | 60.00 ± 0.00 | 2 | -15.70 |" in md
    saved = json.loads((sweep / "summary.json").read_text())
    assert [(p["setting"], p["paper"]) for p in saved["paper"]] == [("off", 75.7), ("T=0.7", 78.8)]
    report = build_report([sweep], tmp_path / "rep")
    text = report.markdown.read_text()
    assert "Published vs measured" in text and "-18.80" in text


def test_report_of_single_runs_shows_paper_beside_measured(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    res = _with_paper(fake_results("ft", {"threshold": 0.7}, 1, 0.5), 78.8, "Table 2, FT+MIGU")
    (run / "results.json").write_text(json.dumps(res))
    text = build_report([run], tmp_path / "rep").markdown.read_text()
    assert "Published vs measured" in text
    assert "| FT | T=0.7 | acc | 78.80 | 50.00 | 1 | -28.80 | Table 2, FT+MIGU |" in text
