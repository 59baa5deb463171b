"""The demo's picture: training loss (8-bit vs exact), samples/s and time waiting for data.

matplotlib comes with the ``bench`` extra; without it `draw_demo` draws nothing and
says so in one line, and the demo carries on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .train import LogRecord

__all__ = ["PlotRun", "draw_demo"]

_COLORS = {True: "tab:blue", False: "tab:orange"}


@dataclass(frozen=True)
class PlotRun:
    """What the picture needs of one training run."""

    quantize: bool
    losses: Sequence[float]  # one per step
    records: Sequence[LogRecord]  # one per progress line


def _smooth(values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, moving average over about a thirtieth of the run) of per-step values."""
    array = np.asarray(values, dtype=np.float64)
    width = max(1, len(array) // 30)
    smoothed = np.convolve(array, np.ones(width) / width, mode="valid")
    return np.arange(width, len(array) + 1), smoothed


def draw_demo(
    runs: Sequence[PlotRun],
    path: str,
    *,
    title: str,
    chance: float,
    floor: float | None,
) -> str:
    """Draw ``runs`` into the image ``path``; returns the line for the log."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return "no picture: matplotlib is not installed (pip install 'shardio[bench]')"

    fig, (loss_ax, rate_ax, wait_ax) = plt.subplots(1, 3, figsize=(14, 4), layout="constrained")
    for run in runs:
        label = "8-bit" if run.quantize else "exact"
        color = _COLORS[run.quantize]
        steps, smoothed = _smooth(run.losses)
        # exact dashed on top: where the two runs agree, both stay visible
        style = "-" if run.quantize else "--"
        loss_ax.plot(steps, smoothed, style, color=color, label=f"{label} saved activations")
        at = [r.step for r in run.records]
        rate_ax.plot(at, [r.samples_per_s for r in run.records], "o-", color=color, label=label)
        wait = [100 * r.wait_fraction for r in run.records]
        wait_ax.plot(at, wait, "o-", color=color, label=label)
    loss_ax.axhline(chance, color="gray", linestyle=":", label=f"chance {chance:.2f}")
    if floor is not None:
        loss_ax.axhline(
            floor, color="gray", linestyle="--", label=f"best possible (held out) {floor:.2f}"
        )
    loss_ax.set(title="training loss (moving average)", xlabel="step", ylabel="cross-entropy")
    rate_ax.set(title="throughput", xlabel="step", ylabel="samples/s")
    rate_ax.set_ylim(bottom=0)
    wait_ax.set(title="waiting for data", xlabel="step", ylabel="% of step time")
    wait_ax.set_ylim(0, max([5.0, *(100 * r.wait_fraction for run in runs for r in run.records)]))
    for ax in (loss_ax, rate_ax, wait_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        return f"no picture: cannot write --plot {path}: {exc.strerror or exc}"
    finally:
        plt.close(fig)
    return f"picture: {path}"
