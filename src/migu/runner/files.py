"""Atomic file writes with one file-mode policy: what every file a run writes goes through.

Standard library only (``runner.results`` and ``migu show`` read and write results without torch).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where Linux's /proc allows (``os.umask`` can only
    be read by setting it, which races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask_mode(path: Path) -> None:
    """Give a file the run's one mode, 0666 less the umask (safetensors writes 0600 files)."""
    os.chmod(path, 0o666 & ~current_umask())


def _write_temp(path: Path, text: str) -> str:
    """``text`` in a new temp file beside ``path`` (flushed to disk); returns the temp file's name.

    mkstemp creates 0600 files; the file gets the mode any other file of the run gets (run.log,
    checkpoints): 0666 less the user's umask, so one policy holds for every file a run writes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~current_umask())
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory and os.replace: readers never see half a file."""
    atomic_write_texts({path: text})


def atomic_write_texts(files: dict[Path, str]) -> None:
    """Write several files so that a failure while writing (a full disk) leaves every one of them as
    it was: all temp files are written first, then each is renamed into place."""
    written: list[tuple[str, Path]] = []
    try:
        for path, text in files.items():
            written.append((_write_temp(path, text), path))
        for tmp, path in written:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in written:
            Path(tmp).unlink(missing_ok=True)
        raise
