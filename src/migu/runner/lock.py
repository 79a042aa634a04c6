"""An exclusive lock on a run directory for the whole run: ``RUN/.lock``, held with ``flock``.

Why flock and not "a lock file exists": the kernel releases a flock when its process dies, however
it dies (SIGKILL, OOM killer, a lost node), so a lock can never be held by a dead process. A
``.lock`` FILE left behind by one (it had no chance to remove it) is therefore stale exactly when
nobody holds its flock, and the next run takes it over. The file holds the holder's pid, host and
start time, so a refused run can say who holds the directory.

Limits: flock is advisory (only migu takes it), and on network file systems it is only as good as
the file system's lock support (NFSv4: yes; some FUSE/SMB mounts: no). Without ``fcntl`` (not a
POSIX system) the lock is a no-op, with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from .faults import OutputError, RunLockedError, describe_os_error

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


def _read_holder(fd: int) -> dict[str, Any]:
    """What a lock file says about its holder ({} when empty or unreadable)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8", errors="replace")
        data = json.loads(text) if text.strip() else {}
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process that has not written its pid yet"
    since = holder.get("since")
    when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since)) if since else ""
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{when}"


class RunLock:
    """``with RunLock(run_dir):`` holds ``run_dir/.lock`` exclusively, or raises RunLockedError at
    once naming the holder's pid; released (and the file removed) on exit."""

    def __init__(self, run_dir: str | os.PathLike[str], what: str = "run directory") -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.what = what
        self._fd: int | None = None
        self.took_over: dict[str, Any] | None = None  # the stale holder's record, if one was replaced

    def acquire(self) -> None:
        if fcntl is None:  # pragma: no cover
            log.warning("no fcntl on this system: %s is not locked against a second run", self.path.parent)
            return
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise OutputError(
                    f"cannot create the lock file {self.path}: {describe_os_error(exc)}"
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # BlockingIOError: a live process holds it
                holder = _read_holder(fd)
                os.close(fd)
                pid = holder.get("pid")
                raise RunLockedError(
                    f"{self.path.parent} is in use by another migu run ({describe_holder(holder)}); "
                    f"wait for it to finish, or use another --out (two runs in one {self.what} would "
                    "overwrite each other's checkpoints)",
                    pid=pid if isinstance(pid, int) else None,
                ) from None
            # The holder before us may have removed the file between our open and our flock: then we
            # hold a lock on a deleted file, and must lock the one now at the path instead.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        stale = _read_holder(fd)
        if stale:
            self.took_over = stale
            log.warning(
                "%s: taking over the lock left by %s, which is gone (its lock was released)",
                self.path.parent,
                describe_holder(stale),
            )
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(record).encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):  # a read-only directory by now: the flock goes anyway
            self.path.unlink(missing_ok=True)  # while holding the lock: nobody can be mid-takeover
        os.close(self._fd)  # releases the flock
        self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
