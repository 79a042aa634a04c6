"""Results on disk: ``results.json`` and ``accuracy_matrix.csv``, and a text table for people."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text

RESULTS_FILE = "results.json"
MATRIX_FILE = "accuracy_matrix.csv"


def write_results(run_dir: Path, results: dict[str, Any]) -> None:
    """Write both result files atomically (a reader never sees a half-written file)."""
    atomic_write_text(run_dir / RESULTS_FILE, json.dumps(results, indent=1))
    buf = io.StringIO()
    writer = csv.writer(buf)
    tasks = results["tasks"]
    writer.writerow(["after_task", *tasks])
    if results.get("baseline") is not None:
        writer.writerow(["(untrained)", *(f"{100 * v:.2f}" for v in results["baseline"])])
    for name, row in zip(tasks, results["matrix"], strict=False):
        writer.writerow([name, *(f"{100 * v:.2f}" for v in row)])
    atomic_write_text(run_dir / MATRIX_FILE, buf.getvalue())


def load_results(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {RESULTS_FILE} in {run_dir} (is it a finished migu run directory?)")
    return json.loads(path.read_text())


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:6.2f}"


def format_results(results: dict[str, Any]) -> str:
    """The accuracy matrix (%) and metrics as a plain-text table."""
    tasks: list[str] = results["tasks"]
    width = max(12, *(len(t) for t in tasks)) + 2
    lines = [
        f"run: {results.get('name', '?')}  method: {results.get('method', '?')}  "
        f"MIGU: {'off' if not results.get('migu') else results['migu'].get('threshold')}"
    ]
    lines.append("accuracy (%) after training on each task (rows) for each task (columns)")
    lines.append("after".ljust(width) + "".join(t[:10].rjust(11) for t in tasks))
    if results.get("baseline") is not None:
        lines.append("(untrained)".ljust(width) + "".join(_fmt(v).rjust(11) for v in results["baseline"]))
    for name, row in zip(tasks, results["matrix"], strict=False):
        lines.append(name.ljust(width) + "".join(_fmt(v).rjust(11) for v in row))
    m = results.get("metrics", {})
    if m:
        lines.append("")
        lines.append(
            "  ".join(f"{k.upper()} {_fmt(m.get(k)).strip()}" for k in ("acc", "bwt", "fwt", "forgetting"))
        )
    if results.get("complete") is False:
        lines.append(f"(incomplete: {len(results['matrix'])} of {len(tasks)} tasks finished)")
    if "wall_seconds" in results:
        lines.append(f"wall time {results['wall_seconds']:.0f}s")
    return "\n".join(lines)
