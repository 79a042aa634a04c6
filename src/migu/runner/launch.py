"""``migu run --num-processes N``: one run over N processes, started through Accelerate's own
launcher (``accelerate launch``), after the config and data are checked once in this process."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import ConfigError, RunConfig
from .plan import plan_run
from .resume import prepare_run_dir
from .world import check_world

log = logging.getLogger(__name__)


def _free_port() -> int:
    """A free local TCP port for the rendezvous (two launches on one host must not share one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(
    config_path: str, overrides: Sequence[str], out: Path, data: str | None, processes: int, cuda: bool
) -> list[str]:
    """The ``accelerate launch`` command line that runs ``migu run`` in ``processes`` processes."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    cmd += [
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--main_process_port",
        str(_free_port()),
    ]
    # the run config decides precision (the Accelerator's own argument); no compile by the launcher
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    if not cuda:
        cmd += ["--num_cpu_threads_per_process", str(max((os.cpu_count() or 1) // processes, 1))]
    cmd += [
        "-m",
        "migu.cli",
        "run",
        str(Path(config_path).resolve()),
        *overrides,
        "--out",
        str(out.resolve()),
    ]
    if data:
        cmd += ["--data", str(Path(data).resolve())]
    return cmd


def launch_run(
    config: RunConfig,
    config_path: str,
    overrides: Sequence[str],
    out: Path,
    data: str | None,
    processes: int,
    restart: bool = False,
    rollback: bool = False,
) -> int:
    """Check everything here (config, data, batch split), apply ``--restart``/``--rollback`` once,
    then launch; returns the launch's exit code (the processes write the run directory)."""
    import torch

    if processes < 1:
        raise ConfigError(f"--num-processes must be at least 1, got {processes}")
    if os.environ.get("WORLD_SIZE"):
        raise ConfigError(
            "--num-processes inside a launch: run `migu run` without it under accelerate launch"
        )
    plan = plan_run(config, out, data)  # every input checked before any process starts
    check_world(plan, processes)
    if restart or rollback:
        prepare_run_dir(plan, restart, rollback)
    cuda = torch.cuda.is_available()
    if cuda and torch.cuda.device_count() < processes:
        raise ConfigError(
            f"--num-processes {processes} but only {torch.cuda.device_count()} GPUs are visible"
        )
    env = dict(os.environ)
    if not cuda:
        env["ACCELERATE_USE_CPU"] = "1"  # CPU processes over gloo
    cmd = launch_command(config_path, overrides, out, data, processes, cuda)
    log.info("launching %d processes: %s", processes, " ".join(cmd))
    return subprocess.run(cmd, env=env, check=False).returncode
