"""MIGU's CUDA paths in one unattended run (issue 16): correctness checks and the step benchmark.

Runs on a fresh GPU machine with only this repository and torch/transformers/peft/accelerate
installed (no downloads: random models from configs), in well under 5 minutes on one GPU, and
prints a short report (``--json`` writes it as JSON too). ``scripts/gpu_check.sh`` is the
one-command wrapper. ``--dry-run`` (= ``--device cpu --tiny``) runs every check on CPU at a tiny
size in seconds; the test suite runs it (tests/perf/test_gpu_check.py).

Checks (each passes, fails or is skipped with a reason; the exit code is 1 if any failed):

- ``bf16_statistic``: under bf16 autocast the statistic buffer is fp32 and equals a float64
  reference computed from the very bf16 layer outputs (fp32 accumulation, no bf16 sums); its
  distance to an fp32 forward and the mask agreement are reported.
- ``sparse_equals_dense``: ``sparse_backward=True`` gives the masks and (TF32 off) the weight
  gradients of the dense backward + ``apply()``.
- ``strict_bit_exact``: strict mode with fused AdamW on the device: masked rows and their AdamW
  moments are bit-identical through three steps, kept rows move.
- ``fused_adamw``: MIGU with fused AdamW equals foreach AdamW; a masked row's first update is 0.
- ``fsdp2``: ``fully_shard`` on a one-process group (NCCL on CUDA, gloo on CPU): DTensor
  gradients masked shard-locally, masks and weights equal an unsharded run.
- ``deepspeed``: ZeRO-2 on a one-process group with ``install_grad_hooks()``, if deepspeed is
  installed (skipped otherwise).
- ``step_benchmark``: FT vs FT+MIGU (grad) vs FT+MIGU (sparse) on a Llama-shaped random model
  (GPU: hidden 2048, 4 layers, batch 8 x 1024 tokens, bf16 autocast, fused AdamW), CUDA events,
  interleaved rounds in one process, ratios and ``torch.cuda.max_memory_allocated`` peaks.
- ``compile``: graph breaks MIGU adds (``torch._dynamo.explain``) and compiled FT vs compiled
  FT+MIGU (inductor on CUDA, aot_eager in the tiny CPU run); skipped when the time budget is
  short.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import json
import logging
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_step beside this file

import bench_step

import migu
from migu.engine import scale

log = logging.getLogger("gpu_check")
THRESHOLD = 0.7


@dataclass
class Size:
    """Model and batch of one run size."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int
    batch: int
    length: int
    check_batch: int  # batch of the correctness checks (they keep several copies alive)
    check_length: int
    rounds: int
    warmup: int


SIZES = {
    "gpu": Size(2048, 5504, 4, 16, 32000, 8, 1024, 2, 512, 20, 3),
    "tiny": Size(64, 172, 2, 4, 512, 2, 32, 2, 16, 3, 1),
}


# ---------------------------------------------------------------------------------------- setup
def build_llama(size: Size, device: torch.device, seed: int = 0) -> nn.Module:
    """A random Llama-shaped causal LM (no download), fp32, train mode, on ``device``."""
    import transformers

    transformers.logging.set_verbosity_error()
    config = transformers.LlamaConfig(
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        vocab_size=size.vocab,
        max_position_embeddings=max(size.length, size.check_length),
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).to(device).train()


def lm_batch(size: Size, device: torch.device, seed: int, batch: int, length: int) -> dict[str, torch.Tensor]:
    """Random tokens; the second half of the rows padded to 3/4 length (the statistic skips padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, size.vocab, (batch, length), generator=g)  # [B, L]
    mask = torch.ones_like(ids)
    mask[batch // 2 :, (3 * length) // 4 :] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {k: v.to(device) for k, v in {"input_ids": ids, "attention_mask": mask, "labels": labels}.items()}


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Exact fp32 matmuls for the equality checks (TF32 would round inputs to 10 mantissa bits)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@contextlib.contextmanager
def one_process_group(device: torch.device) -> Iterator[None]:
    """A world of one (NCCL on CUDA, gloo on CPU) for the FSDP2 / DeepSpeed checks."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_SIZE", "1")):
        os.environ[key] = value
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Skip(Exception):
    """A check that cannot run here (its reason is reported, it does not fail the run)."""


# --------------------------------------------------------------------------------------- checks
def check_bf16_statistic(size: Size, device: torch.device) -> dict[str, Any]:
    model = build_llama(size, device)
    batch = lm_batch(size, device, 1, size.check_batch, size.check_length)
    fp32 = migu.attach(model, migu.MIGUConfig(threshold=THRESHOLD))
    with torch.no_grad(), fp32.collecting(), no_tf32():
        model(**batch)
    ref_stats, ref_masks = fp32.statistics(), fp32.compute_masks()
    fp32.detach()
    masker = migu.attach(model, migu.MIGUConfig(threshold=THRESHOLD))
    outputs: dict[str, list[torch.Tensor]] = {t.name: [] for t in masker.targets}
    handles = [
        t.hook_module.register_forward_hook(lambda m, a, y, n=t.name: outputs[n].append(y.detach()))
        for t in masker.targets
    ]
    with torch.no_grad(), masker.collecting(), torch.autocast(device.type, dtype=torch.bfloat16):
        model(**batch)
    for h in handles:
        h.remove()
    stats, masks = masker.statistics(), masker.compute_masks()
    real = batch["attention_mask"].reshape(-1).double()
    exact_err = vs_fp32 = 0.0
    for t in masker.targets:
        y = outputs[t.name][0]
        assert y.dtype == torch.bfloat16
        a = y.double().abs().reshape(-1, y.shape[-1])  # [N, d] exactly the bf16 values, in float64
        ref = (real[:, None] * a / a.sum(1, keepdim=True).clamp_min(1e-12)).sum(0) / real.sum()
        exact_err = max(exact_err, float(((stats[t.name].double() - ref).abs() / ref.abs().max()).max()))
        diff = (stats[t.name] - ref_stats[t.name]).abs().max() / ref_stats[t.name].abs().max()
        vs_fp32 = max(vs_fp32, float(diff))
    agree = sum(int((masks[n] == ref_masks[n]).sum()) for n in masks) / sum(m.numel() for m in masks.values())
    ok = masker._flat is not None and masker._flat.dtype == torch.float32 and exact_err < 1e-4
    return {
        "ok": ok,
        "buffer_dtype": str(masker._flat.dtype if masker._flat is not None else None),
        "rel_err_vs_float64_of_bf16_outputs": exact_err,
        "rel_diff_vs_fp32_forward": vs_fp32,
        "mask_agreement_vs_fp32": agree,
    }


def check_sparse_equals_dense(size: Size, device: torch.device) -> dict[str, Any]:
    base = build_llama(size, device)
    batch = lm_batch(size, device, 2, size.check_batch, size.check_length)
    out: dict[str, Any] = {}
    with no_tf32():
        for sparse in (False, True):
            model = copy.deepcopy(base)
            masker = migu.attach(model, migu.MIGUConfig(threshold=THRESHOLD, sparse_backward=sparse))
            model(**batch).loss.backward()
            masks = masker.apply()
            out[sparse] = (masks, {t.name: t.weight.grad.clone() for t in masker.targets})
            del model, masker
    (dense_masks, dense_grads), (sparse_masks, sparse_grads) = out[False], out[True]
    same_masks = all(torch.equal(dense_masks[n], sparse_masks[n]) for n in dense_masks)
    err = max(
        float((sparse_grads[n] - g).abs().max() / g.abs().max().clamp_min(1e-30))
        for n, g in dense_grads.items()
    )
    masked_zero = all(bool((sparse_grads[n][~dense_masks[n]] == 0).all()) for n in dense_grads)
    ok = same_masks and err < 1e-4 and masked_zero
    return {"ok": ok, "masks_equal": same_masks, "max_rel_grad_err": err, "masked_rows_zero": masked_zero}


def _target_state(masker: migu.Masker, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for t in masker.targets:
        out[t.name] = t.weight.detach().clone()
        for key, value in opt.state.get(t.weight, {}).items():
            if torch.is_tensor(value) and value.shape == t.weight.shape:
                out[f"{t.name}:{key}"] = value.detach().clone()
    return out


def check_strict_bit_exact(size: Size, device: torch.device) -> dict[str, Any]:
    model = build_llama(size, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, fused=True)
    masker = migu.attach(model, migu.MIGUConfig(threshold=THRESHOLD, mode="strict"), optimizer=opt)
    exact, moved = True, True
    for step in range(3):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**lm_batch(size, device, 10 + step, size.check_batch, size.check_length)).loss
        loss.backward()
        masks = masker.apply()
        before = _target_state(masker, opt)
        opt.step()
        opt.zero_grad(set_to_none=True)
        after = _target_state(masker, opt)
        for t in masker.targets:
            dropped = (~masks[t.name]).nonzero().flatten()
            kept = masks[t.name].nonzero().flatten()
            for key in [k for k in before if k == t.name or k.startswith(t.name + ":")]:
                if key in after:
                    exact &= torch.equal(before[key][dropped], after[key][dropped])
            moved &= not torch.equal(before[t.name][kept], after[t.name][kept])
    return {"ok": exact and moved, "masked_rows_bit_identical": exact, "kept_rows_moved": moved}


def check_fused_adamw(size: Size, device: torch.device) -> dict[str, Any]:
    base = build_llama(size, device)
    states, first_update_zero = {}, True
    with no_tf32():
        for impl in ("fused", "foreach"):
            model = copy.deepcopy(base)
            kwargs = {"fused": True} if impl == "fused" else {"foreach": True}
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, **kwargs)
            masker = migu.attach(model, migu.MIGUConfig(threshold=THRESHOLD))
            for step in range(3):
                batch = lm_batch(size, device, 20 + step, size.check_batch, size.check_length)
                model(**batch).loss.backward()
                masks = masker.apply()
                before = {t.name: t.weight.detach().clone() for t in masker.targets} if step == 0 else None
                opt.step()
                opt.zero_grad(set_to_none=True)
                if before is not None and impl == "fused":
                    for t in masker.targets:
                        dropped = ~masks[t.name]
                        first_update_zero &= torch.equal(before[t.name][dropped], t.weight.detach()[dropped])
            states[impl] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            del model, opt, masker
    err = max(float((states["fused"][k] - v).abs().max()) for k, v in states["foreach"].items())
    return {"ok": err < 1e-5 and first_update_zero, "max_abs_diff_fused_vs_foreach": err,
            "masked_first_update_zero": first_update_zero}  # fmt: skip


def check_fsdp2(size: Size, device: torch.device) -> dict[str, Any]:
    if not dist.is_available():
        raise Skip("torch.distributed is not available")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    base = build_llama(size, device)
    batches = [lm_batch(size, device, 30 + s, size.check_batch, size.check_length) for s in range(2)]
    results = {}
    with no_tf32(), one_process_group(device):
        for sharded in (False, True):
            model = copy.deepcopy(base)
            if sharded:
                mesh = init_device_mesh(device.type, (1,))
                for block in model.model.layers:
                    fully_shard(block, mesh=mesh)
                fully_shard(model, mesh=mesh)
            masker = migu.attach(model, migu.MIGUConfig(threshold=THRESHOLD, mode="strict"))
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
            masker.bind_optimizer(opt)
            masks, dtensor = [], True
            for batch in batches:
                model(**batch).loss.backward()
                masks.append({k: v.clone() for k, v in masker.apply().items()})
                dtensor &= all(scale.is_dtensor(t.weight.grad) for t in masker.targets)
                opt.step()
                opt.zero_grad()
            full = {k: (v.full_tensor() if scale.is_dtensor(v) else v).detach().clone()
                    for k, v in model.state_dict().items()}  # fmt: skip
            results[sharded] = (masks, full, dtensor)
            masker.detach()
            del model, opt
    (ref_masks, ref_state, _), (masks, state, dtensor) = results[False], results[True]
    same = all(torch.equal(masks[s][n], ref_masks[s][n]) for s in range(len(masks)) for n in ref_masks[s])
    err = max(float((state[k] - v).abs().max()) for k, v in ref_state.items())
    return {"ok": same and dtensor and err < 1e-5, "dtensor_grads": dtensor, "masks_equal": same,
            "max_abs_weight_diff": err}  # fmt: skip


def check_deepspeed(size: Size, device: torch.device) -> dict[str, Any]:
    try:
        import deepspeed
    except ImportError as e:
        raise Skip(f"deepspeed not installed ({type(e).__name__}); CPU ZeRO-2/3 runs in the tests") from e
    base = build_llama(size, device)
    batches = [lm_batch(size, device, 40 + s, size.check_batch, size.check_length) for s in range(2)]
    with no_tf32():
        ref = copy.deepcopy(base)
        ref_masker = migu.attach(ref, migu.MIGUConfig(threshold=THRESHOLD))
        ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.0)
        for batch in batches:
            ref(**batch).loss.backward()
            ref_masker.apply()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
            ref_opt.step()
            ref_opt.zero_grad()
        with one_process_group(device):
            model = copy.deepcopy(base)
            config = {"train_micro_batch_size_per_gpu": size.check_batch, "gradient_clipping": 1.0,
                      "zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True}  # fmt: skip
            scale.check_deepspeed_config(config)
            masker = migu.attach(model, migu.MIGUConfig(threshold=THRESHOLD))
            masker.install_grad_hooks()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
            engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
            for batch in batches:
                engine.backward(engine(**batch).loss)
                masker.apply()
                engine.step()
            from deepspeed.utils import safe_get_full_fp32_param

            params = engine.module.named_parameters()
            state = {n: safe_get_full_fp32_param(p).detach().clone() for n, p in params}
    ref_state = dict(ref.named_parameters())
    err = max(float((state[n] - p.detach()).abs().max()) for n, p in ref_state.items() if n in state)
    return {"ok": err < 1e-4, "zero_stage": 2, "max_abs_weight_diff": err, "deepspeed": deepspeed.__version__}


def _time(variants: list[bench_step.Variant], batch: dict, size: Size, device: torch.device) -> None:
    bench_step.run_rounds(variants, batch, size.rounds, size.warmup, 0, device)


def check_step_benchmark(size: Size, device: torch.device) -> dict[str, Any]:
    base = build_llama(size, device)
    batch = lm_batch(size, device, 50, size.batch, size.length)
    names = ["FT", "FT+MIGU (grad)", "FT+MIGU (sparse)"]

    def build(name: str) -> bench_step.Variant:
        return bench_step.build_variant(name, base, "llama", THRESHOLD, 0, "fused", None, torch.bfloat16)

    variants = [build(n) for n in names]
    _time(variants, batch, size, device)
    times = [bench_step.Variant(v.name, v.model, v.optimizer, None, v.times) for v in variants]
    del variants
    memory = bench_step.peak_memory({n: (lambda n=n: build(n)) for n in names}, batch, device)
    rows = bench_step.summarize(times, memory)
    log.info("step benchmark (%s)\n%s", _shape(size), bench_step.table(rows))
    return {"ok": True, "shape": _shape(size), "autocast": "bf16", "optimizer": "fused AdamW",
            "variants": rows}  # fmt: skip


def check_compile(size: Size, device: torch.device, seconds_left: float) -> dict[str, Any]:
    reason = scale.compile_unsupported_reason(device)
    if reason is not None:
        raise Skip(reason)
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    needed = 150 if backend == "inductor" else 20
    if seconds_left < needed:
        raise Skip(f"{seconds_left:.0f} s left of the budget, compiling two models takes ~{needed} s")
    base = build_llama(size, device)
    small = lm_batch(size, device, 60, size.check_batch, size.check_length)
    plain = torch._dynamo.explain(copy.deepcopy(base))(**small).graph_break_count
    probe = copy.deepcopy(base)
    migu.attach(probe, migu.MIGUConfig(threshold=THRESHOLD))
    torch._dynamo.reset()
    with_migu = torch._dynamo.explain(probe)(**small).graph_break_count
    del probe
    torch._dynamo.reset()
    batch = lm_batch(size, device, 61, size.batch, size.length)
    names = ["FT", "FT+MIGU (grad)"]
    variants = [
        bench_step.build_variant(n, base, "llama", THRESHOLD, 0, "fused", backend, torch.bfloat16)
        for n in names
    ]
    t0 = time.perf_counter()
    bench_step.run_rounds(variants, batch, size.rounds, max(size.warmup, 2), 0, device)
    rows = bench_step.summarize(variants, {})
    return {
        "ok": with_migu == plain,
        "backend": backend,
        "graph_breaks_plain": plain,
        "graph_breaks_with_migu": with_migu,
        "seconds_with_compilation": time.perf_counter() - t0,
        "variants": rows,
    }


def _shape(size: Size) -> str:
    return (
        f"Llama hidden {size.hidden}, FFN {size.intermediate}, {size.layers} layers, {size.heads} heads, "
        f"vocab {size.vocab}, batch {size.batch} x {size.length}"
    )


# ---------------------------------------------------------------------------------------- driver
def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_threads": torch.get_num_threads(),
    }
    for name in ("transformers", "peft", "accelerate"):
        with contextlib.suppress(Exception):
            env[name] = __import__(name).__version__
    return env


def run_checks(size: Size, device: torch.device, budget_s: float, only: list[str] | None) -> list[dict]:
    start = time.perf_counter()
    checks: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("bf16_statistic", lambda: check_bf16_statistic(size, device)),
        ("sparse_equals_dense", lambda: check_sparse_equals_dense(size, device)),
        ("strict_bit_exact", lambda: check_strict_bit_exact(size, device)),
        ("fused_adamw", lambda: check_fused_adamw(size, device)),
        ("fsdp2", lambda: check_fsdp2(size, device)),
        ("deepspeed", lambda: check_deepspeed(size, device)),
        ("step_benchmark", lambda: check_step_benchmark(size, device)),
        ("compile", lambda: check_compile(size, device, budget_s - (time.perf_counter() - start))),
    ]
    results = []
    for name, fn in checks:
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        try:
            out = {"name": name, "status": "pass", **fn()}
            out["status"] = "pass" if out.pop("ok") else "FAIL"
        except Skip as e:
            out = {"name": name, "status": "skip", "reason": str(e)}
        except Exception as e:  # a broken check is a failure, and the others still run
            out = {"name": name, "status": "FAIL", "error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc(limit=6)}  # fmt: skip
        out["seconds"] = round(time.perf_counter() - t0, 2)
        if device.type == "cuda":
            out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        log.info("%-20s %-4s %6.1f s  %s", name, out["status"], out["seconds"], _summary(out))
        results.append(out)
    return results


def _summary(out: dict[str, Any]) -> str:
    keep = {k: v for k, v in out.items() if k not in ("name", "status", "seconds", "variants", "traceback")}
    text = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in keep.items())
    if "variants" in out:
        ratios = [
            f"{r['name']}: {r['median_ms']:.1f} ms"
            + (f" ({r['paired_ratio']:.3f}x)" if r.get("paired_ratio") else "")
            + (f", {r['peak_mib']:.0f} MiB" if r.get("peak_mib") else "")
            for r in out["variants"]
        ]
        text += ("; " if text else "") + "; ".join(ratios)
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    p.add_argument("--tiny", action="store_true", help="tiny model and batch (seconds)")
    p.add_argument("--dry-run", action="store_true", help="--device cpu --tiny: all checks, seconds")
    p.add_argument("--json", nargs="?", const="-", default=None, help="write the report as JSON to PATH or -")
    p.add_argument("--budget-s", type=float, default=270.0, help="time budget; compile is skipped past it")
    p.add_argument("--only", default=None, help="comma list of checks to run")
    args = p.parse_args(argv)
    if args.dry_run:
        args.device, args.tiny = "cpu", True
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False (use --dry-run for the CPU run)")
    args.device = torch.device(device)
    args.only = [c.strip() for c in args.only.split(",")] if args.only else None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("migu").setLevel(logging.WARNING)
    size = SIZES["tiny" if args.tiny else "gpu"]
    env = environment(args.device)
    log.info(
        "MIGU GPU check, %s: %s, torch %s, CUDA %s, %s",
        env["date"],
        env["gpu"] or "CPU",
        env["torch"],
        env["cuda"],
        "tiny" if args.tiny else _shape(size),
    )
    t0 = time.perf_counter()
    results = run_checks(size, args.device, args.budget_s, args.only)
    failed = [r["name"] for r in results if r["status"] == "FAIL"]
    total = time.perf_counter() - t0
    log.info(
        "%d checks: %d pass, %d skip, %d FAIL%s in %.0f s",
        len(results),
        sum(r["status"] == "pass" for r in results),
        sum(r["status"] == "skip" for r in results),
        len(failed),
        f" ({', '.join(failed)})" if failed else "",
        total,
    )
    if args.json is not None:
        report = {"env": env, "size": "tiny" if args.tiny else "gpu", "shape": _shape(size), "seconds": total,
                  "ok": not failed, "checks": results}  # fmt: skip
        text = json.dumps(report, indent=2, default=str) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            Path(args.json).write_text(text)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
