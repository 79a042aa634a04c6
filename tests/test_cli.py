"""The `migu` command: list, run, show, sweep and one-line errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from support.data import write_benchmark
from support.models import tiny_config

from migu.cli import main


def test_list_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "tasks"]) == 0
    out = capsys.readouterr().out
    assert "dbpedia" in out and "multirc" in out and len(out.strip().splitlines()) == 15
    assert main(["list", "domains"]) == 0
    out = capsys.readouterr().out
    assert (
        "restaurant" in out and "proxy_news" in out and len(out.strip().splitlines()) == 9
    )  # 6 DAS + 3 proxy
    assert main(["list", "orders"]) == 0
    out = capsys.readouterr().out
    assert "order1" in out and "standard_proxy" in out and "[pretrain] restaurant acl" in out
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) >= 10 and "MIGU" in out


def _tiny_config(tmp_path: Path) -> Path:
    cfg = {
        "name": "cli_tiny",
        "tasks": ["agnews", "amazon"],
        "data": {"train_n": 16, "test_n": 8},
        "model": {"name": "minilm", "random_init": tiny_config("bert"), "max_length": 32},
        "train": {"batch_size": 8, "lr": 1e-3},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_show_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_benchmark(tmp_path / "CL_Benchmark")
    cfg = _tiny_config(tmp_path)
    out = tmp_path / "run"
    assert main(["run", str(cfg), "migu.threshold=0.5", "--data", str(data), "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["migu"]["threshold"] == 0.5
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "agnews" in shown and "ACC" in shown
    # Bad input: exit code 2 and one message naming the problem, no traceback.
    assert main(["run", str(cfg), "train.lr=-1", "--data", str(data), "--out", str(tmp_path / "x")]) == 2
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert main(["run", str(cfg), "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "y")]) == 2
    assert main(["show", str(tmp_path / "nope")]) == 2


def test_sweep(tmp_path: Path) -> None:
    data = write_benchmark(tmp_path / "CL_Benchmark")
    _tiny_config(tmp_path)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "name: tiny_sweep\nbase: tiny.yaml\noverrides: [data.train_n=8, data.test_n=8]\n"
        "grid:\n  migu: [off, on]\n  seed: [1, 2]\n"
    )
    out = tmp_path / "sw"
    assert main(["sweep", str(sweep), "--data", str(data), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["migu"]: r for r in summary["rows"]}
    assert set(rows) == {"off", "on"} and all(r["n"] == 2 for r in rows.values())
    assert rows["on"]["seeds"] == [1, 2]
    assert "± " in (out / "summary.md").read_text()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "migu-off_seed-1",
        "migu-off_seed-2",
        "migu-on_seed-1",
        "migu-on_seed-2",
    ]
