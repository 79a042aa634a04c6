"""The ``migu analyze ...`` and ``migu report`` subcommands (argument parsing and printing only)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _cmd_similarity(args: argparse.Namespace) -> int:
    from .similarity import analyze_similarity, format_similarity

    out = Path(args.out) if args.out else Path(args.run_dirs[0]) / "analysis" / "similarity"
    res = analyze_similarity(
        args.run_dirs,
        out,
        layer=args.layer,
        labels=args.labels,
        samples=args.samples,
        threshold=args.threshold,
        checkpoint=args.checkpoint,
        seed=args.seed,
        batch_size=args.batch_size,
        data_root=args.data,
        device=args.device or _default_device(),
    )
    print(format_similarity(res))
    print(f"\nwritten to {out}: " + ", ".join(p.name for p in res.files))
    return 0


def _cmd_magnitudes(args: argparse.Namespace) -> int:
    from .magnitudes import analyze_magnitudes

    out = Path(args.out) if args.out else Path(args.run_dir) / "analysis" / "magnitudes"
    res, files = analyze_magnitudes(
        args.run_dir,
        out,
        layer=args.layer,
        tasks=args.tasks,
        sample=args.sample,
        seed=args.seed,
        checkpoint=args.checkpoint,
        threshold=args.threshold,
        window=args.window,
        data_root=args.data,
        device=args.device or _default_device(),
    )
    print(
        f"layer {res.layer}, checkpoint after task {res.checkpoint}, T={res.threshold:g}, window {res.window}"
    )
    for task, sentence in zip(res.tasks, res.sentences, strict=True):
        print(f"  {task}: {sentence[:100]!r}")
    print(f"written to {out}: " + ", ".join(p.name for p in files))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .ablations import analyze_sweeps

    out = Path(args.out) if args.out else Path(args.sweep_dirs[0]) / "analysis"
    res = analyze_sweeps(args.sweep_dirs, out, pool=args.pool)
    print((out / "sweep_summary.md").read_text())
    print(f"written to {out}: " + ", ".join(p.name for p in res.files))
    return 0


def _cmd_instruct(args: argparse.Namespace) -> int:
    from .instruct import analyze_instruct

    out = Path(args.out) if args.out else Path(args.run_dirs[0]) / "analysis"
    res = analyze_instruct(args.run_dirs, out, column=args.set, labels=args.labels)
    for name, pts in res.curves.items():
        print(name)
        for stage, learn, general in pts:
            print(f"  {stage:24s} learning {100 * learn:6.2f}  general {100 * general:6.2f}")
    print(f"written to {out}: " + ", ".join(p.name for p in res.files))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    res = build_report(args.inputs, args.out, title=args.title, pool=args.pool)
    for m in res.missing:
        print(f"not in the report: {m}")
    print(f"report: {res.markdown}\n        {res.html}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threshold", type=float, help="T for the updated-row sets (default: the run's MIGU T, else 0.7)"
    )
    p.add_argument(
        "--checkpoint",
        default="last",
        help="model measured: 'last' (after the last task, default), 'own' (each task after its own "
        "training; similarity only, needs keep_checkpoints), a task name or a 0-based task index",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the row sampling (default 0)")
    p.add_argument("--data", help="CL_Benchmark directory (default: the run's data_root, then $MIGU_DATA)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")


def add_commands(sub: Any) -> None:
    """Register ``analyze`` (similarity, magnitudes, sweep) and ``report`` on the main parser."""
    analyze = sub.add_parser("analyze", help="analyses of finished runs and sweeps: PNG figures + CSV/JSON")
    asub = analyze.add_subparsers(dest="analysis", required=True)

    p = asub.add_parser("similarity", help="task similarity: overlap of the rows MIGU would update per task")
    p.add_argument(
        "run_dirs", nargs="+", help="run directories (two, e.g. FT and FT+MIGU, are drawn side by side)"
    )
    p.add_argument("--samples", type=int, default=100, help="train rows per task (default 100, as the paper)")
    p.add_argument(
        "--layer",
        help="layer for the main heatmap, full name or dotted suffix (default: first FFN "
        "linear of the last block)",
    )
    p.add_argument("--labels", nargs="+", help="one panel title per run (default: method and MIGU T)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("-o", "--out", help="output directory (default: FIRST_RUN/analysis/similarity)")
    _common(p)
    p.set_defaults(func=_cmd_similarity)

    p = asub.add_parser(
        "magnitudes", help="magnitude distribution of single samples of different tasks on one layer"
    )
    p.add_argument("run_dir")
    p.add_argument("--layer", help="layer (default: first FFN linear of the last block)")
    p.add_argument("--tasks", nargs="+", help="tasks to overlay (default: the run's first five)")
    p.add_argument(
        "--sample", type=int, default=0, help="which row of the seeded shuffle of each task's train rows"
    )
    p.add_argument("--window", type=int, help="moving-average window in rows (default d_out / 32)")
    p.add_argument("-o", "--out", help="output directory (default: RUN/analysis/magnitudes)")
    _common(p)
    p.set_defaults(func=_cmd_magnitudes)

    p = asub.add_parser(
        "sweep", help="tables and figures of sweep directories (method x MIGU, threshold, components)"
    )
    p.add_argument("sweep_dirs", nargs="+")
    p.add_argument("-o", "--out", help="output directory (default: FIRST_SWEEP/analysis)")
    p.add_argument(
        "--pool",
        action="store_true",
        help="summarize all sweeps as one (e.g. the baselines' tune with FT's, for method-minus-FT "
        "effects); refused unless they ran the same setup on the same rows",
    )
    p.set_defaults(func=_cmd_sweep)

    p = asub.add_parser(
        "instruct", help="learning vs forgetting over epochs of instruction-tuning runs (the paper's figure)"
    )
    p.add_argument("run_dirs", nargs="+", help="instruct run directories (e.g. LoRA and LoRA+MIGU)")
    p.add_argument("--set", help="instruction set whose score is the learning axis (default: the mean)")
    p.add_argument("--labels", nargs="+", help="one legend label per run (default: method and MIGU T)")
    p.add_argument("-o", "--out", help="output directory (default: FIRST_RUN/analysis)")
    p.set_defaults(func=_cmd_instruct)

    p = sub.add_parser("report", help="one Markdown + HTML report from run, sweep and analysis directories")
    p.add_argument("inputs", nargs="+", help="run directories, sweep directories, `migu analyze` outputs")
    p.add_argument("-o", "--out", required=True, help="output directory (report.md, report.html, figures/)")
    p.add_argument("--title", default="MIGU report")
    p.add_argument(
        "--pool",
        action="store_true",
        help="the sweep directories as one sweep (as `migu analyze sweep --pool`): method-minus-FT/LoRA "
        "effects across tunes; refused unless they ran the same setup on the same rows",
    )
    p.set_defaults(func=_cmd_report)
