"""In a ``torch.distributed`` run: every rank's summary, gathered on every rank."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .tracer import Trace

__all__ = ["gather_summaries", "rank_summary"]


def rank_summary(trace: Trace, rank: int) -> dict[str, Any]:
    """The few figures that compare ranks (small: it travels through the process group)."""
    summary = trace.summary()
    return {
        "rank": rank,
        "batches": summary.batches,
        "loop_seconds": summary.loop_seconds,
        "wait_seconds": summary.wait_seconds,
        "wait_fraction": summary.wait_fraction,
        "load_median": summary.load_median,
        "step_median": summary.step_median,
        "bound": summary.bound,
        "verdict": summary.verdict,
    }


def gather_summaries(trace: Trace) -> tuple[int, list[dict[str, Any]]] | None:
    """This rank and every rank's summary, or None outside a multi-rank process group.

    A collective on the default group: every rank must call it.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    rank = dist.get_rank()
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, rank_summary(trace, rank))
    return rank, sorted(gathered, key=lambda r: r["rank"])
