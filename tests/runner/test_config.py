"""Run config: YAML, base includes, key=value overrides, and errors that name the field."""

from pathlib import Path

import pytest
import yaml

from migu.grid.spec import load_sweep
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
    assert cfg.migu is not None and cfg.migu.threshold == 0.5
    assert cfg.model.name == "minilm"
    assert cfg.tasks == ["a", "b"]


def test_shipped_configs_load() -> None:
    root = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(root.rglob("*.yaml"))
    assert files
    for f in files:
        if "grid" in yaml.safe_load(f.read_text()):
            name, cells = load_sweep(f)  # every cell's config validates
            assert cells and name
        else:
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


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.weight_decay=abc", r"train\.weight_decay must be a number, got 'abc'"),
        ("train.max_grad_norm=abc", r"train\.max_grad_norm must be a number or null, got 'abc'"),
        ("train.batch_size=1.5", r"train\.batch_size must be an integer, got 1\.5"),
        ("train.max_steps_per_task=abc", r"train\.max_steps_per_task must be an integer or null"),
        ("train.betas=[0.9]", r"train\.betas must be a list of 2 numbers"),
        ("train.mixed_precision=fp16", r"train\.mixed_precision must be one of no, bf16"),
        ("migu.threshold=abc", r"migu\.threshold must be a number, got 'abc'"),
        ("migu.threshold=1.5", r"migu: MIGUConfig\.threshold must be a number in \[0, 1\), got 1\.5"),
        ("migu.bogus=1", r"unknown key\(s\) \['bogus'\] in migu"),
        ("model.max_length=abc", r"model\.max_length must be an integer, got 'abc'"),
        ("model.bogus=1", r"unknown key\(s\) \['bogus'\] in model"),
        ("model.eval_mode=beam", r"model\.eval_mode must be one of rank, generate"),
        ("method.name=nope", r"method\.name: unknown CL method 'nope'"),
        ("method.options.r=0", r"method\.options: method 'ft': unknown option"),
        ("seed=abc", r"seed must be an integer, got 'abc'"),
        ("eval_baseline=maybe", r"eval_baseline must be true or false"),
        ("train.lr=.nan", r"train\.lr must be a finite number, got nan"),  # passed every range check
        ("train.epochs=.inf", r"train\.epochs must be a finite number, got inf"),
        ("train.max_grad_norm=.inf", r"train\.max_grad_norm must be a finite number"),
    ],
)
def test_every_field_is_checked_when_the_config_is_read(override: str, match: str) -> None:
    """Issue 11.4 / 17.3: a bad value fails at load, naming its dotted key, before any model loads."""
    with pytest.raises(ConfigError, match=match):
        load_config(None, ["tasks=[agnews]", "migu.threshold=0.5", override])


def test_migu_threshold_defaults_to_the_methods(tmp_path: Path) -> None:
    cfg = load_config(None, ["tasks=[agnews]", "method.name=olora", "migu={}"])
    assert cfg.migu is not None and cfg.migu.threshold == 0.1  # O-LoRA's paper threshold
    assert load_config(None, ["tasks=[agnews]", "migu=null"]).migu is None
    data = cfg.to_dict()
    assert data["migu"]["components"] == ["qkv", "o", "ffn"] and data["train"]["betas"] == [0.9, 0.999]
