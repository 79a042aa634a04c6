"""Issue 17.8: one permission policy for every file a run writes: 0666 less the user's umask
(results files were 0600 from mkstemp while run.log was 0644)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from migu.runner import files
from migu.runner.config import RunConfig
from migu.runner.execute import run


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_follow_the_umask(tmp_path: Path, umask_027: None) -> None:
    assert files.current_umask() == 0o027
    files.atomic_write_text(tmp_path / "a.json", "{}")
    (tmp_path / "b.txt").write_text("plain open()")
    assert _mode(tmp_path / "a.json") == _mode(tmp_path / "b.txt") == 0o640


def test_every_file_of_a_run_has_one_mode(
    tiny_config: Callable[..., RunConfig], tmp_path: Path, umask_027: None
) -> None:
    out = tmp_path / "run"
    run(tiny_config(eval_baseline=False, data={"train_n": 8, "test_n": 8}), out)
    modes = {str(p.relative_to(out)): _mode(p) for p in out.rglob("*") if p.is_file()}
    assert {"results.json", "run_state.json", "config.yaml", "run.log"} <= set(modes)
    assert set(modes.values()) == {0o640}, modes
