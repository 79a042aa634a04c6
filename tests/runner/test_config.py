"""Run config: YAML, base includes, key=value overrides, and errors that name the field."""

from pathlib import Path

import pytest

from migu.runner.config import ConfigError, load_config, parse_override


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_overrides_and_base_include(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", "name: b\ntasks: [a, b]\ntrain: {lr: 0.001, batch_size: 8}\n")
    child = _write(tmp_path / "child.yaml", "base: base.yaml\nname: c\ntrain: {batch_size: 4}\n")
    cfg = load_config(child, ["train.lr=2e-4", "migu.threshold=0.5", "model.name=minilm"])
    assert cfg.name == "c"
    assert cfg.train.batch_size == 4 and cfg.train.lr == pytest.approx(2e-4)
    assert cfg.migu == {"threshold": 0.5}
    assert cfg.model == {"name": "minilm"}
    assert cfg.tasks == ["a", "b"]


def test_shipped_configs_load() -> None:
    root = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(root.rglob("*.yaml"))
    assert files
    for f in files:
        if "sweep" in f.parts or f.name.startswith("sweep"):
            continue
        load_config(f)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("tasks: [a]\ntrain: {lr: -1}\n", "train.lr"),
        ("tasks: [a]\ntrain: {schedule: step}\n", "train.schedule"),
        ("tasks: [a]\nbogus: 1\n", "bogus"),
        ("tasks: [a]\ntrain: {bogus: 1}\n", "bogus"),
        ("name: x\n", "exactly one of 'order'"),
        ("tasks: [a]\ndata: {train_n: 0}\n", "data.train_n"),
        ("- a\n- b\n", "mapping"),
        ("tasks: [a\n", "not valid YAML"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path: Path, text: str, match: str) -> None:
    path = _write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    assert "bad.yaml" in str(info.value)


def test_bad_override() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match="not a mapping"):
        load_config(None, ["tasks=[a]", "tasks.x=1"])


def test_base_cycle(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
