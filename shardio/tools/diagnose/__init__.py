"""The loader doctor: trace any data loader, draw its timeline, name the bottleneck.

Layer 6: uses the public API below it (dataset, prefetch, memory); only the CLI and the
lazy ``shardio.trace`` export import it.

    with trace(loader) as tr:
        for batch in tr:
            train_step(batch)
    print(tr.report())
    tr.plot("timeline.png")
    tr.save("trace.json")
"""

from __future__ import annotations

from .analysis import Finding, TraceSummary, WorkerSummary
from .records import BatchRecord, MemorySample
from .tracer import Trace, trace

__all__ = [
    "BatchRecord",
    "Finding",
    "MemorySample",
    "Trace",
    "TraceSummary",
    "WorkerSummary",
    "trace",
]
