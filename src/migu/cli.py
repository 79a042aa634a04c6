"""The ``migu`` command: run, list, show (thin: the work lives in the library)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("migu")


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner.config import load_config
    from .runner.execute import run

    config = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / config.name
    if args.num_processes > 1:
        from .runner.launch import launch_run

        return launch_run(
            config,
            args.config,
            args.overrides,
            out,
            args.data,
            args.num_processes,
            restart=args.restart,
            rollback=args.rollback,
        )
    results = run(config, out, data_root=args.data, restart=args.restart, rollback=args.rollback)
    from .runner.results import format_results

    print(format_results(results))
    print(f"\nrun directory: {out}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    if args.what == "tasks":
        from .data import get_task, list_tasks

        for name in list_tasks():
            spec = get_task(name)
            text = spec.instruction or "(the sentence carries its own question)"
            print(f"{spec.name:10s} {spec.category:8s} {text}")
    elif args.what == "domains":
        from .data import get_domain, list_domains

        for name in list_domains():
            d = get_domain(name)
            print(f"{d.name:20s} {d.description}")
    elif args.what == "orders":
        from .data import get_order, list_orders

        for name in list_orders():
            order = get_order(name)
            print(f"{order.name:15s} [{order.regime}] {' '.join(order.tasks)}\n{'':15s} {order.description}")
    else:
        from .methods import REGIMES, get_method_class, list_methods

        for regime in REGIMES:
            print(f"{regime}: {', '.join(list_methods(regime))}")
        print()
        for name in list_methods():
            cls = get_method_class(name)
            print(f"{name:12s} {cls.paper_name}: {cls.description}")
            print(f"{'':12s} needs {cls.needs.describe()}; regimes: {', '.join(cls.regimes)}")
            if cls.migu_compatible:
                print(f"{'':12s} +MIGU: migu.threshold defaults to the paper's {cls.default_threshold:g}")
            else:
                print(f"{'':12s} +MIGU: not supported (a config with migu set is refused)")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from .runner.results import format_results, load_results

    for d in args.run_dirs:
        print(format_results(load_results(d)))
        print()
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .grid.sweep import run_sweep

    summary = run_sweep(args.sweep, out=args.out, data_root=args.data, overrides=args.overrides)
    out = Path(args.out) if args.out else Path("runs") / str(summary["name"])
    print((out / "summary.md").read_text())
    if summary.get("busy"):
        print(f"being run by another process (skipped): {', '.join(summary['busy'])}")
    if summary.get("failed"):
        print(f"failed (non-finite loss; see each cell's results.json): {', '.join(summary['failed'])}")
    print(f"sweep directory: {out}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from .grid.tune import run_tune

    summary = run_tune(
        args.sweep, out=args.out, data_root=args.data, overrides=args.overrides, summarize=args.summarize
    )
    print(summary["markdown"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="migu", description="MIGU continual learning for language models")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train a model through a task order and write a run directory")
    p.add_argument("config", help="YAML run config (see configs/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=1e-4 migu.threshold=0.5")
    p.add_argument("--data", help="CL_Benchmark directory (default: config data_root, then $MIGU_DATA)")
    p.add_argument("--out", help="run directory (default: runs/<config name>); re-running resumes")
    p.add_argument(
        "--restart",
        action="store_true",
        help="start the run in --out again with this (changed) config, while none of its stages finished",
    )
    p.add_argument(
        "--rollback",
        action="store_true",
        help="when the checkpoint a resume needs is corrupt, train again from the last intact one",
    )
    p.add_argument(
        "--num-processes",
        type=int,
        default=1,
        metavar="N",
        help="run in N processes (one per GPU; gloo CPU processes without one) through accelerate launch",
    )
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("sweep", help="run a grid of configs (methods x MIGU x seeds ...) and summarise it")
    p.add_argument("sweep", help="YAML sweep file (see configs/sweeps/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every cell")
    p.add_argument("--data", help="CL_Benchmark directory (default: config data_root, then $MIGU_DATA)")
    p.add_argument("--out", help="sweep directory (default: runs/<sweep name>); re-running resumes")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser(
        "tune", help="choose each method's setting on validation rows, then score the choice once on test"
    )
    p.add_argument(
        "sweep", help="YAML sweep file with 'select' (the grid keys to choose over), see configs/sweeps/"
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every cell")
    p.add_argument("--data", help="CL_Benchmark directory (default: config data_root, then $MIGU_DATA)")
    p.add_argument("--out", help="tune directory (default: runs/<name>_tune); re-running resumes")
    p.add_argument(
        "--summarize",
        action="store_true",
        help="train nothing: rewrite the tune summary from the cells' results.json (e.g. committed results)",
    )
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("list", help="list registered tasks, domains, orders or CL methods")
    p.add_argument("what", choices=["tasks", "domains", "orders", "methods"])
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("show", help="print the accuracy matrix and metrics of finished runs")
    p.add_argument("run_dirs", nargs="+")
    p.set_defaults(func=_cmd_show)

    from .analysis.cli import add_commands as add_analysis_commands  # analyze ..., report

    add_analysis_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may stand after the options too (`migu run C --out O train.lr=1e-4`)
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    unknown = [a for a in extra if a not in overrides]
    if unknown or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("transformers", "accelerate", "peft"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        # Bad input: one clear line, no traceback (ConfigError and DataError are ValueErrors).
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        log.error("%s", msg)
        return 2
    except RuntimeError as exc:
        from .runner.faults import RunError

        if not isinstance(exc, RunError):
            raise
        # A run that cannot go on (diverged, locked, corrupt checkpoint, unwritable output): the
        # message says what failed, what was kept and what to do.
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
