"""``shardio bench PATH``: loader throughput and RSS over time, with plots."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from shardio.core.errors import InvalidOptionError

from ._common import STDOUT, Output, add_output_options, parse_int

#: The library's parameter names, as this command's flags (for messages).
FLAGS = {
    "workers": "--workers",
    "batch_size": "--batch-size",
    "epochs": "--epochs",
    "order": "--order",
    "window": "--window",
    "samples": "--samples",
    "max_rss": "--max-rss",
    "interval": "--interval",
    "seed": "--seed",
    "format": "--format",
}

_EXAMPLES = """examples:
  shardio bench train.shardio --workers 0,2 --batch-size 256 --epochs 3 --order random \\
      --max-rss 512MB --json out.json --plot out.png
  shardio bench train.h5 --compare raw     # the same reads through the raw h5py loop
  shardio bench train.shardio --cold       # each epoch from a cold page cache
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure loader throughput and RSS over time",
        description="Read a dataset through a torch DataLoader in every configuration asked "
        "for, sampling RSS in the main process and each worker, and report samples/s, MB/s, "
        "epoch times, peak RSS and its growth, and the fraction of the machine's ceiling.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "path", help="a dataset directory, HDF5 file, LMDB environment or Zarr group"
    )
    parser.add_argument(
        "--format", help="lmdb, hdf5, zarr or mmap (alias raw), when the path does not tell"
    )
    parser.add_argument(
        "--workers", default="0", help="DataLoader worker counts, comma-separated (default 0)"
    )
    parser.add_argument("--batch-size", default="256", help="samples per batch (default 256)")
    parser.add_argument("--epochs", default="3", help="epochs per configuration (default 3)")
    parser.add_argument(
        "--order",
        default="random",
        help="random, sequential or shard-window (ShardSampler's, with its readahead; "
        "default random)",
    )
    parser.add_argument(
        "--window",
        default=None,
        help="shard-window bytes live at once, e.g. 256MB (default: half the smallest "
        "--max-rss, else 1GB)",
    )
    parser.add_argument(
        "--samples", default=None, help="samples read per epoch (default: the whole dataset)"
    )
    parser.add_argument(
        "--max-rss",
        default=None,
        help="memory budget per process, e.g. 512MB, or for the whole job: auto (the "
        "SLURM or cgroup limit) or total:8GB; a list such as none,512MB,auto compares "
        "runs without and with them",
    )
    parser.add_argument(
        "--compare",
        choices=["raw"],
        default=None,
        help="raw: also run the backend library's hand-written loop on the same indices",
    )
    parser.add_argument(
        "--cold", action="store_true", help="start every epoch from a cold page cache"
    )
    parser.add_argument(
        "--no-warm",
        action="store_true",
        help="leave the page cache as found (default: read the files once first when they fit)",
    )
    parser.add_argument("--plot", metavar="FILE", help="draw RSS over time and throughput to a PNG")
    parser.add_argument(
        "--interval", default="0.02", help="seconds between RSS samples (default 0.02)"
    )
    parser.add_argument("--seed", default="0", help="seed of the random order (default 0)")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the ceiling measurements")
    add_output_options(
        parser, verbose_help="also print every memory_stats() figure of each process"
    )
    parser.set_defaults(run=run, flags=FLAGS)


def _workers(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise InvalidOptionError(
            f"--workers should list worker counts such as 0,2, but got {text!r}"
        )
    return tuple(parse_int(p, "--workers", 0) for p in parts)


def _budgets(text: str | None) -> tuple[str | None, ...]:
    if text is None:
        return (None,)
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return tuple(None if p.lower() in ("none", "0", "off") else p for p in parts) or (None,)


def config_from_args(args: argparse.Namespace) -> Any:
    from ..bench.runner import BenchConfig

    if args.order not in ("random", "sequential", "shard-window"):
        raise InvalidOptionError(
            f"--order should be random, sequential or shard-window, but got --order={args.order!r}"
        )
    try:
        interval = float(args.interval)
    except ValueError:
        raise InvalidOptionError(
            f"--interval should be seconds, but got {args.interval!r}"
        ) from None
    return BenchConfig(
        workers=_workers(args.workers),
        batch_size=parse_int(args.batch_size, "--batch-size", 1),
        epochs=parse_int(args.epochs, "--epochs", 1),
        order=args.order,
        max_rss=_budgets(args.max_rss),
        cache="cold" if args.cold else ("asis" if args.no_warm else "warm"),
        compare_raw=args.compare == "raw",
        samples=None if args.samples is None else parse_int(args.samples, "--samples", 1),
        interval=interval,
        seed=parse_int(args.seed, "--seed", 0),
        ceiling=not args.no_ceiling,
        window=args.window,
        format=args.format,
    )


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (options as given)."""
    words = ["shardio", "bench", args.path]
    for option, value in (
        ("--format", args.format),
        ("--workers", args.workers),
        ("--batch-size", args.batch_size),
        ("--epochs", args.epochs),
        ("--order", args.order),
        ("--window", args.window),
        ("--samples", args.samples),
        ("--max-rss", args.max_rss),
        ("--compare", args.compare),
        ("--seed", args.seed),
    ):
        if value is not None:
            words += [option, str(value)]
    words += [flag for flag, on in (("--cold", args.cold), ("--no-warm", args.no_warm)) if on]
    return " ".join(shlex.quote(w) for w in words)


def run(args: argparse.Namespace) -> int:
    from ..bench import report as reports
    from ..bench.runner import run_bench

    output = Output(args)
    config = config_from_args(args)
    if args.plot:
        reports.require_matplotlib()  # fail before measuring, not after
    progress = None
    # Bars on a terminal only: redirected to a log, tqdm's carriage returns are noise.
    if output.progress and sys.stderr.isatty():
        from tqdm import tqdm

        def progress(name: str, total: int) -> Any:
            return tqdm(
                total=total, desc=name, unit="sample", unit_scale=True, file=sys.stderr, leave=False
            )

    result = run_bench(args.path, config, progress=progress, command=_command(args))
    output.line(reports.format_table(result, verbose=output.verbose > 0))
    if args.json == STDOUT:
        output.json(result.to_json())
    elif args.json:
        reports.write_json(result, args.json)
        output.line(f"wrote {args.json}")
    if args.plot:
        reports.write_plot(result, args.plot)
        output.line(f"wrote {args.plot}")
    return 0
