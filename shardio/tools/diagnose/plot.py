"""Pictures of a trace: the timeline (a row per worker, the loop, the device copy, RSS
below) and, for a sweep, samples/s against the swept setting."""

from __future__ import annotations

import os
import textwrap
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shardio.core.errors import BackendNotInstalledError

from .records import MAIN_PROCESS

if TYPE_CHECKING:
    from .analysis import TraceSummary
    from .tracer import Trace

__all__ = ["plot_sweep", "plot_timeline", "require_matplotlib"]

LOAD, WAIT, STEP, COPY, STARTUP = "#4878d0", "#d62728", "#6acc64", "#ee854a", "#bbbbbb"


def require_matplotlib() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or a one-line install hint."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise BackendNotInstalledError(
            "plotting a trace needs matplotlib, which is not installed: pip install matplotlib "
            "(or pip install 'shardio[bench]')"
        ) from None
    return plt


def plot_timeline(trace: Trace, summary: TraceSummary, path: str | os.PathLike[str]) -> None:
    plt = require_matplotlib()
    from matplotlib.patches import Patch

    records = trace.records
    t0 = min(
        [r.ask for r in records] + [r.load_start for r in records if r.load_start is not None],
        default=trace.started,
    )
    workers = sorted({r.worker for r in records if r.worker is not None})
    slow = {int(f.text.split()[1]) for f in summary.findings if f.kind == "slow-worker"}
    rows: list[str] = ["training loop"]
    if trace.source.has_copy:
        rows.append("device copy")
    rows += ["loading (main)" if w == MAIN_PROCESS else f"worker {w}" for w in workers]
    row_of = {name: i for i, name in enumerate(rows)}

    height = 1.6 + 0.42 * len(rows)
    has_memory = bool(trace.memory)
    figure, axes = plt.subplots(
        2 if has_memory else 1, 1, figsize=(13, height + (2.6 if has_memory else 0)),
        sharex=True, squeeze=False,
        gridspec_kw={"height_ratios": [height, 2.6] if has_memory else [1]},
    )  # fmt: skip
    timeline = axes[0][0]
    bars: dict[tuple[int, str], list[tuple[float, float]]] = defaultdict(list)
    end = 0.0
    firsts = {r.pass_index: r.index for r in reversed(records)}
    for r in records:
        loop = row_of["training loop"]
        startup = firsts[r.pass_index] == r.index  # workers starting, the first loads
        bars[(loop, STARTUP if startup else WAIT)].append((r.ask - t0, r.wait))
        if r.step_end is not None:
            bars[(loop, STEP)].append((r.got - t0, r.step_end - r.got))
            end = max(end, r.step_end - t0)
        if r.copy_start is not None and r.copy_end is not None:
            bars[(row_of["device copy"], COPY)].append(
                (r.copy_start - t0, r.copy_end - r.copy_start)
            )
        if r.worker is not None and r.load_start is not None and r.load_end is not None:
            name = "loading (main)" if r.worker == MAIN_PROCESS else f"worker {r.worker}"
            bars[(row_of[name], LOAD)].append((r.load_start - t0, r.load_end - r.load_start))
        end = max(end, r.got - t0)
    visible = end / 600  # about a pixel: a 10 us copy still shows as a tick
    for (row, color), spans in bars.items():
        if color in (LOAD, COPY):
            spans = [(start, max(width, visible)) for start, width in spans]
        timeline.broken_barh(
            spans, (row - 0.38, 0.76), facecolors=color, edgecolors="white", linewidth=0.3
        )
    # Batch numbers on the loads wide enough to hold them: which batch came from where.
    for r in records:
        if r.worker is None or r.load_start is None or r.load_end is None:
            continue
        if end > 0 and (r.load_end - r.load_start) / end > 0.025:
            name = "loading (main)" if r.worker == MAIN_PROCESS else f"worker {r.worker}"
            middle = (r.load_start + r.load_end) / 2 - t0
            timeline.text(
                middle,
                row_of[name],
                str(r.index),
                ha="center",
                va="center",
                fontsize=7,
                color="white",
            )
    timeline.set_yticks(range(len(rows)), rows)
    for label, name in zip(timeline.get_yticklabels(), rows, strict=True):
        if name.startswith("worker ") and int(name.split()[1]) in slow:
            label.set_color(WAIT)
            label.set_fontweight("bold")
    timeline.set_ylim(len(rows) - 0.4, -0.6)
    timeline.grid(axis="x", alpha=0.3)
    legend = [
        Patch(color=LOAD, label="load (in the worker)"),
        Patch(color=WAIT, label="loop waits"),
        Patch(color=STARTUP, label="start-up (first batch)"),
        Patch(color=STEP, label="step"),
    ]
    if trace.source.has_copy:
        legend.insert(1, Patch(color=COPY, label="device copy"))
    timeline.legend(
        handles=legend, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False
    )
    timeline.set_title("\n".join(textwrap.wrap(summary.verdict, 120)), fontsize=10, loc="left")
    if has_memory:
        _plot_memory(axes[1][0], trace, t0)
    axes[-1][0].set_xlabel("seconds since the trace began")
    waited = f"loop waited {100 * summary.wait_fraction:.0f}% of the time"
    figure.suptitle(
        f"{summary.source}: {summary.batches} batches, {waited}", fontsize=11, x=0.01, ha="left"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_memory(axes: Any, trace: Trace, t0: float) -> None:
    per: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for sample in trace.memory:
        per[sample.process].append((sample.t - t0, sample.rss / 2**20))
    for process in sorted(per, key=lambda p: (p != "main", len(p), p)):
        points = sorted(per[process])
        style = {"color": "black", "linewidth": 1.6} if process == "main" else {"linewidth": 1.0}
        axes.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            marker=".",
            markersize=3,
            label=process,
            **style,
        )
    axes.set_ylabel("RSS (MiB)")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)


def plot_sweep(
    setting: str,
    values: Sequence[Any],
    summaries: Sequence[TraceSummary],
    path: str | os.PathLike[str],
) -> None:
    """Samples/s (and the loop's waiting) against the swept setting."""
    plt = require_matplotlib()
    figure, rate_axes = plt.subplots(figsize=(8, 4.5))
    rates = [s.samples_per_s or 0.0 for s in summaries]
    waits = [100 * s.wait_fraction for s in summaries]
    positions = list(range(len(values)))
    rate_axes.plot(positions, rates, marker="o", color=LOAD, label="samples/s")
    for x, y in zip(positions, rates, strict=True):
        rate_axes.annotate(
            f"{y:,.0f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8
        )
    rate_axes.set_xticks(positions, [str(v) for v in values])
    rate_axes.set_xlabel(setting)
    rate_axes.set_ylabel("samples/s", color=LOAD)
    rate_axes.set_ylim(0, max([*rates, 1.0]) * 1.3)
    rate_axes.grid(alpha=0.3)
    wait_axes = rate_axes.twinx()
    wait_axes.plot(
        positions, waits, marker="s", linestyle="--", color=WAIT, label="loop waiting (%)"
    )
    wait_axes.set_ylabel("loop waiting (% of the time)", color=WAIT)
    wait_axes.set_ylim(0, 105)
    lines = rate_axes.get_lines()[:1] + wait_axes.get_lines()
    rate_axes.legend(lines, [line.get_label() for line in lines], loc="best", fontsize=8)
    rate_axes.set_title(f"What if: samples/s against {setting}", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
