"""The loader doctor on real DataLoaders (fork and spawn workers) with known sleeps.

Timings are sleeps on a machine shared with other jobs: a sleep never ends early, but may
end late, so intervals are checked against [sleep, sleep + a generous slack].
"""

from __future__ import annotations

import ast
import json
import multiprocessing
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diagnose_data import BusyBatches, Counting, Failing, Leaky, SleepyBatches, split_range
from torch.utils.data import DataLoader

import shardio.tools.cli
import shardio.tools.diagnose
from shardio import InvalidOptionError, Prefetcher, ShardedDataset, ShardWriter, trace
from shardio.tools.diagnose import Trace
from shardio.tools.diagnose.analysis import CPU_BOUND, recommend, usable_cores

LATE = 0.5  # seconds a sleep may overrun on a loaded machine (medians are held closer)
torch.set_num_threads(1)


def _run(tr: Trace, step: float) -> list[Any]:
    seen = []
    for batch in tr:
        seen.append(batch)
        time.sleep(step)
    return seen


@pytest.mark.filterwarnings("ignore:This DataLoader will create 7 worker processes")
def test_seven_slow_workers_stall_every_seven_batches_and_are_data_bound(tmp_path: Path) -> None:
    # The case scaled down 5x: 7 workers, 2 s -> 0.4 s per batch, 100 ms -> 20 ms steps.
    workers, load, step, rounds = 7, 0.4, 0.02, 8
    loader = DataLoader(
        SleepyBatches(workers * rounds * 2, load),
        batch_size=2,
        num_workers=workers,
        multiprocessing_context="fork",
    )
    with trace(loader) as tr:
        batches = _run(tr, step)

    assert torch.cat(batches).flatten().tolist() == list(range(workers * rounds * 2))
    records = tr.records
    assert len(records) == workers * rounds
    assert [r.worker for r in records] == [i % workers for i in range(len(records))]
    loads = np.array([r.load for r in records])
    steps = np.array([r.step for r in records])
    assert loads.min() >= load and loads.max() < load + LATE, loads
    assert np.median(loads) < load * 1.15, loads
    assert steps.min() >= step and np.median(steps) < step * 1.5, steps
    for r in records:
        assert r.load_start is not None and r.load_end is not None and r.arrive is not None
        assert r.load_end <= r.arrive <= r.got + 1e-3  # loaded, then taken off the queue
        assert r.samples == 2

    summary = tr.summary()
    waits = [round(r.wait, 3) for r in records]
    assert summary.stall_period == workers, waits
    # A round of 7 batches takes a load (0.4 s) of which 7 steps (0.14 s) are work: the
    # loop waits the rest, about 0.26 s, in every round once the workers are in step.
    assert summary.step_median is not None
    expected = load - workers * summary.step_median
    round_waits = [
        sum(r.wait for r in records[k : k + workers]) for k in range(14, workers * rounds, 7)
    ]
    assert min(round_waits) > 0.4 * expected, (round_waits, waits)
    assert summary.bound == "data-bound"
    assert summary.wait_fraction > 0.3
    assert summary.ready_fraction is not None and summary.ready_fraction < 0.95
    assert summary.workers_to_keep_up is not None and 14 <= summary.workers_to_keep_up <= 30
    assert summary.load_to_keep_up == pytest.approx(workers * step, rel=0.5)
    report = tr.report()
    assert report.startswith("data-bound: the loop waited")
    assert re.search(r"; 7 workers x 0\.[456]\d s per batch = 1\d batches/s against", report)
    assert "would keep up" in report
    assert "the loop stalls every 7 batches" in report
    assert type(loader) is DataLoader  # the with block put the loader back as it was


def test_fast_loader_with_a_slow_step_is_compute_bound() -> None:
    loader = DataLoader(SleepyBatches(30, 0.005), batch_size=2, num_workers=2)
    with trace(loader) as tr:
        _run(tr, 0.1)
    summary = tr.summary()
    assert summary.batches == 15
    assert summary.bound == "compute-bound", tr.report() + str([r.wait for r in tr.records])
    assert summary.wait_fraction < 0.15
    assert tr.report().startswith("compute-bound: the loop waited")


def test_one_slow_worker_is_named() -> None:
    loader = DataLoader(
        SleepyBatches(36, 0.02, slow_worker=1, slow=0.2),
        batch_size=2,
        num_workers=3,
        multiprocessing_context="fork",
    )
    with trace(loader) as tr:
        _run(tr, 0.01)
    findings = tr.summary().findings
    slow = [f for f in findings if f.kind == "slow-worker"]
    assert len(slow) == 1 and slow[0].text.startswith("worker 1 is slow"), findings
    assert findings[0].kind == "slow-worker"  # it makes the loop wait: named first
    by_worker = {w.worker: w for w in tr.summary().workers}
    assert by_worker[1].load_median >= 0.2 and by_worker[0].load_median < 0.2
    assert by_worker[1].loop_wait > by_worker[0].loop_wait + by_worker[2].loop_wait


def test_memory_growth_in_a_worker_is_named() -> None:
    loader = DataLoader(Leaky(48, 2 * 2**20), batch_size=2, num_workers=2)
    with trace(loader, memory_interval=0.001) as tr:
        _run(tr, 0.0)
    growth = [f for f in tr.summary().findings if f.kind == "memory-growth"]
    assert [f.text.split(":")[0] for f in growth] == ["memory grows in the worker 0"]
    worker0 = next(m for m in tr.summary().memory if m.process == "worker 0")
    assert worker0.growth >= 32 * 2**20


def test_step_marks_while_iterating_the_loader_itself() -> None:
    loader = DataLoader(SleepyBatches(12, 0.01), batch_size=2, num_workers=0)
    with trace(loader) as tr:
        for batch in loader:
            time.sleep(0.02)
            tr.step()
            time.sleep(0.01)  # outside the step: logging, say
            assert isinstance(batch, torch.Tensor)
    assert len(tr.records) == 6
    assert all(r.worker == -1 for r in tr.records)  # loaded in the loop's process
    steps = [r.step for r in tr.records]
    assert all(s is not None and 0.02 <= s < 0.02 + LATE for s in steps), steps
    assert type(loader) is DataLoader


@pytest.mark.parametrize("context", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_persistent_workers_two_passes_and_an_early_break(context: str) -> None:
    loader = DataLoader(
        SleepyBatches(16, 0.001),
        batch_size=2,
        num_workers=1,  # spawning re-imports torch: seconds per worker
        multiprocessing_context=context,
        persistent_workers=True,
    )
    with trace(loader) as tr:
        first = [b for b in tr]
        for n, _ in enumerate(tr):
            if n == 2:
                break
    assert torch.cat(first).flatten().tolist() == list(range(16))
    assert len(tr.records) == 8 + 3 and tr.passes == 2
    pids = {p: {r.pid for r in tr.records if r.pass_index == p} for p in (0, 1)}
    assert pids[0] == pids[1] and len(pids[0]) == 1  # the same persistent workers
    assert tr.records[-1].step_end is not None  # the break ended the last step
    assert tr.source.twin._iterator is None  # type: ignore[attr-defined]  # workers stopped


def test_iterable_dataset_split_by_worker_init_fn() -> None:
    loader = DataLoader(Counting(0, 40), batch_size=4, num_workers=2, worker_init_fn=split_range)
    with trace(loader) as tr:
        batches = _run(tr, 0.0)
    assert sorted(torch.cat(batches).tolist()) == list(range(40))
    assert {r.worker for r in tr.records} == {0, 1}
    assert all(r.load is not None and r.load >= 4 * 0.001 for r in tr.records)


def test_prefetcher_in_the_chain_adds_device_copy_times(tmp_path: Path) -> None:
    loader = DataLoader(SleepyBatches(20, 0.01), batch_size=2, num_workers=2)
    prefetcher = Prefetcher(loader, device="cpu", transform=lambda b: b + 1)
    with trace(prefetcher) as tr:
        values = [int(v) for batch in prefetcher for v in batch.flatten()]
    assert values == [i + 1 for i in range(20)]  # the user's transform still applies
    assert len(tr.records) == 10
    for r in tr.records:
        assert r.worker in (0, 1) and r.load is not None and r.load >= 0.01
        assert r.copy_start is not None and r.copy_end is not None
        assert r.load_end is not None and r.load_end <= r.copy_start <= r.copy_end <= r.got
    assert "device copy" in tr.report()
    assert type(prefetcher) is Prefetcher
    tr.plot(tmp_path / "chain.png")
    _check_png(tmp_path / "chain.png")


def test_any_iterable_is_traced_at_the_loop() -> None:
    def batches() -> Any:
        for i in range(8):
            time.sleep(0.03)
            yield i

    with trace(batches()) as tr:
        seen = _run(tr, 0.005)
    assert seen == list(range(8))
    assert all(r.worker is None and r.load is None for r in tr.records)
    waits = [r.wait for r in tr.records]
    assert min(waits) >= 0.03
    assert tr.summary().bound == "data-bound"


def test_sharded_dataset_workers_report_the_budget_figures(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "d", format="mmap", shard_size=4000) as writer:
        writer.write_batch({"x": np.arange(200, dtype=np.int64)})
    dataset = ShardedDataset(tmp_path / "d", max_rss="1GB")
    loader = DataLoader(dataset, batch_size=10, num_workers=2, multiprocessing_context="fork")
    with trace(loader) as tr:
        xs = [int(v) for batch in tr for v in batch["x"]]
    assert xs == list(range(200))
    workers = [m for m in tr.summary().memory if m.process.startswith("worker")]
    assert len(workers) == 2
    assert all(m.stats["budget"] == 10**9 and m.stats["bytes_read"] > 0 for m in workers)
    assert "budget 953.7 MiB" in tr.report()


def test_chrome_trace_is_trace_event_json(tmp_path: Path) -> None:
    loader = DataLoader(SleepyBatches(12, 0.01), batch_size=2, num_workers=2)
    with trace(loader) as tr:
        _run(tr, 0.005)
    tr.save(tmp_path / "trace.json")
    document = json.loads((tmp_path / "trace.json").read_text())
    events = document["traceEvents"]
    assert document["displayTimeUnit"] in ("ms", "ns")
    phases = {"X", "M", "C"}
    for event in events:
        assert event["ph"] in phases, event
        assert isinstance(event["name"], str) and event["name"]
        assert isinstance(event["pid"], int) and isinstance(event["tid"], int)
        if event["ph"] == "M":
            assert event["name"] in ("process_name", "thread_name", "thread_sort_index")
            assert isinstance(event["args"], dict) and event["args"]
            continue
        assert isinstance(event["ts"], (int, float)) and event["ts"] >= 0
        if event["ph"] == "X":
            assert isinstance(event["dur"], (int, float)) and event["dur"] >= 0
            assert isinstance(event["cat"], str)
        else:
            values = list(event["args"].values())
            assert values and all(isinstance(v, (int, float)) for v in values)
    threads = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert threads == {"training loop", "worker 0", "worker 1"}
    loads = [e for e in events if e["ph"] == "X" and e["cat"] == "load"]
    assert len(loads) == 6
    for event, record in zip(loads, tr.records, strict=True):
        assert event["dur"] == pytest.approx(record.load * 1e6, abs=1)  # type: ignore[operator]
    assert sum(e["ph"] == "X" and e["cat"] == "step" for e in events) == 6


def _check_png(path: Path) -> None:
    import matplotlib.image

    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert width >= 800 and height >= 400
    assert image[..., :3].std() > 0.05  # bars, text and lines, not a blank canvas


def test_timeline_png_opens_and_has_content(tmp_path: Path) -> None:
    loader = DataLoader(
        SleepyBatches(24, 0.05, slow_worker=2, slow=0.15),
        batch_size=2,
        num_workers=3,
        multiprocessing_context="fork",
    )
    with trace(loader) as tr:
        _run(tr, 0.01)
    tr.plot(tmp_path / "timeline.png")
    _check_png(tmp_path / "timeline.png")


def test_bad_arguments_name_the_option() -> None:
    with pytest.raises(InvalidOptionError, match="loader should be an iterable"):
        trace(5)  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="memory_interval"):
        trace([1], memory_interval=0)


def test_report_before_any_batch() -> None:
    tr = trace([])
    assert tr.report().startswith("no batches traced")


def test_an_early_break_stops_the_workers_at_once() -> None:
    loader = DataLoader(SleepyBatches(40, 0.001), batch_size=2, num_workers=2)
    before = set(multiprocessing.active_children())
    with trace(loader) as tr:
        for n, _ in enumerate(loader):
            if n == 3:
                break
        assert set(multiprocessing.active_children()) - before == set()  # joined
        assert len(tr.records) == 4
        assert tr.records[-1].step_end is not None
        assert len(list(loader)) == 20  # a second pass after the break reads everything
    assert len(tr.records) == 24 and tr.passes == 2


def test_a_worker_error_reaches_the_loop_as_torch_raises_it() -> None:
    loader = DataLoader(Failing(20, bad=13), batch_size=2, num_workers=2)
    with pytest.raises(ValueError, match="sample 13 is damaged"), trace(loader) as tr:
        for _ in tr:
            pass
    assert len(tr.records) == 6  # batches 0-5; batch 6 holds sample 13
    assert type(loader) is DataLoader


def test_layering_nothing_below_the_cli_imports_diagnose() -> None:
    package = Path(shardio.__file__).parent
    allowed = [Path(m.__file__).parent for m in (shardio.tools.diagnose, shardio.tools.cli)]
    for module in package.rglob("*.py"):
        relative = module.relative_to(package).as_posix()
        if relative == "__init__.py" or any(module.is_relative_to(a) for a in allowed):
            continue
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "diagnose" not in (node.module or ""), f"{relative} imports diagnose"
            elif isinstance(node, ast.Import):
                assert not any("diagnose" in a.name for a in node.names), relative


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_prefetcher_chain_with_pinned_memory_records_the_copy(tmp_path: Path) -> None:
    loader = DataLoader(SleepyBatches(64, 0.002), batch_size=8, num_workers=2, pin_memory=True)
    prefetcher = Prefetcher(loader, device="cuda")
    with trace(prefetcher) as tr:
        values = [int(v) for batch in prefetcher for v in batch.flatten().cpu()]
    assert values == list(range(64))
    for r in tr.records:
        assert r.worker in (0, 1) and r.copy is not None and r.copy >= 0
    tr.plot(tmp_path / "cuda.png")
    _check_png(tmp_path / "cuda.png")


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_cpu_bound_loads_are_never_told_to_add_workers_beyond_the_cores() -> None:
    cores = usable_cores()
    loader = DataLoader(BusyBatches(24, 0.03), batch_size=2, num_workers=cores + 1)
    with trace(loader) as tr:
        _run(tr, 0.001)
    summary = tr.summary()
    assert summary.cpu_fraction is not None and summary.cpu_fraction >= CPU_BOUND
    assert summary.bound == "data-bound"
    report = tr.report()
    assert f"num_workers={cores}" in report, report
    assert "would keep up" not in report or "load no faster" in report, report


def test_a_sweep_recommends_the_fewest_near_the_fastest() -> None:
    @dataclass
    class Rates:
        samples_per_s: float | None
        batches_per_s: float | None = None

    runs: list[Any] = [Rates(100.0), Rates(195.0), Rates(200.0), Rates(120.0)]
    assert recommend([0, 1, 2, 8], runs) == 1
    unknown: list[Any] = [Rates(None), Rates(None)]
    assert recommend([0, 1], unknown) is None
