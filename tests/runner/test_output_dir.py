"""Issue 17.5: a bad --out (under a file, unwritable, a full disk) is one clear error before any
training; a write failure mid-run (ENOSPC) keeps the previous checkpoint and run state intact."""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from migu.cli import main
from migu.runner import checkpoint as ckpt
from migu.runner import faults, files
from migu.runner.config import RunConfig
from migu.runner.execute import run
from migu.runner.faults import OutputError


def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def no(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained despite a bad output directory")

    monkeypatch.setattr("migu.runner.execute.train_task", no)


def test_out_under_a_regular_file_fails_before_anything(
    tiny_config: Callable[..., RunConfig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _no_training(monkeypatch)
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(OutputError, match=r"notes\.txt is a file, so no directory can be made under it"):
        run(tiny_config(), tmp_path / "notes.txt" / "run")
    with pytest.raises(OutputError, match=r"notes\.txt is a file, not a directory"):
        run(tiny_config(), tmp_path / "notes.txt")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config().to_dict()))
    with caplog.at_level(logging.ERROR, logger="migu"):
        assert main(["run", str(path), "--out", str(tmp_path / "notes.txt" / "x")]) == 2
    assert "notes.txt" in caplog.records[-1].getMessage()


def test_unwritable_and_full_output_fail_before_training(
    tiny_config: Callable[..., RunConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_training(monkeypatch)
    with monkeypatch.context() as m:  # root ignores permission bits: the check is what is tested
        m.setattr(faults, "writable", lambda path: False)
        with pytest.raises(OutputError, match=rf"{tmp_path} is not writable by this user"):
            run(tiny_config(), tmp_path / "a" / "run")
    assert not (tmp_path / "a").exists()
    monkeypatch.setattr(faults, "free_bytes", lambda path: 1000)
    with pytest.raises(OutputError, match=r"only 1000 B free .* needs about .*MiB.*nothing was trained"):
        run(tiny_config(), tmp_path / "b")
    assert not (tmp_path / "b" / ckpt.STATE_FILE).exists()


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(
    tiny_config: Callable[..., RunConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, out = tiny_config(eval_baseline=False, data={"train_n": 16, "test_n": 8}), tmp_path / "run"
    real_save = ckpt.save_model
    calls: list[str] = []

    def full_on_second(model: object, path: str) -> None:
        calls.append(path)
        if len(calls) == 2:
            real_save(model, path)  # a part of the file made it to disk, then the disk was full
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real_save(model, path)

    monkeypatch.setattr(ckpt, "save_model", full_on_second)
    with pytest.raises(OutputError) as info:
        run(cfg, out)
    msg = str(info.value)
    assert "writing the checkpoint after stage 2 ('amazon') failed: No space left on device" in msg, msg
    assert "the checkpoint after stage 1 ('agnews') and the run state are intact" in msg
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["task_00"]  # no half-written temp directory left taking space
    state = json.loads((out / ckpt.STATE_FILE).read_text())
    assert state["trained"] == 1 and state["completed"] == 1
    ckpt.verify_checkpoint(out, 0, state["checkpoints"]["task_00"])  # intact, byte for byte

    monkeypatch.setattr(ckpt, "save_model", real_save)
    assert run(cfg, out).complete  # room again: resumes after stage 1


def test_a_failed_results_write_leaves_both_files_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = tmp_path / "results.json", tmp_path / "accuracy_matrix.csv"
    files.atomic_write_texts({a: "old a", b: "old b"})
    real = files._write_temp

    def full_on_the_csv(path: Path, text: str) -> str:
        if path == b:  # the first file's temp copy is written, the second finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)

    monkeypatch.setattr(files, "_write_temp", full_on_the_csv)
    full = r"writing the results failed: No space left on device .*free"
    with pytest.raises(OutputError, match=full), faults.writing("the results"):
        files.atomic_write_texts({a: "new a", b: "new b"})
    assert a.read_text() == "old a" and b.read_text() == "old b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy_matrix.csv", "results.json"]
