"""Issue 17.4: checkpoints carry a sha256 per file in the run state; a corrupt or truncated one is
one message naming the file and what to do (--rollback); a finished run is never reloaded."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from migu.runner import checkpoint as ckpt
from migu.runner.config import RunConfig
from migu.runner.execute import run
from migu.runner.faults import CheckpointError
from migu.runner.regimes import FinetuneStages
from migu.runner.results import RESULTS_FILE, load_results


def _small(tiny_config: Callable[..., RunConfig], **kw: object) -> RunConfig:
    return tiny_config(eval_baseline=False, data={"train_n": 16, "test_n": 8}, **kw)


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes: only the digest can tell
    path.write_bytes(bytes(data))


def test_a_finished_run_returns_its_results_without_loading_weights(
    tiny_config: Callable[..., RunConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, out = _small(tiny_config), tmp_path / "run"
    first = run(cfg, out)
    state = json.loads((out / ckpt.STATE_FILE).read_text())
    assert set(state["checkpoints"]) == {"task_01"}  # the pruned one's record went with it
    assert (
        state["checkpoints"]["task_01"]["model.safetensors"]
        == ckpt.file_digests(out / "checkpoints/task_01")["model.safetensors"]
    )

    def no(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run must not build a model or load a checkpoint")

    monkeypatch.setattr("migu.runner.execute.build_model", no)
    monkeypatch.setattr(ckpt, "load_checkpoint", no)
    assert run(cfg, out).matrix == first.matrix
    (out / RESULTS_FILE).unlink()  # killed while writing its results: rebuilt from the run state
    again = run(cfg, out)
    assert again.matrix == first.matrix and again.complete and load_results(out).matrix == first.matrix


def test_a_corrupt_checkpoint_names_the_file_and_rollback_trains_again_from_the_intact_one(
    tiny_config: Callable[..., RunConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _small(tiny_config, keep_checkpoints=True)
    reference = run(cfg, tmp_path / "reference")
    out = tmp_path / "run"
    real_score = FinetuneStages.score

    def killed_scoring_stage_2(self: FinetuneStages, i: int | None, *args: object) -> object:
        if i == 1:
            raise KeyboardInterrupt("killed while scoring stage 2")
        return real_score(self, i, *args)

    with monkeypatch.context() as m:
        m.setattr(FinetuneStages, "score", killed_scoring_stage_2)
        with pytest.raises(KeyboardInterrupt):
            run(cfg, out)
    _flip_a_byte(out / "checkpoints/task_01/model.safetensors")
    with pytest.raises(CheckpointError) as info:
        run(cfg, out)
    msg = str(info.value)
    assert "task_01/model.safetensors is corrupt: its sha256" in msg, msg
    assert "the checkpoint after stage 1 ('agnews') is intact" in msg and "--rollback" in msg

    resumed = run(cfg, out, rollback=True)
    assert resumed.complete and resumed.matrix == reference.matrix
    for i in (0, 1):
        name = f"checkpoints/task_{i:02d}/model.safetensors"
        assert (out / name).read_bytes() == (tmp_path / "reference" / name).read_bytes()


def test_a_truncated_checkpoint_without_digests_is_one_clear_error(
    tiny_config: Callable[..., RunConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, out = _small(tiny_config), tmp_path / "run"

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("killed in stage 2")

    from migu.runner import loop

    real = loop.train_task
    with monkeypatch.context() as m:
        m.setattr(
            "migu.runner.execute.train_task",
            lambda *a, **k: killed() if a[1].task_index == 1 else real(*a, **k),
        )
        with pytest.raises(KeyboardInterrupt):
            run(cfg, out)
    weights = out / "checkpoints/task_00/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    state = json.loads((out / ckpt.STATE_FILE).read_text())
    del state["checkpoints"]  # a run state written before digests were recorded
    (out / ckpt.STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(CheckpointError) as info:
        run(cfg, out)
    msg = str(info.value)
    assert "task_00/model.safetensors cannot be read, it is truncated or corrupt" in msg, msg
    assert "keep_checkpoints: false" in msg and "--rollback to train again from the start" in msg
    assert run(cfg, out, rollback=True).complete


def test_a_tampered_replay_state_is_refused_naming_its_file(
    tiny_config: Callable[..., RunConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17.8: method_state.json names row types from a fixed table; any other name is an error."""
    cfg, out = _small(tiny_config, method={"name": "ft_replay"}), tmp_path / "run"
    from migu.runner import loop

    real = loop.train_task

    def killed_in_stage_2(*args: object, **kwargs: object) -> object:
        if args[1].task_index == 1:  # type: ignore[attr-defined]
            raise KeyboardInterrupt("killed in stage 2")
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr("migu.runner.execute.train_task", killed_in_stage_2)
        with pytest.raises(KeyboardInterrupt):
            run(cfg, out)
    meta = out / "checkpoints/task_00/method_state.json"
    state = json.loads(meta.read_text())
    assert state["replay"][0]["row_type"] == "migu.data.cl_benchmark:Example"
    state["replay"][0]["row_type"] = "os:system"
    state["replay"][0]["indices"] = [0]  # differs from the rebuilt sample: the saved rows are read
    meta.write_text(json.dumps(state))
    run_state = json.loads((out / ckpt.STATE_FILE).read_text())
    del run_state["checkpoints"]  # the digest would catch the edit first; here the table is tested
    (out / ckpt.STATE_FILE).write_text(json.dumps(run_state))
    with pytest.raises(CheckpointError, match=r"task_00/method_state\.json: .*unknown row type 'os:system'"):
        run(cfg, out)
