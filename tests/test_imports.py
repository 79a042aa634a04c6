"""Issue 17.8: ``import migu``, ``migu.cli`` and ``migu --help`` stay light (no torch,
transformers or peft at import: module ``__getattr__`` in the package ``__init__``s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "transformers", "peft", "accelerate", "sklearn", "matplotlib")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def test_importing_the_cli_loads_no_heavy_library() -> None:
    code = (
        "import json, sys\n"
        "import migu, migu.cli, migu.engine, migu.runner, migu.analysis\n"
        "import migu.runner.faults, migu.runner.lock, migu.runner.results\n"
        "migu.cli.build_parser()\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_migu_help_is_quick() -> None:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "migu.cli", "--help"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
        check=False,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 0 and "continual learning" in proc.stdout, proc.stderr[-2000:]
    assert seconds < 5.0, f"migu --help took {seconds:.1f}s"  # seconds of torch/peft imports before


def test_the_public_names_still_resolve() -> None:
    import migu
    import migu.engine
    from migu import Masker, MIGUConfig, attach

    assert Masker is migu.engine.Masker and attach is migu.engine.attach
    assert MIGUConfig is migu.engine.MIGUConfig
    assert {"MIGUCallback", "MIGUConfig", "Masker", "attach"} <= set(dir(migu))
    assert set(migu.engine.__all__) <= set(dir(migu.engine))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        migu.nope  # noqa: B018
