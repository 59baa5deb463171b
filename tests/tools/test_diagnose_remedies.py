"""Every verdict of the loader doctor names what to change: an option or a flag.

Summaries are built with the figures each branch of the verdict reads (the branches
themselves are exercised on real DataLoaders in test_diagnose.py)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from shardio.tools.diagnose.analysis import (
    Finding,
    MemorySummary,
    TraceSummary,
    WorkerSummary,
    _findings,
    usable_cores,
)

#: An option as typed in Python (``num_workers=2``, ``Loader(threads='auto')``) or a flag.
_REMEDY = re.compile(r"\w+=\S|--[a-z][\w-]+")


def _summary(**figures: object) -> TraceSummary:
    base = TraceSummary(
        source="test", num_workers=2, batches=40, passes=1, startup=0.1, loop_seconds=4.0,
        wait_seconds=2.0, wait_fraction=0.5, ready_fraction=0.2, prompt_fraction=0.2,
        batches_per_s=10.0, samples_per_s=None, load_median=0.4, step_median=0.05,
        copy_median=None, handover_median=None, stall_period=None, cpu_fraction=0.1,
        workers_to_keep_up=8, load_to_keep_up=0.1, workers=[], memory=[], findings=[],
    )  # fmt: skip
    return replace(base, **figures)  # type: ignore[arg-type]


def _workers(*loads: float) -> list[WorkerSummary]:
    return [WorkerSummary(i, 10, load, load, 0.5) for i, load in enumerate(loads)]


CORES = usable_cores()
CASES = {
    "compute-bound": _summary(wait_fraction=0.01),
    "data-bound without load detail": _summary(load_median=None),
    "data-bound, no workers": _summary(num_workers=0),
    "data-bound, too few workers": _summary(workers=_workers(0.4, 0.4)),
    "data-bound past the cores": _summary(cpu_fraction=0.9, workers_to_keep_up=CORES + 4),
    "data-bound, not on loading": _summary(
        workers=_workers(0.01, 0.01), handover_median=0.2, batches_per_s=2.0
    ),
    "data-bound, not on loading, workers on every core": _summary(
        num_workers=CORES, workers=_workers(*[0.01] * CORES), batches_per_s=2.0
    ),
    "slow worker": _summary(workers=_workers(0.4, 0.05, 0.05), num_workers=3),
    "slow copy": _summary(wait_fraction=0.01, copy_median=0.2),
    "memory growth": _summary(
        wait_fraction=0.01,
        memory=[
            MemorySummary("worker 0", 10, 100 * 2**20, 400 * 2**20, 400 * 2**20, 2.0, rising=True)
        ],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_verdict_names_its_remedy(case: str) -> None:
    findings: list[Finding] = _findings(CASES[case])
    assert findings, case
    for finding in findings:
        assert _REMEDY.search(finding.text), f"{case}: {finding.kind}: {finding.text}"
    kinds = [f.kind for f in findings]
    expected = {
        "slow worker": "slow-worker",
        "slow copy": "slow-copy",
        "memory growth": "memory-growth",
        "compute-bound": "compute-bound",
    }.get(case, "data-bound")
    assert expected in kinds, (case, kinds)


def test_remedies_name_the_real_options() -> None:
    text = {case: " ".join(f.text for f in _findings(s)) for case, s in CASES.items()}
    needed = min(8, CORES)
    assert f"use num_workers={needed} (--workers {needed})" in text["data-bound, no workers"]
    assert "DataLoader(in_order=False)" in text["slow worker"]
    assert "Loader(threads='auto')" in text["data-bound, not on loading"]
    fewer = max(CORES - 1, 1)
    assert f"num_workers={fewer}" in text["data-bound, not on loading, workers on every core"]
    assert "max_rss=" in text["memory growth"]
    assert "pin_memory=True" in text["slow copy"]
