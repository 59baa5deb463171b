"""The ``shardio bench`` suite: every backend through the bench runner (issue 5).

Generates one synthetic dataset per backend (same samples everywhere), runs the
runner of ``shardio bench`` on each (DataLoader with 0 and 2 workers, random order,
RSS sampled in every process, the raw library loop on the same indices, the machine's
ceiling), and writes the table to benchmarks/RESULTS.md ("shardio bench suite
(issue 5)") and one plot per backend to benchmarks/figures/.

    python benchmarks/bench_suite.py                       # small: about a minute
    python benchmarks/bench_suite.py --size 8GB --samples 100000   # the real figure
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common

from shardio import format_size, parse_size
from shardio.tools.bench import BenchConfig, format_table, run_bench, write_json, write_plot
from shardio.tools.bench.synthetic import write_synthetic

FORMATS = ("lmdb", "mmap", "hdf5", "zarr")
HEADING = "shardio bench suite (issue 5)"


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="64MB", help="bytes per dataset (default 64MB)")
    parser.add_argument("--sample-bytes", default="16KB", help="bytes per sample (default 16KB)")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=2048, help="samples per epoch (0: all)")
    parser.add_argument("--max-rss", default=None, help="budgets to compare, e.g. none,512MB")
    parser.add_argument("--cold", action="store_true", help="every epoch from a cold cache")
    parser.add_argument("--dir", default=None, help="where to write the datasets (default: temp)")
    parser.add_argument("--write", action="store_true", help="update RESULTS.md and figures/")
    args = parser.parse_args(argv)

    sample_bytes = parse_size(args.sample_bytes)
    count = max(1, parse_size(args.size) // sample_bytes)
    budgets = tuple(
        None if b.strip().lower() == "none" else b.strip()
        for b in (args.max_rss or "none").split(",")
    )
    config = BenchConfig(
        workers=tuple(int(w) for w in args.workers.split(",")),
        batch_size=args.batch_size,
        epochs=args.epochs,
        order="random",
        max_rss=budgets,  # type: ignore[arg-type]
        cache="cold" if args.cold else "warm",
        compare_raw=True,
        samples=args.samples or None,
    )
    root = args.dir or tempfile.mkdtemp(prefix="shardio-bench-suite-")
    os.makedirs(root, exist_ok=True)
    if args.write:
        os.makedirs(_common.FIGURES, exist_ok=True)
    rows = []
    try:
        for fmt in (f.strip() for f in args.formats.split(",")):
            path = os.path.join(root, f"suite-{fmt}.shardio")
            if not os.path.exists(os.path.join(path, "manifest.json")):
                print(f"writing {count:,} samples of {sample_bytes:,} bytes as {fmt}", flush=True)
                write_synthetic(path, fmt, count, sample_bytes)
            report = run_bench(path, config, command=_common.command_line())
            print(format_table(report), flush=True)
            if args.write:
                write_plot(report, os.path.join(_common.FIGURES, f"suite-{fmt}.png"))
                write_json(report, os.path.join(_common.FIGURES, f"suite-{fmt}.json"))
            for run in report.runs:
                workers = " ".join(
                    f"{_mib(v.peak)} (+{_mib(v.growth)})" for v in run.worker_rss.values()
                )
                rows.append(
                    [
                        fmt,
                        run.name,
                        f"{run.samples_per_s:,.0f}",
                        f"{run.bytes_per_s / 1e6:,.0f}",
                        "-" if run.raw_ratio is None else f"{run.raw_ratio:.2f}x",
                        "-"
                        if run.fraction_of_ceiling is None
                        else f"{run.fraction_of_ceiling:.1%}",
                        run.cache_label,
                        " / ".join(f"{e.seconds:.2f}" for e in run.epochs),
                        f"{_mib(run.main.peak)} (+{_mib(run.main.growth)})",
                        workers or "-",
                    ]
                )
            ceiling = report.ceiling
            if ceiling is not None:
                disk = ceiling.disk_bytes_per_s or 0
                rows.append(
                    [fmt, "ceiling", "", f"memcpy {ceiling.memcpy_bytes_per_s / 1e6:,.0f}",
                     "", "", "", f"cold read {disk / 1e6:,.0f} MB/s", "", ""]
                )  # fmt: skip
            if args.dir is None:
                shutil.rmtree(path)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    header = [
        "backend",
        "configuration",
        "samples/s",
        "MB/s",
        "vs raw",
        "of ceiling",
        "cache",
        "epoch s",
        "main peak MiB (growth)",
        "worker peak MiB (growth)",
    ]
    table = _common.markdown_table(header, rows)
    print(table)
    if args.write:
        figures = " ".join(
            f"![{f}](figures/suite-{f}.png)" for f in args.formats.split(",") if f.strip()
        )
        body = "\n\n".join(
            [
                f"Command: `{_common.command_line()}`",
                f"Machine: {_common.machine_line()}. The 2 cores were shared with other "
                "engineers' test runs: compare ratios within one run, not absolute figures.",
                f"Datasets: {count:,} synthetic samples of {format_size(sample_bytes)} per "
                f"backend ({format_size(count * sample_bytes)}); torch DataLoader with the "
                f"default collate, batch {config.batch_size}, random order, {config.epochs} "
                f"epochs of {config.samples or count:,} samples, {config.cache} cache. "
                "`vs raw`: samples/s over the backend library's hand-written `__getitem__` "
                "in a DataLoader with as many workers; `of ceiling`: MB/s over memcpy "
                "bandwidth (warm) or cold sequential read (cold); growth: peak RSS over the "
                "process's baseline. Full JSON next to each figure.",
                table,
                figures,
            ]
        )
        _common.replace_section(HEADING, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
