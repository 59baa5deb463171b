"""max_rss="auto" under a real memory cgroup: a read run fits the cgroup's limit.

The run happens in a child process moved into a new memory cgroup (a child of this
process's own, v2 where the machine offers the memory controller there, else v1).
The control is a SLURM-like watchdog: the RSS of the job's processes summed every
50 ms, as SLURM's RSS accounting adds them up. Needs root (or a delegated cgroup);
skipped with the reason where a cgroup cannot be made.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from shardio import ShardWriter
from shardio.memory import JobUsage, read_pss

VALUE = 64 * 1024
MiB = 2**20
GiB = 2**30
JOB = str(Path(__file__).parents[1] / "cgroup_job.py")

pytestmark = pytest.mark.skipif(
    read_pss() is None, reason="needs /proc/PID/smaps_rollup to watch the job"
)


# ---------------------------------------------------------------------- cgroups
@dataclass
class MemoryCgroup:
    directory: Path
    version: int

    @property
    def procs(self) -> Path:
        return self.directory / "cgroup.procs"


def _mounts() -> dict[str, tuple[str, str, str]]:
    """fstype -> (mount root, mount point, super options) of the cgroup mounts."""
    found: dict[str, tuple[str, str, str]] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if tail and tail[0] == "cgroup2":
            found.setdefault("cgroup2", (fields[3], fields[4], tail[2]))
        elif tail and tail[0] == "cgroup" and "memory" in tail[2].split(","):
            found.setdefault("cgroup", (fields[3], fields[4], tail[2]))
    return found


def _own_dir(version: int, mount: tuple[str, str, str]) -> Path | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (version == 2 and controllers == "") or (
            version == 1 and "memory" in controllers.split(",")
        ):
            relative = os.path.relpath(path, mount[0])
            return None if relative.startswith("..") else Path(mount[1], relative)
    return None


def _try_v2(limit: int, name: str) -> MemoryCgroup | str:
    mount = _mounts().get("cgroup2")
    if mount is None:
        return "no cgroup v2 hierarchy is mounted"
    own = _own_dir(2, mount)
    if own is None:
        return f"this process's cgroup v2 lies outside the mount at {mount[1]}"
    try:
        controllers = (own / "cgroup.controllers").read_text().split()
    except OSError as exc:
        return f"cannot read the controllers of cgroup v2 {own}: {exc}"
    if "memory" not in controllers:
        return (
            f"cgroup v2 at {own} offers the controllers {' '.join(controllers) or '(none)'}, "
            "not memory (the memory controller is bound to a v1 hierarchy)"
        )
    try:
        if "memory" not in (own / "cgroup.subtree_control").read_text().split():
            (own / "cgroup.subtree_control").write_text("+memory")
    except OSError as exc:
        return f"cannot enable the memory controller for children of {own}: {exc}"
    child = own / name
    try:
        child.mkdir()
        (child / "memory.max").write_text(str(limit))
        if (child / "memory.swap.max").exists():
            (child / "memory.swap.max").write_text("0")
    except OSError as exc:
        return f"cannot make a cgroup v2 child at {child}: {exc}"
    return MemoryCgroup(child, 2)


def _try_v1(limit: int, name: str) -> MemoryCgroup | str:
    mount = _mounts().get("cgroup")
    if mount is None:
        return "no cgroup v1 memory hierarchy is mounted"
    own = _own_dir(1, mount)
    if own is None:
        return f"this process's memory cgroup lies outside the mount at {mount[1]}"
    child = own / name
    try:
        child.mkdir()
        (child / "memory.limit_in_bytes").write_text(str(limit))
    except OSError as exc:
        return f"cannot make a cgroup v1 memory child at {child}: {exc}"
    return MemoryCgroup(child, 1)


@pytest.fixture
def make_memory_cgroup(request) -> Iterator[Callable[[int], MemoryCgroup]]:
    """Makes a new memory cgroup limited to the bytes given (skips where it cannot)."""
    made: list[MemoryCgroup] = []

    def make(limit: int) -> MemoryCgroup:
        name = f"shardio-test-{os.getpid()}-{len(made)}"
        reasons = []
        for attempt in (_try_v2, _try_v1):
            cgroup = attempt(limit, name)
            if isinstance(cgroup, MemoryCgroup):
                made.append(cgroup)
                return cgroup
            reasons.append(cgroup)
        pytest.skip("cannot create a memory cgroup: " + "; ".join(reasons))

    yield make
    for cgroup in made:
        for _ in range(50):  # empty once the job's processes are reaped
            try:
                cgroup.directory.rmdir()
                break
            except OSError:
                time.sleep(0.1)


# ------------------------------------------------------------------- the runs
@dataclass
class Run:
    returncode: int
    stderr: str
    result: dict
    peak_rss: int  # the watchdog's: RSS summed over the job's processes
    peak_pss: int


def write_dataset(path: str, size: int) -> int:
    """Samples whose every byte is ``index % 251``; returns the sample count."""
    count = size // VALUE
    if not os.path.exists(os.path.join(path, "manifest.json")):
        with ShardWriter(path, format="lmdb", shard_size="1GB") as writer:
            for start in range(0, count, 512):
                index = np.arange(start, min(count, start + 512))
                column = (index % 251).astype(np.uint8)[:, None]
                writer.write_batch({"x": np.repeat(column, VALUE, axis=1)})
    return count


def expected_sum(count: int, epochs: int) -> int:
    return epochs * int((np.arange(count) % 251).sum())


def run_job(path: str, max_rss: str, epochs: int, workers: int, cgroup: MemoryCgroup | None) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))

    def enter_cgroup() -> None:
        if cgroup is not None:
            cgroup.procs.write_text(str(os.getpid()))

    process = subprocess.Popen(
        [sys.executable, JOB, path, max_rss, str(epochs), str(workers), "64"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=enter_cgroup,
    )
    peaks = {"rss": 0, "pss": 0}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            usage = JobUsage.sample(process.pid)
            peaks["rss"] = max(peaks["rss"], usage.rss)
            peaks["pss"] = max(peaks["pss"], usage.pss or 0)
            time.sleep(0.05)

    watchdog = threading.Thread(target=watch, daemon=True)
    watchdog.start()
    stdout, stderr = process.communicate(timeout=1800)
    done.set()
    watchdog.join()
    lines = stdout.strip().splitlines()
    result = json.loads(lines[-1]) if process.returncode == 0 and lines else {}
    return Run(process.returncode, stderr, result, peaks["rss"], peaks["pss"])


def check_budgeted_run(run: Run, count: int, epochs: int, limit: int, version: int) -> None:
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.result["count"] == epochs * count
    assert run.result["sum"] == expected_sum(count, epochs)
    processes = run.result["processes"]
    assert len(processes) == 2
    for stats in processes:
        assert stats["job_limit"] == limit
        assert stats["job_limit_source"].startswith(f"cgroup v{version} ")
        assert stats["workers"] == 2
        assert stats["peak_growth"] <= stats["budget"] + 64 * MiB
    # The watchdog would have let it run: the whole job's RSS stayed under the limit.
    assert run.peak_rss < limit, run.peak_rss / MiB


def the_same_run_without_a_budget_exceeds(
    path: str, count: int, epochs: int, limit: int, cgroup: MemoryCgroup
) -> Run:
    control = run_job(path, "none", epochs, 2, cgroup)
    assert control.returncode == 0, control.stderr[-3000:]
    assert control.result["sum"] == expected_sum(count, epochs)
    # A SLURM-like RSS watchdog would have killed it.
    assert control.peak_rss > limit, control.peak_rss / MiB
    return control


@pytest.mark.slow
def test_4gb_over_two_epochs_by_two_workers_fits_a_1_5gb_cgroup(
    make_memory_cgroup, tmp_path_factory
) -> None:
    limit = 1536 * MiB
    memory_cgroup = make_memory_cgroup(limit)
    path = str(tmp_path_factory.mktemp("cgroup4g") / "d.shardio")
    count = write_dataset(path, 4 * 10**9)
    run = run_job(path, "auto", 2, 2, memory_cgroup)
    check_budgeted_run(run, count, 2, limit, memory_cgroup.version)
    control = the_same_run_without_a_budget_exceeds(path, count, 2, limit, memory_cgroup)
    print(
        f"cgroup v{memory_cgroup.version} {limit / MiB:.0f} MiB: auto peak RSS sum "
        f"{run.peak_rss / MiB:.0f} MiB (PSS {run.peak_pss / MiB:.0f}); no budget "
        f"{control.peak_rss / MiB:.0f} MiB (PSS {control.peak_pss / MiB:.0f})"
    )


def test_workers_in_a_real_cgroup_split_its_limit(make_memory_cgroup, tmp_path) -> None:
    """The default-suite variant: the limit is found through the kernel's own
    /proc/self/cgroup, mountinfo and limit file, and split between two workers. (A
    scaled-down copy of the 4 GB run would not be much cheaper: three torch
    processes and the margin need about 1.1 GiB, so the data must exceed that.)"""
    limit = 1536 * MiB
    cgroup = make_memory_cgroup(limit)
    path = str(tmp_path / "d.shardio")
    count = write_dataset(path, 32 * MiB)
    run = run_job(path, "auto", 1, 2, cgroup)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.result["sum"] == expected_sum(count, 1)
    processes = run.result["processes"]
    assert len(processes) == 2
    in_use = {stats["job_in_use"] for stats in processes}
    assert len(in_use) == 1
    slot = (limit - in_use.pop() - 256 * MiB) // 3
    for stats in processes:
        assert stats["job_limit"] == limit
        limit_file = "memory.max" if cgroup.version == 2 else "memory.limit_in_bytes"
        assert stats["job_limit_source"] == (
            f"cgroup v{cgroup.version} {limit_file} at {cgroup.directory / limit_file}"
        )
        assert stats["budget"] == slot - stats["baseline_rss"]
        assert stats["job_processes"] == 3
    assert run.peak_rss < limit
