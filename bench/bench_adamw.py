"""AdamW step cost when MIGU zeroes gradient rows, per torch AdamW implementation.

Rows that MIGU masks at every step keep a second moment (``exp_avg_sq``) of exactly 0. On CPU,
torch's ``sqrt`` kernel is several times slower on exact zeros than on positive numbers, and the
for-loop and foreach AdamW take that ``sqrt`` of the whole second moment each step; the fused
kernel does not pay it. This script shows both effects in isolation, in one process:

1. ``sqrt`` of a MiniLM FFN-sized tensor: positive values, all zeros, 70% zero rows;
2. one AdamW step over MiniLM-L6's 36 target weights (6 layers x Q/K/V/O/FFN-in/FFN-out),
   with dense gradients vs gradients whose masked rows (the same 70% each step) are zero, for
   ``for-loop``, ``foreach`` and ``fused``.

Reports medians (ms) and the zero-rows/dense ratio per implementation; ``--json`` for machines.
``bench_step.py --optimizer`` measures the same effect inside whole training steps.

Examples::

    python bench/bench_adamw.py
    python bench/bench_adamw.py --smoke --json
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from bench_step import steady_malloc, write_json  # this script's directory is on sys.path when run

from migu.runner.optim import build_adamw

log = logging.getLogger("bench_adamw")

IMPLS = ("for-loop", "foreach", "fused")
# MiniLM-L6 target weights [d_out, d_in]: per layer Q, K, V, O, FFN in, FFN out.
MINILM_SHAPES = [(384, 384)] * 4 + [(1536, 384), (384, 1536)]


def median_ms(fn: Callable[[], Any], reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def sqrt_costs(shape: tuple[int, int], zero_frac: float, reps: int) -> dict[str, float]:
    """Median ms of ``torch.sqrt`` on positive values, all zeros and ``zero_frac`` zero rows."""
    g = torch.Generator().manual_seed(0)
    positive = torch.rand(shape, generator=g) + 1e-3  # [d_out, d_in]
    rows = positive.clone()
    rows[torch.randperm(shape[0], generator=g)[: int(zero_frac * shape[0])]] = 0
    inputs = {"positive": positive, "zeros": torch.zeros(shape), "zero_rows": rows}
    out = torch.empty(shape)  # one output buffer: no allocation inside the timing
    return {k: median_ms(lambda x=x: torch.sqrt(x, out=out), reps) for k, x in inputs.items()}


def adamw_costs(shapes: list[tuple[int, int]], zero_frac: float, impl: str, reps: int) -> dict[str, float]:
    """Median ms of one AdamW step, dense gradients vs the same rows zero at every step.

    Both optimizers are built first and stepped alternately (warmup, then ``reps`` rounds), so
    warm-up and machine drift hit both alike.
    """
    opts = {}
    for kind in ("dense", "zero_rows"):
        g = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.05) for s in shapes]
        for p in params:
            grad = torch.randn(p.shape, generator=g) * 1e-3
            if kind == "zero_rows":
                grad[torch.randperm(p.shape[0], generator=g)[: int(zero_frac * p.shape[0])]] = 0
            p.grad = grad  # the same gradient every step: masked rows' moments stay exactly 0
        opts[kind] = build_adamw(params, lr=1e-5, weight_decay=0.01, impl=impl)
    times: dict[str, list[float]] = {kind: [] for kind in opts}
    for r in range(3 + reps):
        for kind in opts if r % 2 == 0 else reversed(opts):
            t0 = time.perf_counter()
            opts[kind].step()
            if r >= 3:
                times[kind].append(time.perf_counter() - t0)
    out = {kind: statistics.median(t) * 1e3 for kind, t in times.items()}
    out["ratio"] = out["zero_rows"] / out["dense"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=6, help="MiniLM-shaped layers (6 = MiniLM-L6)")
    p.add_argument("--zero-frac", type=float, default=0.7, help="fraction of masked rows (MIGU's T)")
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--smoke", action="store_true", help="seconds: 1 small layer, 3 reps")
    p.add_argument("--json", nargs="?", const="-", default=None, help="write JSON to PATH (or stdout)")
    args = p.parse_args(argv)
    steady_malloc()  # as bench_step: freed memory is reused, not unmapped and faulted back in
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    shapes = MINILM_SHAPES * args.layers
    if args.smoke:
        shapes, args.reps = [(64, 32), (32, 64)], 3
    ffn = max(shapes, key=lambda s: s[0] * s[1])
    result: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "zero_frac": args.zero_frac,
        "params": sum(a * b for a, b in shapes),
        "sqrt_ms": sqrt_costs(ffn, args.zero_frac, args.reps),
        "adamw_ms": {impl: adamw_costs(shapes, args.zero_frac, impl, args.reps) for impl in IMPLS},
    }
    s = result["sqrt_ms"]
    log.info(
        "torch.sqrt on %s: positive %.3f ms, zeros %.3f ms, %d%% zero rows %.3f ms",
        list(ffn),
        s["positive"],
        s["zeros"],
        round(100 * args.zero_frac),
        s["zero_rows"],
    )
    log.info(
        "| AdamW step (%.1fM params) | dense ms | %d%% zero rows ms | ratio |",
        result["params"] / 1e6,
        round(100 * args.zero_frac),
    )
    log.info("| --- | ---: | ---: | ---: |")
    for impl, r in result["adamw_ms"].items():
        log.info("| %s | %.2f | %.2f | %.2f |", impl, r["dense"], r["zero_rows"], r["ratio"])
    if args.json is not None:
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
