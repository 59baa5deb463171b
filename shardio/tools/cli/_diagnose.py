"""``shardio diagnose PATH``: trace a DataLoader over a dataset and name its bottleneck."""

from __future__ import annotations

import argparse
from typing import Any

from shardio.core.errors import InvalidOptionError

from ._common import Output, add_output_options, parse_int

#: The library's parameter names, as this command's flags (for messages).
FLAGS = {"max_rss": "--max-rss"}

_EXAMPLES = """examples:
  shardio diagnose train.shardio --workers 7 --batch-size 256 --step-ms 100 --plot timeline.png
  shardio diagnose train.shardio --sweep workers=0,1,2,4 --step-ms 20 --plot sweep.png
  shardio diagnose train.h5 --workers 4 --trace trace.json   # open in ui.perfetto.dev
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "diagnose",
        help="trace a DataLoader over a dataset and name the bottleneck",
        description="Read a dataset through a torch DataLoader feeding a simulated training "
        "step (a sleep of --step-ms), trace every batch (load in its worker, the loop's "
        "wait, the step) and say whether the loop is data-bound or compute-bound, with the "
        "arithmetic; --sweep compares settings.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "path", help="a dataset directory, HDF5 file, LMDB environment or Zarr group"
    )
    parser.add_argument("--workers", default="2", help="DataLoader workers (default 2)")
    parser.add_argument("--batch-size", default="256", help="samples per batch (default 256)")
    parser.add_argument(
        "--step-ms", default="10", help="the simulated training step in ms (default 10)"
    )
    parser.add_argument("--batches", default="50", help="batches per run (default 50)")
    parser.add_argument(
        "--prefetch-factor", default=None, help="batches each worker loads ahead (default 2)"
    )
    parser.add_argument(
        "--order", default="random", help="random or sequential sample order (default random)"
    )
    parser.add_argument("--max-rss", default=None, help="memory budget per process, e.g. 512MB")
    parser.add_argument(
        "--sweep",
        default=None,
        metavar="SETTING=V1,V2,...",
        help="run once per value: workers, batch-size or prefetch-factor, e.g. workers=0,1,2,4",
    )
    parser.add_argument(
        "--plot", metavar="FILE", help="the timeline PNG (with --sweep: samples/s per value)"
    )
    parser.add_argument(
        "--trace", metavar="FILE", help="the trace in Chrome trace-event JSON (not with --sweep)"
    )
    add_output_options(parser, verbose_help="also print each batch's record (worker, load, wait)")
    parser.set_defaults(run=run, flags=FLAGS)


def _step_seconds(value: str) -> float:
    try:
        milliseconds = float(value)
    except ValueError:
        milliseconds = -1.0
    if not milliseconds >= 0:
        raise InvalidOptionError(
            f"--step-ms should be milliseconds >= 0, but got --step-ms={value!r}"
        )
    return milliseconds / 1000


def _sweep(text: str) -> tuple[str, list[int]]:
    from ..diagnose.simulate import SWEEPABLE

    setting, _, values = text.partition("=")
    setting = setting.strip()
    parts = [v.strip() for v in values.split(",") if v.strip()]
    if setting not in SWEEPABLE or not parts:
        raise InvalidOptionError(
            f"--sweep should be SETTING=V1,V2,... with SETTING one of {', '.join(SWEEPABLE)}, "
            f"but got --sweep={text!r}"
        )
    minimum = 0 if setting == "workers" else 1
    return setting, [parse_int(v, f"--sweep {setting}", minimum) for v in parts]


def settings_from_args(args: argparse.Namespace) -> Any:
    from ..diagnose.simulate import LoaderSettings

    if args.order not in ("random", "sequential"):
        raise InvalidOptionError(
            f"--order should be random or sequential, but got --order={args.order!r}"
        )
    workers = parse_int(args.workers, "--workers", 0)
    prefetch = None
    if args.prefetch_factor is not None:
        prefetch = parse_int(args.prefetch_factor, "--prefetch-factor", 1)
        if workers == 0 and not (args.sweep or "").startswith("workers"):
            raise InvalidOptionError("--prefetch-factor needs --workers 1 or more")
    return LoaderSettings(
        workers=workers,
        batch_size=parse_int(args.batch_size, "--batch-size", 1),
        prefetch_factor=prefetch,
        step_seconds=_step_seconds(args.step_ms),
        batches=parse_int(args.batches, "--batches", 2),
        order=args.order,
    )


def run(args: argparse.Namespace) -> int:
    from shardio.loading.dataset import ShardedDataset

    from ..diagnose import plot as plots
    from ..diagnose.simulate import run_settings, sweep

    settings = settings_from_args(args)
    swept = _sweep(args.sweep) if args.sweep else None
    if swept and args.trace:
        raise InvalidOptionError("--trace writes one run's trace: leave it out with --sweep")
    if args.plot:
        plots.require_matplotlib()  # fail before measuring, not after
    output = Output(args)
    dataset = ShardedDataset(args.path, max_rss=args.max_rss)
    if swept is None:
        traced = run_settings(dataset, settings)
        output.line(traced.report())
        for record in traced.records:
            output.detail(f"  {record}")
        if args.plot:
            traced.plot(args.plot)
            output.line(f"wrote {args.plot}")
        if args.trace:
            traced.save(args.trace)
            output.line(f"wrote {args.trace}")
        output.json(traced.summary().as_dict())
        return 0
    setting, values = swept
    summaries = sweep(dataset, settings, setting, values)
    output.line(format_sweep(setting, values, summaries, settings.step_seconds))
    if args.plot:
        plots.plot_sweep(setting, values, summaries, args.plot)
        output.line(f"wrote {args.plot}")
    from ..diagnose.analysis import recommend

    output.json(
        {
            "setting": setting,
            "recommended": recommend(values, summaries),
            "runs": [{setting: v, **s.as_dict()} for v, s in zip(values, summaries, strict=True)],
        }
    )
    return 0


def format_sweep(setting: str, values: list[int], summaries: list[Any], step: float) -> str:
    """The what-if table: one row per value of the swept setting."""
    from ..diagnose.analysis import recommend, secs

    lines = [
        f"what if {setting} were ... (a {secs(step)} step)" if step else f"what if {setting} ...",
        f"{setting:>15}  {'samples/s':>10}  {'batches/s':>9}  {'waiting':>7}  "
        f"{'wait/batch':>10}  bound",
    ]
    for value, s in zip(values, summaries, strict=True):
        per_batch = s.wait_seconds / max(s.batches - s.passes, 1)
        rate = "-" if s.samples_per_s is None else f"{s.samples_per_s:,.0f}"
        batches = "-" if s.batches_per_s is None else f"{s.batches_per_s:.1f}"
        lines.append(
            f"{value:>15}  {rate:>10}  {batches:>9}  {100 * s.wait_fraction:>6.0f}%  "
            f"{secs(per_batch):>10}  {s.bound}"
        )
    best = recommend(values, summaries)
    if best is not None:
        lines.append(f"use {setting}={best}: the fewest within 10% of the fastest in this sweep")
    return "\n".join(lines)
