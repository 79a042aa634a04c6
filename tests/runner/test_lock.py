"""Issue 17.2: a run directory is locked for the whole run; a second run on it is refused at once
naming the first one's pid; a lock left by a killed process is taken over; sweeps lock per cell."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from support.data import write_benchmark
from support.models import tiny_config as tiny_model_init

from migu.cli import main
from migu.grid.sweep import run_sweep
from migu.runner import checkpoint as ckpt
from migu.runner.config import RunConfig
from migu.runner.execute import run
from migu.runner.faults import RunLockedError
from migu.runner.lock import LOCK_FILE, RunLock

SRC = Path(__file__).resolve().parents[2] / "src"

# A real `run` in another process, paused inside its first stage's training (it holds the lock).
_PAUSED_RUN = """
import sys, time
import migu.runner.execute as r
from migu.runner.config import load_config

def paused(*args, **kwargs):
    print("training", flush=True)
    time.sleep(600)

r.train_task = paused
r.run(load_config(sys.argv[1]), sys.argv[2])
"""


def _start_paused_run(config: Path, out: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_PAUSED_RUN), str(config), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the run is inside training
    if line.strip() != "training":
        proc.kill()
        raise AssertionError(f"paused run did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc


def test_a_second_run_is_refused_and_a_killed_runs_lock_is_taken_over(
    tiny_config: Callable[..., RunConfig], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tiny_config(eval_baseline=False)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    out = tmp_path / "run"
    first = _start_paused_run(path, out)
    try:
        holder = json.loads((out / LOCK_FILE).read_text())
        assert holder["pid"] == first.pid
        with pytest.raises(RunLockedError, match=rf"in use by another migu run \(pid {first.pid} ") as info:
            run(cfg, out)
        assert info.value.pid == first.pid
        with caplog.at_level(logging.ERROR, logger="migu"):
            assert main(["run", str(path), "--out", str(out)]) == 2
        assert f"pid {first.pid}" in caplog.records[-1].getMessage()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    # The killed run could not remove its lock file, but the kernel released its flock: stale.
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == first.pid
    with caplog.at_level(logging.WARNING, logger="migu"):
        res = run(cfg, out)
    assert res.complete
    assert any(f"taking over the lock left by pid {first.pid}" in r.getMessage() for r in caplog.records)
    assert not (out / LOCK_FILE).exists()  # released at the end of the run


def test_lock_is_exclusive_within_a_process_and_released(tmp_path: Path) -> None:
    with RunLock(tmp_path) as lock:
        assert lock.took_over is None
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"), RunLock(tmp_path):
            pass
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "gone"}))  # no flock on it
    with RunLock(tmp_path) as lock:
        assert lock.took_over == {"pid": 999999, "host": "gone"}


def test_checkpoint_temp_names_carry_the_writer_pid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    seen: list[str] = []
    monkeypatch.setattr(ckpt, "save_model", lambda model, path: seen.append(path) or open(path, "wb").close())
    ckpt.save_checkpoint(tmp_path, 0, torch.nn.Linear(2, 2), {})
    assert f"task_00.{os.getpid()}.tmp" in seen[0]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["task_00"]


def test_a_sweep_skips_a_cell_another_process_is_running(tmp_path: Path) -> None:
    data = write_benchmark(tmp_path / "CL_Benchmark", n_train=8, n_test=8)
    base = {
        "tasks": ["agnews"],
        "data": {"train_n": 8, "test_n": 8},
        "model": {"name": "minilm", "random_init": tiny_model_init("bert"), "max_length": 32},
        "train": {"batch_size": 8, "lr": 1e-3},
        "eval_baseline": False,
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = tmp_path / "sw.yaml"
    sweep.write_text("name: sw\nbase: base.yaml\ngrid:\n  seed: [1, 2]\n")
    out = tmp_path / "sw"
    (out / "seed-1").mkdir(parents=True)
    with RunLock(out / "seed-1"):  # another process's cell, as far as this sweep can tell
        summary = run_sweep(sweep, out=out, data_root=str(data))
    assert summary["busy"] == ["seed-1"] and summary["missing"] == ["seed-1"]
    assert (out / "seed-2/results.json").is_file() and not (out / "seed-1/results.json").exists()


def test_only_rank_0_of_a_launch_takes_the_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    from migu.runner.world import main_process as _main_process

    for rank, is_main in (("0", True), ("", True), ("3", False)):
        monkeypatch.setenv("RANK", rank)
        assert _main_process() is is_main
    monkeypatch.delenv("RANK")
    assert _main_process()
