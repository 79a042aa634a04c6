"""How a run fails: the errors a run raises when it cannot go on, and the checks of its output
directory made before any training (``docs/reliability.md``).

Every error here is a :class:`RunError`: its message says what failed, what was kept, and what to
do next, and ``migu`` prints it as one line and exits 2 (like bad input). Standard library only, so
the command line can name these types without loading torch.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


class RunError(RuntimeError):
    """A run that cannot go on; the message says what failed, what is intact and what to do."""


class DivergedError(RunError):
    """A non-finite loss, gradient norm or weight (``train.nonfinite: stop``).

    ``stage`` is the stage name, ``step`` the first bad optimizer step (1-based; None when only the
    weights after the last step were found non-finite).
    """

    def __init__(self, message: str, stage: str, step: int | None, detail: str) -> None:
        super().__init__(message)
        self.stage, self.step, self.detail = stage, step, detail


class RunLockedError(RunError):
    """The run directory is locked by another live process (``pid`` of the holder, if known)."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


class CheckpointError(RunError):
    """A checkpoint file that does not match its recorded sha256 or cannot be read."""


class OutputError(RunError):
    """The output directory cannot be written (not a directory, no permission, no space)."""


def existing_ancestor(path: Path) -> Path:
    """The nearest existing path at or above ``path`` (what a mkdir -p would start from)."""
    p = Path(os.path.abspath(path))
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def writable(path: Path) -> bool:
    """Whether this process may create entries in directory ``path`` (a seam tests replace)."""
    return os.access(path, os.W_OK | os.X_OK)


def free_bytes(path: Path) -> int:
    """Free bytes on the file system holding ``path`` (a seam tests replace)."""
    return shutil.disk_usage(path).free


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def check_output_dir(run_dir: Path) -> None:
    """Before anything is created or loaded: ``run_dir`` is, or can be made, a writable directory.

    Catches an ``--out`` under a regular file, a run directory that is a file, and a directory
    this user cannot write, each with one message naming the path.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"--out {run_dir} is a file, not a directory; choose another --out")
    base = existing_ancestor(run_dir)
    if not base.is_dir():
        raise OutputError(
            f"--out {run_dir}: {base} is a {'file' if base.is_file() else 'non-directory'}, so no "
            "directory can be made under it; choose another --out"
        )
    if not writable(base):
        raise OutputError(f"--out {run_dir}: {base} is not writable by this user; choose another --out")


def check_free_space(run_dir: Path, need: int, what: str) -> None:
    """At least ``need`` bytes free where ``run_dir`` lives, else an OutputError before training."""
    free = free_bytes(existing_ancestor(run_dir))
    if free < need:
        raise OutputError(
            f"--out {run_dir}: only {_size(free)} free on its file system, {what} needs about {_size(need)}; "
            "free some space or choose another --out (nothing was trained)"
        )


def describe_os_error(exc: OSError) -> str:
    """``[Errno 28] No space left on device: 'path'`` in words, with a hint for the usual causes."""
    text = exc.strerror or str(exc)
    if exc.filename:
        text += f" ({exc.filename})"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        text += "; free some space"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        text += "; check the directory's permissions"
    return text


@contextlib.contextmanager
def writing(what: str, intact: str = "") -> Iterator[None]:
    """Turn an OSError while writing ``what`` into an OutputError that says what failed and what
    was left intact (``intact``), so a full disk mid-run is one clear message, not a traceback."""
    try:
        yield
    except OSError as exc:
        hint = f"; {intact}" if intact else ""
        raise OutputError(f"writing {what} failed: {describe_os_error(exc)}{hint}") from exc
