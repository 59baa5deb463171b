"""A benchmark report three ways: a table for people, JSON for machines, a PNG plot.

The plot has two panels: RSS over time of every process of every configuration
(main solid, workers dashed), and throughput per configuration. matplotlib is an
optional dependency (``pip install shardio-data[bench]``); asking for a plot without it
raises `BackendNotInstalledError` before anything is measured
(see `require_matplotlib`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from shardio.core.config import format_size
from shardio.core.errors import BackendNotInstalledError

from .runner import BenchReport, RunResult

__all__ = ["format_table", "require_matplotlib", "write_json", "write_plot", "JSON_KEYS"]

#: Top-level keys of the JSON report, and the keys of each run (documented in docs/bench.md).
JSON_KEYS = ("shardio_bench", "command", "dataset", "config", "machine", "ceiling", "runs")
RUN_KEYS = (
    "name",
    "loader",
    "workers",
    "batch_size",
    "order",
    "max_rss",
    "seconds",
    "samples",
    "bytes",
    "samples_per_s",
    "bytes_per_s",
    "cache",
    "raw_ratio",
    "fraction_of_ceiling",
    "epochs",
    "rss",
    "memory_stats",
    "worker_memory_stats",
)

_MB = 1e6


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.0f}"


def _run_rows(run: RunResult) -> list[str]:
    ratio = f"{run.raw_ratio:.2f}x" if run.raw_ratio is not None else "-"
    fraction = f"{run.fraction_of_ceiling:.1%}" if run.fraction_of_ceiling is not None else "-"
    epochs = " ".join(f"{e.seconds:.2f}" for e in run.epochs)
    worker_peaks = " ".join(
        f"w{k}:{_mib(v.peak)}(+{_mib(v.growth)})" for k, v in run.worker_rss.items()
    )
    return [
        run.name,
        f"{run.samples_per_s:,.0f}",
        f"{run.bytes_per_s / _MB:,.1f}",
        ratio,
        fraction,
        run.cache_label,
        epochs,
        f"{_mib(run.main.peak)}(+{_mib(run.main.growth)})",
        worker_peaks or "-",
    ]


_HEADER = [
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


def format_table(report: BenchReport, verbose: bool = False) -> str:
    """The human-readable report: dataset, machine, ceiling, one row per run, and what
    each reading process's memory budget did (``verbose``: every memory_stats figure)."""
    machine = report.machine
    lines = [
        f"dataset  {report.path}: {report.format}, {report.num_samples:,} samples, "
        f"{report.shards} shard(s), {format_size(report.nbytes)}",
        f"machine  {machine.get('cpus_usable') or machine.get('cpu_count')} cores, "
        f"{format_size(machine.get('memory_bytes') or 0)} memory, {machine.get('cpu_model')}",
        f"config   batch {report.config.batch_size}, {report.config.epochs} epoch(s), "
        f"{report.config.order} order, {report.config.cache} cache"
        + (f", {report.config.samples} samples/epoch" if report.config.samples else ""),
    ]
    if report.ceiling is not None:
        disk = report.ceiling.disk_bytes_per_s
        lines.append(
            f"ceiling  memcpy {report.ceiling.memcpy_bytes_per_s / _MB:,.0f} MB/s, "
            + (
                f"cold sequential read {disk / _MB:,.0f} MB/s "
                f"({format_size(report.ceiling.disk_bytes)} read)"
                if disk
                else "disk not measured"
            )
        )
    rows = [_HEADER] + [_run_rows(r) for r in report.runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    lines.append("")
    for number, row in enumerate(rows):
        cells = [
            cell.ljust(width) if i in (0, 5, 8) else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(
        "vs raw: samples/s over the raw library loop with as many workers; of ceiling: MB/s "
        "over memcpy bandwidth (warm) or cold sequential read (cold); growth: peak RSS "
        "over the process's baseline."
    )
    memory = [line for run in report.runs for line in _memory_lines(run, verbose)]
    if memory:
        lines.append("")
        lines.extend(memory)
    return "\n".join(lines)


def _memory_lines(run: RunResult, verbose: bool) -> list[str]:
    """One line per reading process of a budgeted run (of every shardio run when
    ``verbose``): its own growth, bytes read and what the budget did."""
    if run.max_rss is None and not verbose:
        return []
    lines = []
    for process, stats in run.reading_memory_stats.items():
        if not isinstance(stats, dict):
            continue
        if verbose:
            figures = ", ".join(f"{k} {_figure(k, v)}" for k, v in stats.items())
        else:
            figures = (
                f"peak growth {format_size(stats.get('peak_growth') or 0)}, "
                f"{format_size(stats.get('bytes_read') or 0)} read, "
                f"{stats.get('checks', 0)} checks, {stats.get('releases', 0)} releases "
                f"({format_size(stats.get('advised_bytes') or 0)} advised), "
                f"{stats.get('reopens', 0)} reopens"
            )
        lines.append(f"memory   {run.name} {process}: {figures}")
    return lines


def _figure(key: str, value: Any) -> str:
    """A memory_stats value for people: byte counts as sizes."""
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (key.startswith("rss") or key.endswith(("bytes", "growth", "_read")))
    ):
        return format_size(value)
    return str(value)


def write_json(report: BenchReport, path: str | os.PathLike[str]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(report.to_json(), handle, indent=1)
        handle.write("\n")


def require_matplotlib() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or a one-line install hint."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise BackendNotInstalledError(
            "--plot needs matplotlib, which is not installed: pip install matplotlib "
            "(or pip install 'shardio-data[bench]')"
        ) from None
    return plt


def write_plot(report: BenchReport, path: str | os.PathLike[str]) -> None:
    """RSS over time per process and configuration, and throughput per configuration."""
    plt = require_matplotlib()
    figure, (rss_axes, rate_axes) = plt.subplots(
        1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [3, 2]}
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for number, run in enumerate(report.runs):
        color = colors[number % len(colors)]
        series = [("main", run.main, "-")] + [(f"w{k}", v, "--") for k, v in run.worker_rss.items()]
        for name, rss, style in series:
            if not len(rss.samples):
                continue
            seconds = rss.samples["t"] - report.start
            rss_axes.plot(
                seconds,
                rss.samples["rss"] / 2**20,
                style,
                color=color,
                linewidth=1.2 if name == "main" else 0.9,
                label=f"{run.name} {name}",
            )
    rss_axes.set_xlabel("seconds since the benchmark started")
    rss_axes.set_ylabel("RSS (MiB)")
    rss_axes.set_title("Resident memory per process (main solid, workers dashed)")
    rss_axes.grid(alpha=0.3)
    rss_axes.legend(fontsize=7, ncol=2)

    names = [r.name for r in report.runs]
    rates = [r.samples_per_s for r in report.runs]
    bars = rate_axes.barh(
        range(len(names)),
        rates,
        color=[colors[i % len(colors)] for i in range(len(names))],
    )
    for bar, run in zip(bars, report.runs, strict=True):
        note = f" {run.bytes_per_s / _MB:,.0f} MB/s"
        if run.raw_ratio is not None:
            note += f", {run.raw_ratio:.2f}x raw"
        rate_axes.text(
            bar.get_width(), bar.get_y() + bar.get_height() / 2, note, va="center", fontsize=7
        )
    rate_axes.set_yticks(range(len(names)), names, fontsize=8)
    rate_axes.invert_yaxis()
    rate_axes.set_xlabel("samples/s")
    rate_axes.set_title(f"Throughput ({report.config.order}, batch {report.config.batch_size})")
    rate_axes.grid(axis="x", alpha=0.3)
    rate_axes.margins(x=0.35)
    figure.suptitle(
        f"{os.path.basename(report.path.rstrip('/'))}: {report.format}, "
        f"{report.num_samples:,} samples, {format_size(report.nbytes)}",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
