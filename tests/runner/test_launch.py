"""Issue 16.1: ``migu run --num-processes 2`` (two gloo CPU processes through ``accelerate launch``)
trains exactly what one process trains with the same global batch: the same MIGU masks at every
optimizer step, the same accuracy matrix, the same final weights (to float reduction order)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from support.data import write_benchmark
from support.models import tiny_config

from migu.cli import main
from migu.runner.config import ConfigError, load_config
from migu.runner.launch import launch_command, launch_run

RECORDER = Path(__file__).parents[1] / "support" / "record_masks.py"
# Gradients are averaged over 2 ranks (DDP) instead of summed in one: float reduction order only.
WEIGHT_ATOL = 1e-5


def _config(tmp_path: Path, batch_size: int = 8) -> Path:
    cfg = {
        "name": "launch",
        "tasks": ["agnews", "amazon"],
        # no dropout: each rank draws dropout for its own rows from the same seeded stream, so with
        # dropout the two runs are alike in distribution only
        "model": {
            "name": "minilm",
            "random_init": tiny_config("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
            "max_length": 48,
        },
        "migu": {"threshold": 0.5},
        "train": {"batch_size": batch_size, "lr": 1e-3, "eval_batch_size": 8, "log_every": 100},
        "keep_checkpoints": True,
    }
    path = tmp_path / "launch.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(cmd: list[str], masks: Path, extra_env: dict[str, str] | None = None) -> None:
    env = {**os.environ, "MIGU_MASK_DIR": str(masks), **(extra_env or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    errors = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln or "Error" in ln]
    assert proc.returncode == 0, "\n".join(errors[-20:]) or proc.stderr[-4000:]


def test_two_processes_train_what_one_trains(tmp_path: Path) -> None:
    # 24 train rows per task, batch 8: 3 full global batches per epoch (an uneven last batch would be
    # completed from the epoch's first rows by Accelerate, and differ from one process there)
    data = write_benchmark(tmp_path / "CL_Benchmark", n_train=24, n_test=10)
    config = _config(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, str(RECORDER), "run", str(config), "--data", str(data), "--out", str(one)], one)
    cmd = launch_command(str(config), [], two, str(data), 2, cuda=False)
    module = cmd.index("-m", cmd.index("--dynamo_backend"))
    cmd[module : module + 2] = [str(RECORDER)]  # the same launch, with masks recorded
    _run(cmd, two, {"ACCELERATE_USE_CPU": "1"})

    ref = load_file(str(one / "masks_rank0.safetensors"))
    assert ref and len({k.split(".", 1)[0] for k in ref}) == 2 * 3  # 3 steps per task, 2 tasks
    for rank in (0, 1):
        got = load_file(str(two / f"masks_rank{rank}.safetensors"))
        assert got.keys() == ref.keys()
        for k in ref:
            assert got[k].equal(ref[k]), f"rank {rank}: mask {k} differs from the one-process run"
    r1 = json.loads((one / "results.json").read_text())
    r2 = json.loads((two / "results.json").read_text())
    assert r2["matrices"] == r1["matrices"] and r2["metrics"] == r1["metrics"]
    w1 = load_file(str(one / "checkpoints/task_01/model.safetensors"))
    w2 = load_file(str(two / "checkpoints/task_01/model.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:
        assert (w1[k] - w2[k]).abs().max() <= WEIGHT_ATOL, k
    # rank 0 alone wrote the run directory: one run.log, no stray temp files
    assert not list(two.glob("**/*.tmp"))

    # resume under 2 processes: a finished run is not trained again
    assert (
        subprocess.run(
            cmd,
            env={
                **os.environ,
                "ACCELERATE_USE_CPU": "1",
                "MIGU_MASK_DIR": str(tmp_path / "again"),
                "PYTHONPATH": str(Path(__file__).parents[1]),
            },
            capture_output=True,
            text=True,
            timeout=600,
        ).returncode
        == 0
    )
    assert not load_file(str(tmp_path / "again/masks_rank0.safetensors"))


def test_an_uneven_batch_split_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    data = write_benchmark(tmp_path / "CL_Benchmark", n_train=8, n_test=4)
    config = _config(tmp_path, batch_size=7)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"train.batch_size=7 does not split over 2 processes"):
        launch_run(load_config(config, []), str(config), [], out, str(data), 2)
    assert not out.exists()
    assert main(["run", str(config), "--data", str(data), "--out", str(out), "--num-processes", "2"]) == 2


def test_more_processes_than_training_rows_are_refused(tmp_path: Path) -> None:
    data = write_benchmark(tmp_path / "CL_Benchmark", n_train=2, n_test=4)
    config = _config(tmp_path, batch_size=4)
    with pytest.raises(ConfigError, match=r"--num-processes 4: task 'agnews' has only 2 training rows"):
        launch_run(load_config(config, []), str(config), [], tmp_path / "out", str(data), 4)
    assert not (tmp_path / "out").exists()


def test_the_launch_command_goes_through_accelerate(tmp_path: Path) -> None:
    cmd = launch_command("c.yaml", ["train.lr=1e-4"], tmp_path / "o", "d", 4, cuda=True)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in cmd
    assert cmd[cmd.index("--num_processes") + 1] == "4"
    tail = cmd[cmd.index("migu.cli") :]
    assert tail[:3] == ["migu.cli", "run", str(Path("c.yaml").resolve())] and "train.lr=1e-4" in tail
    assert tail[tail.index("--out") + 1] == str((tmp_path / "o").resolve())


def test_inside_a_launch_batch_split_is_checked_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_benchmark(tmp_path / "CL_Benchmark", n_train=8, n_test=4)
    config = _config(tmp_path, batch_size=5)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    out = tmp_path / "out"
    assert main(["run", str(config), "--data", str(data), "--out", str(out)]) == 2
    assert not out.exists()
