"""Issue 17.3: a changed config on an existing run directory is refused naming the fields that
differ; ``--restart`` starts a run none of whose stages finished again, and is refused after one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from migu.cli import main
from migu.runner.config import ConfigError, RunConfig
from migu.runner.execute import run
from migu.runner.results import load_results


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def test_changed_config_names_fields_and_restart_only_before_a_stage_finished(
    tiny_config: Callable[..., RunConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(eval_baseline=False)
    out = tmp_path / "run"

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("killed in the first stage")

    with monkeypatch.context() as m:
        m.setattr("migu.runner.execute.train_task", killed)
        with pytest.raises(KeyboardInterrupt):
            run(cfg, out)
    before = _snapshot(out)

    changed = tiny_config(eval_baseline=False, seed=8, train={"lr": 2e-3})
    with pytest.raises(ConfigError, match="different config") as info:
        run(changed, out)
    msg = str(info.value)
    assert "train.lr: 0.001 -> 0.002" in msg and "seed: 7 -> 8" in msg, msg
    assert "--restart starts it again" in msg
    assert _snapshot(out) == before  # nothing changed

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert main(["run", str(path), "--out", str(out), "train.lr=0.002", "--restart"]) == 0
    res = load_results(out)
    assert res.complete and res.config["train"]["lr"] == 0.002

    # A finished stage: a restart would lose it, so it is refused; and a mismatch says so too.
    before = _snapshot(out)
    with pytest.raises(ConfigError, match=r"--restart refused: 2 of 2 stages"):
        run(cfg, out, restart=True)
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.002 -> 0\.001.*use another --out"):
        run(cfg, out)
    assert _snapshot(out) == before


def test_a_run_killed_while_its_model_loaded_can_be_run_again(
    tiny_config: Callable[..., RunConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config.yaml is written before the first run state: that alone is no reason to refuse."""
    out = tmp_path / "run"

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("killed while the model loaded")

    with monkeypatch.context() as m:
        m.setattr("migu.runner.execute.build_model", killed)
        with pytest.raises(KeyboardInterrupt):
            run(tiny_config(eval_baseline=False), out)
    assert (out / "config.yaml").is_file() and not (out / "run_state.json").exists()
    assert run(tiny_config(eval_baseline=False, data={"train_n": 8, "test_n": 8}), out).complete
