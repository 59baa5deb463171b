from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))  # test helper modules for spawned workers

import pytest

# One torch intra-op thread unless the user exported another count: torch's default (one
# per core) makes its spinning OpenMP threads fight each other and the other processes on
# a shared machine, and the tests' tensors are small. Set before anything imports torch;
# DataLoader workers and subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from shardio.storage.adapters import formats, unregister_backend
from shardio.tools.testing.groundtruth import SOURCES, Truth


@pytest.fixture(autouse=True)
def _registered_backends_stay_in_their_test() -> Any:
    """Backends a test (or a docs page) registers are forgotten after it, so format
    lists in later tests' messages stay the built-in ones."""
    before = set(formats())
    yield
    for name in set(formats()) - before:
        unregister_backend(name)


# Every source is read twice: without a memory budget, and with the smallest one
# (a release after every read), which must never change what is read.
_PARAMS = [(name, budget) for name in sorted(SOURCES) for budget in (None, 1)]


@pytest.fixture(params=_PARAMS, ids=[f"{n}-budget" if b else n for n, b in _PARAMS])
def truth(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Truth:
    """Each ground-truth dataset, written without shardio (see shardio/tools/testing)."""
    name, budget = request.param
    found = SOURCES[name](str(tmp_path_factory.mktemp(name)))
    if budget is not None:
        found.options["max_rss"] = budget
    return found


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., str]:
    """`write_synthetic(format, count, sample_bytes, **options)` as a fixture: each
    dataset is written once per session, in its own directory, and its path returned."""
    from shardio.tools.bench.synthetic import write_synthetic

    made: dict[tuple[Any, ...], str] = {}

    def make(format: str, count: int, sample_bytes: int, **options: Any) -> str:
        key = (format, count, sample_bytes, *sorted(options.items()))
        if key not in made:
            path = str(tmp_path_factory.mktemp(f"synthetic-{format}") / "train.shardio")
            made[key] = write_synthetic(path, format, count, sample_bytes, **options)
        return made[key]

    return make


_frozen_for: list[str] = [""]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """At the first test of each module, collect, then freeze what is left alive.

    Over a session the heap grows to millions of objects (moto and botocore, xarray,
    Lightning, transformers: imported once, alive for good), and every full collection
    walks all of them: the cyclic collector, the bench's `gc.collect()` per run and the
    tests' own took 14 of the 41 s of tests/storage/test_cache.py, test_scifiles.py and
    tests/tools/test_bench.py, test_cli_bench.py run together. Frozen objects
    are skipped by the collector (and by forked workers' collections, which would copy
    their pages). Only what is alive between modules is frozen: objects a test makes
    are collected as before, and garbage is collected before each freeze."""
    module = item.nodeid.partition("::")[0]
    if module != _frozen_for[0]:
        _frozen_for[0] = module
        gc.collect()
        gc.freeze()


# Loading tests that run their budgeted `truth` variants by default: threads sharing one
# budget. Elsewhere under tests/loading those variants run under `-m slow`.
_BUDGET_KEPT = {"test_per_sample_transform_and_budget_shared_by_threads"}
# Ground truths whose every case under tests/loading runs under `-m slow` only.
_LOADING_SLOW_SOURCES = {"zarr-shardio"}


def _slow_by_rule(item: pytest.Item) -> bool:
    """Cases of the default run's matrices that `-m slow` alone runs (see below)."""
    cls = getattr(item, "cls", None)
    if item.name == "test_spawned_worker_reads_fixed_fields" and cls is not None:
        return True
    callspec = getattr(item, "callspec", None)
    if callspec is None or "truth" not in callspec.params:
        return False
    param = callspec.params["truth"]
    if item.path.parent.name != "loading" or not isinstance(param, tuple):
        return False
    if param[0] in _LOADING_SLOW_SOURCES:
        return True
    if param[1] is None:
        return False
    name = getattr(item, "originalname", item.name)
    if name == "test_batches_equal_read_batch":
        return callspec.params["threads"] == 1
    return name not in _BUDGET_KEPT


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Matrix cases the default run leaves to `-m slow` (each still runs there).

    - The conformance harness's spawned-worker case starts a fresh interpreter (seconds
      each) for every class: the default run's one spawned DataLoader worker is in
      tests/loading/test_dataset_batches.py (sharded LMDB, against read_batch).
    - Under tests/loading, each ground truth is read without a budget by default, and
      with the smallest budget (a release after every read) where threads share it
      (Loader with 3 threads). What a budget may change is what read_batch returns: the
      harness (tests/storage/test_conformance.py) checks that for every source, in this
      process and in forked workers, with and without it.
    - Under tests/loading, shardio's own Zarr layout (`zarr-shardio`) cost as much as
      the ten other ground truths together (11 s of 30 s): the loading
      path reads Zarr through `zarr` and `zarr-variable` by default, and the harness
      reads `zarr-shardio` in every way."""
    for item in items:
        if _slow_by_rule(item):
            item.add_marker(pytest.mark.slow)
