"""A trace in Chrome trace-event format, for Perfetto (ui.perfetto.dev) or chrome://tracing.

One process per trace (the rank's), one thread row per worker, the main loop and the
device copy; complete events (``ph: X``) for loads, copies, waits and steps, counter
events (``ph: C``) for each process's RSS. Times are microseconds since the trace began.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from .records import MAIN_PROCESS

if TYPE_CHECKING:
    from .tracer import Trace

__all__ = ["chrome_events", "write_chrome_trace", "LOOP_TID", "COPY_TID", "worker_tid"]

LOOP_TID = 1
COPY_TID = 2
_MAIN_LOAD_TID = 3


def worker_tid(worker: int) -> int:
    return _MAIN_LOAD_TID if worker == MAIN_PROCESS else 10 + worker


def row_name(worker: int) -> str:
    return "loading (main process)" if worker == MAIN_PROCESS else f"worker {worker}"


def chrome_events(trace: Trace) -> dict[str, Any]:
    pid = trace.rank if trace.rank is not None else 0
    t0 = _origin(trace)

    def us(t: float) -> float:
        return round((t - t0) * 1e6, 1)

    def meta(name: str, tid: int, value: str) -> dict[str, Any]:
        return {"name": name, "ph": "M", "pid": pid, "tid": tid, "args": {"name": value}}

    def span(
        name: str, cat: str, tid: int, start: float, end: float, **args: Any
    ) -> dict[str, Any]:
        return {
            "name": name, "cat": cat, "ph": "X", "pid": pid, "tid": tid,
            "ts": us(start), "dur": round(max(end - start, 0.0) * 1e6, 1), "args": args,
        }  # fmt: skip

    rank = "" if trace.rank is None else f" rank {trace.rank}"
    events = [
        meta("process_name", LOOP_TID, f"shardio trace{rank}: {trace.source.description}"),
        meta("thread_name", LOOP_TID, "training loop"),
        {
            "name": "thread_sort_index",
            "ph": "M",
            "pid": pid,
            "tid": LOOP_TID,
            "args": {"sort_index": 0},
        },
    ]
    if trace.source.has_copy:
        events.append(meta("thread_name", COPY_TID, "device copy"))
    workers = sorted({r.worker for r in trace.records if r.worker is not None})
    events += [meta("thread_name", worker_tid(w), row_name(w)) for w in workers]
    for r in trace.records:
        where = {"batch": r.index, "pass": r.pass_index}
        if r.wait > 0:
            events.append(
                span(f"wait {r.index}", "wait", LOOP_TID, r.ask, r.got, ready=r.ready, **where)
            )
        if r.step_end is not None:
            events.append(span(f"step {r.index}", "step", LOOP_TID, r.got, r.step_end, **where))
        if r.load_start is not None and r.load_end is not None and r.worker is not None:
            events.append(
                span(f"load {r.index}", "load", worker_tid(r.worker), r.load_start, r.load_end,
                     worker=r.worker, pid=r.pid, samples=r.samples, **where)
            )  # fmt: skip
        if r.copy_start is not None and r.copy_end is not None:
            events.append(
                span(f"copy {r.index}", "copy", COPY_TID, r.copy_start, r.copy_end, **where)
            )
    for sample in trace.memory:
        events.append(
            {"name": f"RSS {sample.process} (MiB)", "cat": "memory", "ph": "C", "pid": pid,
             "tid": LOOP_TID, "ts": us(sample.t), "args": {"rss": round(sample.rss / 2**20, 2)}}
        )  # fmt: skip
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": _other(trace)}


def _origin(trace: Trace) -> float:
    times = [r.ask for r in trace.records] + [r.load_start for r in trace.records if r.load_start]
    times += [s.t for s in trace.memory]
    return min(times, default=trace.started)


def _other(trace: Trace) -> dict[str, Any]:
    summary = trace.summary()
    return {"source": summary.source, "verdict": summary.verdict, "bound": summary.bound}


def write_chrome_trace(trace: Trace, path: str | os.PathLike[str]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(chrome_events(trace), handle)
