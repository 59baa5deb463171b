"""From a trace's records to figures and a verdict: what bounds the loop, and what would
change it, in words with the arithmetic."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from shardio.core.config import format_size
from shardio.core.cpus import usable_cores

from .records import MAIN_PROCESS, BatchRecord, MemorySample

if TYPE_CHECKING:
    from .tracer import Trace

__all__ = [
    "Finding",
    "TraceSummary",
    "WorkerSummary",
    "format_report",
    "recommend",
    "summarize",
    "usable_cores",
]

DATA_BOUND_WAIT = 0.15
"""The loop is data-bound when it waits at least this fraction of its time."""
SLOW_WORKER_RATIO = 1.5
"""A worker is slow when its median load is this many times the other workers' median."""
MEMORY_GROWTH_BYTES = 32 * 2**20
"""A process's RSS grows when it rises by this many bytes, and keeps rising: the median of
each third of its samples above the one before (a one-off allocation at the start is a
step, not growth)."""
_MIB = 2**20


@dataclass
class WorkerSummary:
    """One worker's loads, and how long the loop waited on its batches."""

    worker: int
    batches: int
    load_median: float
    load_max: float
    loop_wait: float


@dataclass
class MemorySummary:
    """One process's RSS from its first sample to its last (and a dataset's budget figures)."""

    process: str
    samples: int
    first: int
    last: int
    peak: int
    seconds: float
    rising: bool = False  # each third of the samples higher than the one before
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def growth(self) -> int:
        return self.last - self.first


@dataclass
class Finding:
    """One thing the trace shows: ``kind`` is data-bound, compute-bound, slow-worker,
    memory-growth, slow-copy or slowest-rank."""

    kind: str
    text: str


@dataclass
class TraceSummary:
    """The trace in figures. Times are seconds; the first batch of each pass is start-up
    (workers starting, the first loads), kept out of the steady-state figures."""

    source: str
    num_workers: int | None
    batches: int
    passes: int
    startup: float
    loop_seconds: float
    wait_seconds: float
    wait_fraction: float
    ready_fraction: float | None  # batches ready when the loop asked (BatchRecord.ready)
    prompt_fraction: float | None  # batches the loop had within 1 ms of asking
    batches_per_s: float | None
    samples_per_s: float | None
    load_median: float | None
    step_median: float | None
    copy_median: float | None
    handover_median: float | None  # the loop's wait for a batch loaded before it asked
    stall_period: int | None
    cpu_fraction: float | None  # median share of a load on or waiting for a CPU (1: CPU-bound)
    workers_to_keep_up: int | None  # workers that would supply a batch per step
    load_to_keep_up: float | None  # the load per batch at which these workers keep up
    workers: list[WorkerSummary]
    memory: list[MemorySummary]
    findings: list[Finding]
    rank: int | None = None
    ranks: list[dict[str, Any]] | None = None

    @property
    def verdict(self) -> str:
        return self.findings[0].text if self.findings else "no batches traced"

    @property
    def bound(self) -> str | None:
        """``"data-bound"`` or ``"compute-bound"`` (None before any batch)."""
        for finding in self.findings:
            if finding.kind in ("data-bound", "compute-bound"):
                return finding.kind
        return None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["verdict"], out["bound"] = self.verdict, self.bound
        return out


def summarize(trace: Trace) -> TraceSummary:
    records = trace.records
    passes = _by_pass(records)
    steady = [r for run in passes for r in run[1:]]
    startup = sum(run[0].wait for run in passes)
    loop_seconds = sum(_span(run) for run in passes)
    wait_seconds = sum(r.wait for r in steady)
    spans = [(len(run) - 1, run[-1].got - run[0].got) for run in passes if len(run) > 1]
    between = sum(s for _, s in spans)
    batches_per_s = sum(n for n, _ in spans) / between if between > 0 else None
    samples = [r.samples for r in steady if r.samples is not None]
    samples_per_s = None
    if batches_per_s is not None and samples and len(samples) == len(steady):
        samples_per_s = batches_per_s * statistics.fmean(samples)
    known = [r for r in steady if r.load_end is not None]
    summary = TraceSummary(
        source=trace.source.description,
        num_workers=trace.source.num_workers,
        batches=len(records),
        passes=len(passes),
        startup=startup,
        loop_seconds=loop_seconds,
        wait_seconds=wait_seconds,
        wait_fraction=wait_seconds / loop_seconds if loop_seconds > 0 else 0.0,
        ready_fraction=sum(r.ready for r in steady) / len(steady) if steady else None,
        prompt_fraction=sum(r.prompt for r in steady) / len(steady) if steady else None,
        batches_per_s=batches_per_s,
        samples_per_s=samples_per_s,
        load_median=_median(r.load for r in records),
        step_median=_median(r.step for r in records),
        copy_median=_median(r.copy for r in records),
        handover_median=_median(
            r.wait for r in known if r.load_end is not None and r.load_end <= r.ask
        ),
        stall_period=stall_period(records),
        cpu_fraction=_median(
            r.load_cpu / r.load for r in records if r.load_cpu is not None and r.load
        ),
        workers_to_keep_up=None,
        load_to_keep_up=None,
        workers=_workers(records),
        memory=_memory(trace.memory),
        findings=[],
        rank=trace.rank,
        ranks=trace.ranks,
    )
    load, step, workers = pacing_load(summary), summary.step_median, summary.num_workers
    if load is not None and step and workers is not None:
        summary.workers_to_keep_up = max(1, math.ceil(load / step - 0.1))
        summary.load_to_keep_up = workers * step if workers else None
    summary.findings = _findings(summary)
    return summary


# ---------------------------------------------------------------------- figures
def _by_pass(records: Sequence[BatchRecord]) -> list[list[BatchRecord]]:
    runs: dict[int, list[BatchRecord]] = defaultdict(list)
    for record in records:
        runs[record.pass_index].append(record)
    return [runs[k] for k in sorted(runs)]


def _span(run: list[BatchRecord]) -> float:
    """The pass's steady time: from the first batch in hand to the last step's end."""
    last = run[-1]
    end = last.step_end if last.step_end is not None else last.got
    return end - run[0].got


def _median(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def stall_period(records: Sequence[BatchRecord]) -> int | None:
    """Batches between the loop's long waits, when they repeat at a regular interval.

    With n workers each taking longer than n steps, every worker's batch comes late once
    per round, so the loop's waits repeat every n batches. The period is the smallest lag
    at which the series of waits correlates with itself nearly as well as at the best lag
    (a correlation of at least 0.4); None when the waits show no such rhythm. A loop that
    waits long for most batches has a period of 1.
    """
    import numpy as np

    waits = np.array([r.wait for run in _by_pass(records) for r in run[1:]])
    if len(waits) < 6 or waits.max() < 0.001:
        return None
    if np.mean(waits > waits.max() / 3) > 0.5:
        return 1
    scores: dict[int, float] = {}
    for lag in range(2, min(64, len(waits) // 2) + 1):
        head, tail = waits[:-lag], waits[lag:]
        if head.std() > 0 and tail.std() > 0:
            scores[lag] = float(np.corrcoef(head, tail)[0, 1])
    if not scores or max(scores.values()) < 0.4:
        return None
    best = max(scores.values())
    return min(lag for lag, score in scores.items() if score >= 0.8 * best)


def _workers(records: Sequence[BatchRecord]) -> list[WorkerSummary]:
    firsts = {run[0].index for run in _by_pass(records)}  # start-up, not the worker's doing
    per: dict[int, list[BatchRecord]] = defaultdict(list)
    for record in records:
        if record.worker is not None and record.worker != MAIN_PROCESS:
            per[record.worker].append(record)
    out = []
    for worker in sorted(per):
        loads = [r.load for r in per[worker] if r.load is not None]
        out.append(
            WorkerSummary(
                worker=worker,
                batches=len(per[worker]),
                load_median=statistics.median(loads) if loads else 0.0,
                load_max=max(loads) if loads else 0.0,
                loop_wait=sum(r.wait for r in per[worker] if r.index not in firsts),
            )
        )
    return out


def _memory(samples: Sequence[MemorySample]) -> list[MemorySummary]:
    per: dict[str, list[MemorySample]] = defaultdict(list)
    for sample in samples:
        per[sample.process].append(sample)
    out = []
    for process in sorted(per, key=lambda p: (p != "main", len(p), p)):
        series = sorted(per[process], key=lambda s: s.t)
        third = len(series) // 3
        thirds = [series[:third], series[third:-third], series[-third:]] if third else []
        levels = [statistics.median(s.rss for s in part) for part in thirds]
        out.append(
            MemorySummary(
                process=process,
                samples=len(series),
                first=series[0].rss,
                last=series[-1].rss,
                peak=max(s.rss for s in series),
                seconds=series[-1].t - series[0].t,
                rising=bool(levels) and levels[0] < levels[1] < levels[2],
                stats=series[-1].stats,
            )
        )
    return out


# ---------------------------------------------------------------------- verdicts
def _findings(s: TraceSummary) -> list[Finding]:
    if s.batches == 0:
        return []
    bound = _bound(s)
    findings = [bound]
    slow = _slow_worker(s)
    # Behind a slow step a slow worker costs little unless it is far behind the others.
    if slow is not None and (bound.kind == "data-bound" or slow[1] >= 2 * SLOW_WORKER_RATIO):
        # A slow worker that makes the loop wait is the cause; name it first.
        findings.insert(0 if bound.kind == "data-bound" else 1, slow[0])
    if s.copy_median is not None and s.step_median and s.copy_median > s.step_median:
        findings.append(
            Finding(
                "slow-copy",
                f"the device copy takes {secs(s.copy_median)} per batch, longer than a "
                f"{secs(s.step_median)} step: DataLoader(pin_memory=True) (pinned memory) "
                f"or smaller batches on the host (batch_size=, a narrower dtype) would "
                f"shorten it",
            )
        )
    findings.extend(_memory_growth(s))
    if s.ranks:
        findings.append(_slowest_rank(s.ranks))
    return findings


def _bound(s: TraceSummary) -> Finding:
    waited = f"the loop waited {pct(s.wait_fraction)} of the time"
    load, step, workers = pacing_load(s), s.step_median, s.num_workers
    if s.wait_fraction < DATA_BOUND_WAIT:
        text = f"compute-bound: {waited}"
        if load is not None and step:
            text += f"; {_supply(workers, load)} against {rate(1 / step)} steps/s"
        keep = f"num_workers={workers}" if workers is not None else "num_workers"
        return Finding(
            "compute-bound",
            text + f"; a faster step, not more workers, would help (keep {keep}; "
            "loading needs no change)",
        )
    text = f"data-bound: {waited}"
    if load is None or not step:  # no per-worker detail, or no step time to compare
        if s.batches_per_s and step:
            text += (
                f": batches arrive at {rate(s.batches_per_s)}/s against "
                f"{rate(1 / step)} steps/s ({secs(step)} per step)"
            )
        return Finding(
            "data-bound",
            text + f"; raise DataLoader(num_workers=...) (--workers), up to {usable_cores()} "
            "(the cores this process may use)",
        )
    needed = max((workers or 0) + 1, s.workers_to_keep_up or 1)
    cores = usable_cores()
    if needed > cores and (s.cpu_fraction or 0.0) >= CPU_BOUND:
        # Workers beyond the cores load no faster: each one's load only stretches.
        return Finding(
            "data-bound",
            text + f"; {_supply(workers, load)} against {rate(1 / step)} steps/s; about "
            f"{needed} workers would keep up, but this process may use {cores} cores and "
            f"workers beyond them load no faster: use num_workers={cores} (or "
            f"Loader(threads='auto')); past that the read itself is the limit (a backend "
            f"without compression, or fewer fields, reads faster)",
        )
    if workers == 0:
        text += (
            f"; batches load in the training loop's process (num_workers=0), "
            f"{secs(load)} each against a {secs(step)} step; about {needed} workers "
            f"would keep up: use num_workers={min(needed, cores)} (--workers "
            f"{min(needed, cores)})"
        )
    elif workers and not _lost_in_transit(s, workers / load, 1 / step):
        text += (
            f"; {_supply(workers, load)} against {rate(1 / step)} steps/s; about {needed} "
            f"workers, or loads under {secs(s.load_to_keep_up or 0)}, would keep up: use "
            f"num_workers={min(needed, cores)} (--workers {min(needed, cores)})"
        )
        if needed > cores:
            text += ", then fewer fields (fields=, --fields) or a backend without compression"
    else:
        supply = (workers or 1) / load
        if workers and workers > cores and (s.cpu_fraction or 0.0) >= CPU_BOUND:
            return Finding(
                "data-bound",
                text + f": {workers} workers share {cores} cores with the training loop, "
                f"so each batch waits for a core on its way; use num_workers={cores}",
            )
        text += f", but not on loading: {_supply(workers, load)}"
        if supply >= 1 / step:
            text += f" would keep up with {rate(1 / step)} steps/s"
        elif s.batches_per_s is not None:
            text += f" while batches reached the loop at {rate(s.batches_per_s)}/s"
        if s.handover_median is not None:
            text += (
                f"; even a batch loaded before the loop asked took {secs(s.handover_median)} "
                f"to reach it (passing through the workers' queue, a busy main process, or "
                f"too few cores for the workers and the loop)"
            )
        text += "; " + _transit_remedy(workers, cores)
    return Finding("data-bound", text)


def _transit_remedy(workers: int | None, cores: int) -> str:
    """What shortens a batch's way from a worker to the loop."""
    if workers and workers >= cores:
        fewer = max(cores - 1, 1)
        return (
            f"leave the loop a core: num_workers={fewer} (--workers {fewer}), or "
            f"Loader(threads='auto') for batches without worker processes"
        )
    return (
        "hand batches over in the loop's process: Loader(threads='auto') instead of "
        "DataLoader workers, or DataLoader(pin_memory=False) if a pin-memory thread "
        "competes for the loop's core"
    )


CPU_BOUND = 0.5
"""A load whose thread runs or waits for a CPU at least this share of its time is
CPU-bound: more workers than cores cannot make such loads faster (loads that wait on
I/O or sleep can)."""


def recommend(values: Sequence[int], summaries: Sequence[TraceSummary]) -> int | None:
    """The value of a sweep to use: the smallest within 10% of the fastest samples/s
    (batches/s where samples are unknown), so that noise between runs of the same
    sweep does not flip the choice, and the cheaper setting wins a near tie."""
    rates = [s.samples_per_s or s.batches_per_s for s in summaries]
    known = [(v, r) for v, r in zip(values, rates, strict=True) if r]
    if not known:
        return None
    best = max(r for _, r in known)
    return min(v for v, r in known if r >= 0.9 * best)


def pacing_load(s: TraceSummary) -> float | None:
    """The load time that paces the workers: the slowest worker's median.

    Workers take batches in turn (an in-order DataLoader hands them out round-robin and
    waits for each in order), so n workers supply n batches per slowest load.
    """
    if s.workers:
        return max(w.load_median for w in s.workers)
    return s.load_median


def _lost_in_transit(s: TraceSummary, supply: float, demand: float) -> bool:
    """Whether the loop waits for batches already loaded: the workers load faster than
    the loop steps, or batches reach the loop at under half the rate they are loaded."""
    return supply >= demand or (s.batches_per_s is not None and s.batches_per_s < 0.5 * supply)


def _supply(workers: int | None, load: float) -> str:
    if not workers:
        return f"loading at {secs(load)} per batch = {rate(1 / load)} batches/s"
    return f"{workers} workers x {secs(load)} per batch = {rate(workers / load)} batches/s"


def _slow_worker(s: TraceSummary) -> tuple[Finding, float] | None:
    busy = [w for w in s.workers if w.batches >= 2]
    if len(busy) < 2:
        return None
    worst: tuple[float, WorkerSummary, float] | None = None
    for worker in busy:
        others = statistics.median(w.load_median for w in busy if w is not worker)
        if worker.load_median > SLOW_WORKER_RATIO * others and worker.load_median - others > 0.005:
            ratio = worker.load_median / others if others > 0 else math.inf
            if worst is None or ratio > worst[0]:
                worst = (ratio, worker, others)
    if worst is None:
        return None
    ratio, worker, others = worst
    text = (
        f"worker {worker.worker} is slow: {secs(worker.load_median)} per batch against "
        f"{secs(others)} on the other {len(busy) - 1} workers"
    )
    if s.wait_seconds > 0:
        share = worker.loop_wait / s.wait_seconds
        text += f"; {pct(share)} of the loop's waiting was for its batches"
    text += (
        "; DataLoader(in_order=False) lets the other workers' batches pass its own; if "
        "its shards are remote, a node cache (cache_dir=, --cache-dir) takes their "
        "fetches off the read"
    )
    return Finding("slow-worker", text), ratio


def _memory_growth(s: TraceSummary) -> list[Finding]:
    out = []
    for memory in s.memory:
        if memory.samples < 3 or memory.seconds <= 0:
            continue
        if memory.growth >= MEMORY_GROWTH_BYTES and memory.rising:
            out.append(
                Finding(
                    "memory-growth",
                    f"memory grows in the {memory.process}: RSS {memory.first / _MIB:.0f} -> "
                    f"{memory.last / _MIB:.0f} MiB in {secs(memory.seconds)} "
                    f"(+{memory.growth / _MIB / memory.seconds:.1f} MiB/s); cap what reading "
                    f"adds with ShardedDataset(..., max_rss='512MB') per process, or "
                    f"max_rss='auto' to split the job's limit (docs/memory.md)",
                )
            )
    return out


def _slowest_rank(ranks: list[dict[str, Any]]) -> Finding:
    slowest = max(ranks, key=lambda r: r["wait_seconds"])
    others = [r for r in ranks if r is not slowest]
    other_wait = statistics.median(r["wait_fraction"] for r in others) if others else 0.0
    return Finding(
        "slowest-rank",
        f"rank {slowest['rank']} is the slowest: its loop waited {pct(slowest['wait_fraction'])} "
        f"of the time ({secs(slowest['wait_seconds'])}) against {pct(other_wait)} on the other "
        f"{len(others)} rank(s); {slowest['verdict']}",
    )


# ---------------------------------------------------------------------- words
def secs(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.1f} s"
    if seconds >= 0.1:
        return f"{seconds:.2f} s"
    if seconds >= 0.001:
        return f"{seconds * 1000:.3g} ms"
    return f"{seconds * 1e6:.0f} us"


def rate(per_second: float) -> str:
    return f"{per_second:.0f}" if per_second >= 10 else f"{per_second:.1f}"


def pct(fraction: float) -> str:
    return f"{100 * fraction:.0f}%"


def format_report(s: TraceSummary) -> str:
    if s.batches == 0:
        return "no batches traced: iterate the trace (for batch in tr) or the loader inside `with`"
    lines = [s.findings[0].text] + [f"also: {f.text}" for f in s.findings[1:]]
    lines.append("")
    lines.append(
        f"{s.source}: {s.batches} batches in {s.passes} pass(es); the first batch of a pass "
        f"took {secs(s.startup / max(s.passes, 1))} (start-up)"
    )
    per = [
        f"{name} {secs(value)}"
        for name, value in (
            ("load (in the worker)", s.load_median),
            ("device copy", s.copy_median),
            ("step", s.step_median),
        )
        if value is not None
    ]
    if per:
        lines.append("per batch (median): " + ", ".join(per))
    line = f"loop: {secs(s.loop_seconds)}, of which waiting {secs(s.wait_seconds)}"
    line += f" ({pct(s.wait_fraction)})"
    if s.batches_per_s is not None:
        line += f"; {rate(s.batches_per_s)} batches/s"
    if s.samples_per_s is not None:
        line += f", {s.samples_per_s:,.0f} samples/s"
    lines.append(line)
    if s.ready_fraction is not None and s.prompt_fraction is not None:
        if s.load_median is None:
            lines.append(
                f"data readiness: {pct(s.prompt_fraction)} of batches reached the loop "
                f"within 1 ms of asking"
            )
        else:
            lines.append(
                f"data readiness: {pct(s.ready_fraction)} of batches were loaded before the "
                f"loop asked; {pct(s.prompt_fraction)} reached it within 1 ms"
            )
    if s.bound != "data-bound":
        pass  # a rhythm in short waits says nothing about the bottleneck
    elif s.stall_period == 1:
        lines.append("the loop waits for every batch")
    elif s.stall_period is not None:
        lines.append(f"the loop stalls every {s.stall_period} batches")
    if s.workers:
        lines.append("")
        lines.append("worker  batches  load median  load max  loop waited on it")
        for w in s.workers:
            lines.append(
                f"{w.worker:>6}  {w.batches:>7}  {secs(w.load_median):>11}  "
                f"{secs(w.load_max):>8}  {secs(w.loop_wait):>17}"
            )
    if s.memory:
        lines.append("")
        lines.append("process     RSS first -> last (peak) MiB" + "  budget" * _any_stats(s))
        for m in s.memory:
            line = (
                f"{m.process:<10}  {m.first / _MIB:8.0f} -> {m.last / _MIB:.0f} "
                f"({m.peak / _MIB:.0f})"
            )
            if m.stats:
                line += "  " + _budget(m.stats) + _cache(m.stats.get("cache"))
            lines.append(line)
    if s.ranks:
        lines.append("")
        lines.append("rank  batches  waiting  verdict")
        for r in s.ranks:
            lines.append(
                f"{r['rank']:>4}  {r['batches']:>7}  {pct(r['wait_fraction']):>7}  {r['bound']}"
            )
    return "\n".join(lines)


def _any_stats(s: TraceSummary) -> bool:
    return any(m.stats for m in s.memory)


def _cache(stats: Any) -> str:
    """The node shard cache's counters of a process (``memory_stats()["cache"]``)."""
    if not isinstance(stats, dict):
        return ""
    return (
        f"; cache {stats.get('hits', 0)} hits, {stats.get('downloads', 0)} downloads "
        f"({format_size(stats.get('bytes_downloaded', 0))}), waited "
        f"{stats.get('wait_s', 0):.1f} s, {stats.get('evictions', 0)} evictions"
        + (
            f", {stats['refetches']} shards downloaded again while still being read "
            "(window too large for cache_limit: see docs/cache.md)"
            if stats.get("refetches")
            else ""
        )
    )


def _budget(stats: dict[str, Any]) -> str:
    budget = stats.get("budget")
    limit = "no budget" if not budget else f"budget {format_size(budget)}"
    return (
        f"{limit}, growth {stats.get('growth', 0) / _MIB:.0f} MiB, "
        f"{stats.get('releases', 0)} releases, {stats.get('reopens', 0)} reopens"
    )
