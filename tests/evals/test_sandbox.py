"""The subprocess sandbox: limits, isolation and hostile samples (each contained, harness alive).

Assertions that depend on what the machine allows (a network namespace, a privilege drop) are
skipped with the reason when it does not, never silently weakened; see ``Sandbox.info``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from migu.evals import sandbox as sandbox_mod
from migu.evals.sandbox import Sandbox, SandboxConfig, SandboxError

TIMEOUT_S = 3.0  # generous for a loaded machine; the hostile tests each wait it out once


@pytest.fixture(scope="module")
def box() -> Sandbox:
    return Sandbox(SandboxConfig(timeout_s=TIMEOUT_S, workers=2))


def _contained_processes(box: Sandbox) -> bool:
    """Whether a sample can neither see nor signal the harness's processes."""
    return box.info.privileges_dropped or box.info.pid_namespace


def _processes_with_cwd_under(prefix: str) -> list[int]:
    """Live processes whose cwd is (or was, before deletion) under ``prefix``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and cwd.removesuffix(" (deleted)").startswith(prefix):
            found.append(int(entry))
    return found


def _assert_no_leftovers(first_line: str) -> None:
    """The sample printed "<uid> <cwd>" first: nothing of it may still run."""
    uid, cwd = first_line.split(maxsplit=1)
    assert _processes_with_cwd_under(cwd) == []
    if int(uid) != os.getuid():
        assert sandbox_mod._processes_of_uid(int(uid)) == []


# --- config -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeout_s", 0),
        ("timeout_s", float("nan")),
        ("timeout_s", "10"),
        ("cpu_s", 0),
        ("memory_mb", 8),
        ("max_procs", 0),
        ("max_file_mb", 0),
        ("max_open_files", 4),
        ("network", "none"),
        ("workers", 0),
        ("workers", True),
        ("uid_base", 0),
        ("python", "python3"),
    ],
)
def test_config_rejects_bad_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"SandboxConfig\.{field}"):
        SandboxConfig(**{field: value})


def test_config_cpu_follows_timeout() -> None:
    assert SandboxConfig(timeout_s=2.5).cpu_s == 3
    assert SandboxConfig(timeout_s=2.5, cpu_s=7).rlimits()["RLIMIT_CPU"] == 7


def test_info_is_probed_once_and_reports_its_own_limits(
    box: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = box.info
    assert info.limits == box.config.rlimits()
    assert info.mode in ("namespaces", "netns", "userns", "userns-netns", "plain")
    if os.geteuid() == 0:
        assert info.privileges_dropped
    monkeypatch.setattr(Sandbox, "_execute", lambda *a, **k: pytest.fail("probed again"))
    other = Sandbox(SandboxConfig(timeout_s=TIMEOUT_S + 1, memory_mb=512)).info  # the cached probe
    assert (other.mode, other.network_isolated) == (info.mode, info.network_isolated)
    assert other.limits["RLIMIT_AS"] == 512 * 1024**2


def test_network_require_fails_before_running_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_mod, "_PROBE_CACHE", {})
    monkeypatch.setattr(sandbox_mod.shutil, "which", lambda name: None)  # no unshare

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a program was run")

    monkeypatch.setattr(Sandbox, "_execute", must_not_run)
    box = Sandbox(SandboxConfig(network="require"))
    with pytest.raises(SandboxError, match="network='require'"):
        box.run_many(["print(1)"])


# --- ordinary programs --------------------------------------------------------------------------------


def test_correct_program_passes_wrong_one_fails(box: Sandbox) -> None:
    ok, wrong, code3 = box.run_many(
        ["print('hello')", "assert 1 + 1 == 3, 'boom'", "import sys; sys.exit(3)"]
    )
    assert (ok.status, ok.returncode, ok.stdout) == ("passed", 0, "hello\n")
    assert (wrong.status, wrong.returncode) == ("failed", 1)
    assert "AssertionError: boom" in wrong.stderr
    assert (code3.status, code3.returncode, code3.signal) == ("failed", 3, None)
    assert all(r.duration_s < TIMEOUT_S for r in (ok, wrong, code3))


def test_sample_sees_empty_env_fresh_cwd_and_closed_stdin(box: Sandbox) -> None:
    result = box.run(
        "import os, sys\nprint(sorted(os.environ))\nprint(os.listdir('.'))\nprint(repr(sys.stdin.read()))\n"
    )
    env, listing, stdin = result.stdout.splitlines()
    assert set(eval(env)) <= {"LC_CTYPE"}  # set by Python's own C-locale coercion
    assert eval(listing) == ["main.py"]
    assert stdin == "''"


def test_output_is_truncated_head_and_tail(box: Sandbox) -> None:
    result = box.run("print('A' * 50000 + 'END')")
    assert result.passed
    assert "bytes truncated" in result.stdout
    assert result.stdout.startswith("AAAA") and result.stdout.rstrip().endswith("END")
    assert len(result.stdout) < 3 * sandbox_mod.OUTPUT_KEEP_BYTES


# --- hostile samples ----------------------------------------------------------------------------------


def test_infinite_loop_is_killed_at_timeout() -> None:
    box = Sandbox(SandboxConfig(timeout_s=1.0, workers=1))
    start = time.monotonic()
    result = box.run("while True:\n    pass\n")
    assert result.status == "timed_out"
    assert result.duration_s < 1.0 + 1.0
    assert time.monotonic() - start < 1.0 + 3.0


def test_sleeping_sample_is_killed_at_timeout() -> None:
    box = Sandbox(SandboxConfig(timeout_s=1.0, workers=1))
    result = box.run("import time\ntime.sleep(60)\n")  # uses no CPU: only the wall clock stops it
    assert (result.status, result.signal) == ("timed_out", "SIGKILL")
    assert result.duration_s < 2.0


def test_nproc_limits_forks(box: Sandbox) -> None:
    # Harmless first: 50 forks of children that sleep; at most max_procs processes may exist.
    result = box.run(
        "import os, time\n"
        "ok = 0\n"
        "for _ in range(50):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(1)\n"
        "        os._exit(0)\n"
        "    ok += 1\n"
        "print(ok)\n"
    )
    assert result.passed, result.stderr
    assert int(result.stdout) <= box.config.max_procs - 1


def test_fork_bomb_is_contained_and_leaves_nothing(box: Sandbox) -> None:
    if not box.info.privileges_dropped and os.geteuid() == 0:
        pytest.skip("running as root without a privilege drop: RLIMIT_NPROC would not bind")
    bomb = (
        "import os, time\n"
        "print(os.getuid(), os.getcwd(), flush=True)\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        time.sleep(0.001)\n"
    )
    start = time.monotonic()
    result = box.run(bomb)
    assert result.status == "timed_out"
    assert time.monotonic() - start < TIMEOUT_S + 5.0
    _assert_no_leftovers(result.stdout.splitlines()[0])
    assert box.run("print('still fine')").stdout == "still fine\n"


def test_fork_bomb_does_not_starve_samples_running_beside_it(box: Sandbox) -> None:
    if not box.info.privileges_dropped:
        pytest.skip("without a privilege drop every sample shares the invoking user's RLIMIT_NPROC count")
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    good = "import threading\nt = threading.Thread(target=print, args=('ok',))\nt.start()\nt.join()\n"
    results = box.run_many([bomb] + [good] * 6)
    assert results[0].status == "timed_out"
    assert [r.stdout for r in results[1:]] == ["ok\n"] * 6


def test_setsid_escapee_is_killed(box: Sandbox) -> None:
    if not _contained_processes(box):
        pytest.skip("no pid namespace and no dedicated uid: a setsid() child would escape the group kill")
    result = box.run(
        "import os, time\n"
        "print(os.getuid(), os.getcwd(), flush=True)\n"
        "os.setsid()\n"
        "if os.fork() == 0:\n"
        "    time.sleep(60)\n"
    )
    assert result.passed
    _assert_no_leftovers(result.stdout.splitlines()[0])


def test_memory_bomb_fails_under_rlimit_as() -> None:
    box = Sandbox(SandboxConfig(timeout_s=TIMEOUT_S, memory_mb=256, workers=2))
    big, growing = box.run_many(
        [
            "x = bytearray(8 * 1024**3)\n",
            "x = []\nwhile True:\n    x.append(bytearray(16 * 1024**2))\n",
        ]
    )
    for result in (big, growing):
        assert result.status == "failed"
        assert "MemoryError" in result.stderr


def test_huge_output_is_cut_by_rlimit_fsize() -> None:
    box = Sandbox(SandboxConfig(timeout_s=TIMEOUT_S, max_file_mb=1, workers=1))
    result = box.run("import sys\nsys.stdout.write('x' * (4 * 1024**2))\n")
    assert result.status == "failed"
    assert len(result.stdout) < 3 * sandbox_mod.OUTPUT_KEEP_BYTES


def test_writes_outside_the_work_dir_are_blocked(box: Sandbox) -> None:
    if not (box.info.privileges_dropped or box.info.private_tmp):
        pytest.skip("sample runs as the invoking user without a private /tmp: it may write what the user may")
    token = secrets.token_hex(6)
    target = Path(f"/tmp/migu-sandbox-test-{token}")
    loose = Path(f"/tmp/migu-sandbox-loose-{token}")
    target.mkdir(mode=0o755)
    try:
        os.chmod(target, 0o755)
        victim = target / "victim.txt"
        victim.write_text("original")
        os.chmod(victim, 0o644)
        result = box.run(
            "import os\n"
            f"for action in ('overwrite', 'create', 'remove', 'loose'):\n"
            "    try:\n"
            f"        if action == 'overwrite': open({str(victim)!r}, 'w').write('pwned')\n"
            f"        if action == 'create': open({str(target / 'new.txt')!r}, 'w').write('pwned')\n"
            f"        if action == 'remove': os.remove({str(victim)!r})\n"
            f"        if action == 'loose': open({str(loose)!r}, 'w').write('pwned')\n"
            "        print(action, 'done')\n"
            "    except OSError as e:\n"
            "        print(action, 'blocked', type(e).__name__)\n"
            "open('mine.txt', 'w').write('inside is fine')\n"
        )
        assert result.passed, result.stderr
        assert victim.read_text() == "original"
        assert sorted(p.name for p in target.iterdir()) == ["victim.txt"]
        for action in ("overwrite", "create", "remove"):
            assert f"{action} blocked" in result.stdout
        if box.info.private_tmp:
            assert not loose.exists()  # it went to the sample's own throwaway /tmp
        else:
            assert "loose" in result.stdout  # documented: world-writable /tmp stays writable
    finally:
        shutil.rmtree(target, ignore_errors=True)
        loose.unlink(missing_ok=True)


_HELPER = """
import sys
sys.path.insert(0, sys.argv[1])  # this checkout's package (the sandbox imports migu.validation)
from migu.evals import sandbox as sb
result = sb.Sandbox(sb.SandboxConfig(timeout_s=5, workers=1)).run(sys.stdin.read())
print(result.stdout + result.stderr)
"""


def test_parent_environment_is_not_readable(box: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    if not _contained_processes(box):
        pytest.skip(
            "no pid namespace and no privilege drop: /proc/<pid>/environ of the user's processes is readable"
        )
    secret = f"migu-secret-{secrets.token_hex(8)}"
    monkeypatch.setenv("MIGU_SANDBOX_TEST_SECRET", secret)
    snoop = (
        "import os\n"
        "print(dict(os.environ))\n"
        "for pid in [os.getppid()] + [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    try:\n"
        "        print(pid, open(f'/proc/{pid}/environ', 'rb').read())\n"
        "    except OSError as e:\n"
        "        print(pid, type(e).__name__)\n"
    )
    direct = box.run(snoop)
    assert secret not in direct.stdout + direct.stderr
    # /proc/<pid>/environ shows a process's environment from its start: run the sandbox from a
    # helper process that was started with the secret, as a real harness would be.
    helper = subprocess.run(
        [sys.executable, "-c", _HELPER, str(Path(sandbox_mod.__file__).parents[2])],
        input=snoop,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MIGU_SANDBOX_TEST_SECRET": secret},
    )
    assert helper.returncode == 0, helper.stderr
    assert helper.stdout.strip(), "the snooping sample printed nothing"
    assert secret not in helper.stdout


def test_socket_to_the_host_gets_no_connection(box: Sandbox) -> None:
    if not box.info.network_isolated:
        pytest.skip(f"no network namespace on this machine (sandbox mode {box.info.mode!r})")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        port = server.getsockname()[1]
        result = box.run(
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('in')\n"
        )
        with pytest.raises(TimeoutError):
            server.accept()
    assert result.status == "failed"
    assert "in" not in result.stdout


def test_killing_the_parent_leaves_the_harness_alive(box: Sandbox) -> None:
    if not _contained_processes(box):
        pytest.skip("no pid namespace and no privilege drop: the sample could signal the test process")
    result = box.run(
        "import os, signal\n"
        f"for pid in (os.getppid(), {os.getpid()}):\n"
        "    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "        print(pid, 'killed')\n"
        "    except OSError as e:\n"
        "        print(pid, type(e).__name__)\n"
    )
    assert "killed" not in result.stdout
    assert box.run("print('alive')").stdout == "alive\n"


def test_batch_of_hostile_samples_keeps_going(box: Sandbox) -> None:
    programs = [
        "print('first')",
        "while True:\n    pass\n",
        "x = bytearray(64 * 1024**3)\n",
        "import os\nos._exit(9)\n",
        "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n",
        "raise SystemExit('bye')",
        "print('last')",
    ]
    results = box.run_many(programs, progress=False)
    assert [r.status for r in results] == [
        "passed",
        "timed_out",
        "failed",
        "failed",
        "failed",
        "failed",
        "passed",
    ]
    assert results[3].returncode == 9
    assert results[4].signal == "SIGSEGV"
    assert (results[0].stdout, results[-1].stdout) == ("first\n", "last\n")
