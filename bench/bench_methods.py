"""What each CL method costs next to FT: training time and peak memory of one real run per method.

Each method runs the real runner (``migu.runner.execute.run``: its task hooks, EWC's Fisher passes,
LwF's teacher, DER++'s buffer, OSF's decompositions, MIGU's masker, checkpoints) in a fresh
process, on the same run config (default: the CPU proxy ``configs/cpu/standard_proxy.yaml``,
shrunk by ``--train-n / --test-n / --length``), one method after another. FT runs first and again
last: the second FT run, ``FT (A/A)``, shows how far the machine drifted over the benchmark (no
ratio can be read finer than its distance from 1).

Reported per method, each also as a ratio to the first FT run:
- ``stage s``: the run's time without evaluation (``wall_seconds`` minus each stage's
  ``eval_seconds``): training loops plus the method's task-boundary work and the checkpoints;
- ``loop s``: the training loops alone (``timings[].train_seconds``), i.e. the per-step cost;
- ``peak MiB``: CUDA: ``torch.cuda.max_memory_allocated()`` over the run; CPU: the process's
  peak resident set (``ru_maxrss``) minus its resident set before the run (after the imports): the
  model, optimizer state, method state (teacher copy, Fisher, buffer), activations and data.

One run per method, not a paired interleaving (``bench_step.py`` does that for single steps):
take ratios within ~the A/A distance as equal.

Examples::

    python bench/bench_methods.py --data ../shared/data/CL_Benchmark          # CPU proxy, all methods
    python bench/bench_methods.py --methods ft,ft+migu,ewc --json results.json
    python bench/bench_methods.py --config configs/paper/order1_ft.yaml --data DIR --train-n 2000
    python bench/bench_methods.py --config configs/cpu/das_proxy.yaml \
        --methods ft,ft+migu,ewc,derpp,das --data ../shared/data/CL_Benchmark   # continual pre-training
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("bench_methods")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "cpu" / "standard_proxy.yaml"
# The finetuning regime's methods (``migu list methods``), FT and LoRA also with MIGU.
DEFAULT_METHODS = (
    "ft,ft+migu,lora,lora+migu,inclora,olora,lora_replay,ft_replay,"
    "ewc,lora_ewc,lwf,lora_lwf,derpp,lora_derpp,osf"
)


def _rss_mib() -> float:
    """Peak resident set of this process so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(spec: str, config_path: str, overrides: list[str], data: str | None, out: Path) -> dict[str, Any]:
    """Run one method in this process and measure it (``--child``)."""
    import torch

    from migu.runner.config import load_config
    from migu.runner.execute import run

    method, _, plus = spec.partition("+")
    if plus not in ("", "migu"):
        raise SystemExit(f"method {spec!r}: write NAME or NAME+migu")
    config = load_config(
        config_path, [*overrides, f"method.name={method}", f"migu={'{}' if plus else 'null'}"]
    )
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else _rss_mib()
    results = run(config, out / spec, data_root=data)
    eval_s = sum(t.get("eval_seconds", 0.0) for t in results.timings)
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20 if cuda else _rss_mib() - before
    return {
        "method": spec,
        "complete": results.complete,
        "stage_seconds": results.wall_seconds - eval_s,
        "loop_seconds": sum(t["train_seconds"] for t in results.timings),
        "eval_seconds": eval_s,
        "steps": sum(t["steps"] for t in results.timings),
        "peak_mib": peak,
        "memory_method": "cuda max_memory_allocated" if cuda else "peak RSS - RSS before the run",
        # finetuning: ACC over the tasks; continual pre-training: the end tasks' ACC after the last domain
        "acc": results.metrics.get("acc", results.metrics.get("final_acc")),
    }


def measure(spec: str, args: argparse.Namespace, overrides: list[str], out: Path) -> dict[str, Any]:
    """One method in a fresh process (so its peak memory is its own)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", spec, "--config", args.config]
    cmd += ["--out", str(out)] + (["--data", args.data] if args.data else [])
    cmd += [x for o in overrides for x in ("--set", o)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec}: the run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the rows, ratios against the first FT run."""
    head = "| method | stage s | x FT | loop s | x FT | peak MiB | x FT | steps | ACC (%) |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        acc = "-" if r["acc"] is None else f"{100 * r['acc']:.2f}"
        lines.append(
            f"| {r['name']} | {r['stage_seconds']:.1f} | {r['stage_ratio']:.2f} | {r['loop_seconds']:.1f} | "
            f"{r['loop_ratio']:.2f} | {r['peak_mib']:.0f} | {r['peak_ratio']:.2f} | {r['steps']} | {acc} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="the run config every method runs")
    p.add_argument("--data", default=None, help="benchmark data root (as `migu run --data`)")
    p.add_argument("--methods", default=DEFAULT_METHODS, help="comma list of NAME or NAME+migu")
    p.add_argument("--train-n", type=int, default=320, help="training rows per task (data.train_n)")
    p.add_argument("--test-n", type=int, default=50, help="test rows per task (data.test_n)")
    p.add_argument("--length", type=int, default=128, help="model.max_length")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    p.add_argument("--out", default=None, help="run directories (default: a temporary directory)")
    p.add_argument("--json", default=None, help="write the rows and the environment to this file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def shrink_overrides(args: argparse.Namespace) -> list[str]:
    """``--train-n / --test-n / --length`` as overrides for a finetuning config. A continual
    pre-training config has no such rows (its domains' sizes are in the registry, its MLM length is
    ``pretrain.block_size``, its end tasks' length ``pretrain.end_task.max_length``): the shrink is
    left out and its size is set with ``--set pretrain.steps_per_domain=N``."""
    from migu.runner.config import load_config
    from migu.runner.plan import resolve_regime

    regime, _ = resolve_regime(load_config(args.config, args.set))
    if regime == "finetune":
        return [
            f"data.train_n={args.train_n}",
            f"data.test_n={args.test_n}",
            f"model.max_length={args.length}",
        ]
    log.info(
        "%s: %s regime: --train-n/--test-n/--length do not apply (size it with --set)", args.config, regime
    )
    return []


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.child:  # the measured process: one JSON line on stdout, the run's own log on stderr
        res = child(args.child, args.config, args.set, args.data, Path(args.out))
        sys.stdout.write(json.dumps(res) + "\n")
        return 0
    specs = [s.strip() for s in args.methods.split(",") if s.strip()]
    if not specs or len(set(specs)) != len(specs):
        raise SystemExit(f"--methods {args.methods!r}: give each method once")
    overrides = [*shrink_overrides(args), *args.set]
    order = ["ft", *(s for s in specs if s != "ft"), "ft"]  # FT first and last: the A/A drift
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        rows = []
        for k, spec in enumerate(order):
            run_out = out / f"pass{k}" if spec == "ft" else out
            log.info("method %d/%d: %s", k + 1, len(order), spec)
            r = measure(spec, args, overrides, run_out)
            r["name"] = "FT (A/A)" if spec == "ft" and k > 0 else spec
            rows.append(r)
    ft = rows[0]
    for r in rows:
        for key, base in (("stage", "stage_seconds"), ("loop", "loop_seconds"), ("peak", "peak_mib")):
            r[f"{key}_ratio"] = r[base] / ft[base] if ft[base] > 0 else float("nan")
    text = table(rows)
    sys.stdout.write(text + "\n")
    if args.json:
        import torch

        env = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name()
            if torch.cuda.is_available()
            else platform.processor() or "cpu",
            "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "config": args.config,
            "overrides": overrides,
        }
        Path(args.json).write_text(json.dumps({"env": env, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
