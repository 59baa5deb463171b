"""The job's memory limit from SLURM's variables and from fake cgroup v2 / v1 trees."""

from __future__ import annotations

import pytest
from fake_cgroups import FakeSystem

from shardio.memory import JobLimit, find_job_limit, job_limits

GiB = 2**30
MiB = 2**20


@pytest.fixture
def system(tmp_path) -> FakeSystem:
    return FakeSystem(tmp_path)


def limit(system: FakeSystem, env: dict[str, str] | None = None) -> JobLimit | None:
    return find_job_limit(env or {}, proc=system.proc, root=system.root)


def test_nothing_set_is_no_limit(system) -> None:
    system.v2("/user.slice/session-1.scope", {"/": "", "/user.slice": "max"})
    assert limit(system) is None
    assert job_limits({}, proc=system.proc, root=system.root) == []


def test_slurm_mem_per_node_is_in_mebibytes(system) -> None:
    found = limit(system, {"SLURM_MEM_PER_NODE": "32768"})
    assert found == JobLimit(32 * GiB, "SLURM_MEM_PER_NODE=32768")


def test_slurm_mem_per_cpu_times_cpus_on_node(system) -> None:
    found = limit(system, {"SLURM_MEM_PER_CPU": "4000", "SLURM_CPUS_ON_NODE": "8"})
    assert found == JobLimit(32000 * MiB, "SLURM_MEM_PER_CPU=4000 x SLURM_CPUS_ON_NODE=8")


@pytest.mark.parametrize(
    "env",
    [
        {"SLURM_MEM_PER_NODE": "0"},  # --mem=0: all of the node's memory
        {"SLURM_MEM_PER_CPU": "4000"},  # no CPU count
        {"SLURM_MEM_PER_NODE": "lots"},
    ],
)
def test_slurm_values_that_set_no_limit(system, env) -> None:
    assert limit(system, env) is None


def test_the_lower_slurm_figure_wins(system) -> None:
    env = {"SLURM_MEM_PER_NODE": "65536", "SLURM_MEM_PER_CPU": "2048", "SLURM_CPUS_ON_NODE": "4"}
    assert limit(system, env) == JobLimit(8 * GiB, "SLURM_MEM_PER_CPU=2048 x SLURM_CPUS_ON_NODE=4")
    env["SLURM_MEM_PER_NODE"] = "8192"  # a tie: the first source is named
    assert limit(system, env).source == "SLURM_MEM_PER_NODE=8192"


def test_cgroup_v2_memory_max_of_the_process_cgroup(system) -> None:
    system.v2("/job/step", {"/": "", "/job": "max", "/job/step": str(3 * GiB)})
    found = limit(system)
    assert found.nbytes == 3 * GiB
    assert found.source.startswith("cgroup v2 memory.max at ")
    assert found.source.endswith("sys/fs/cgroup/job/step/memory.max")


def test_cgroup_v2_parent_limit_binds_the_child(system) -> None:
    system.v2("/job/step", {"/": "", "/job": str(2 * GiB), "/job/step": str(5 * GiB)})
    found = limit(system)
    assert found.nbytes == 2 * GiB and found.source.endswith("cgroup/job/memory.max")


def test_cgroup_v2_max_everywhere_is_no_limit(system) -> None:
    system.v2("/job/step", {"/": "", "/job": "max", "/job/step": "max"})
    assert limit(system) is None


def test_cgroup_v2_namespace_root_is_the_mount_root(system) -> None:
    """In a container with a cgroup namespace the mount shows the container's cgroup
    as "/", and /proc/self/cgroup names it "/"."""
    system.v2("/", {"/": str(GiB)})
    assert limit(system).nbytes == GiB


def test_cgroup_v2_bind_mounted_subtree(system) -> None:
    """Docker without a cgroup namespace: the mount root is the container's cgroup."""
    system.v2(
        "/docker/abc/app",
        {"/docker/abc": str(4 * GiB), "/docker/abc/app": "max"},
        mount_root="/docker/abc",
    )
    assert limit(system).nbytes == 4 * GiB


def test_cgroup_outside_the_mounted_subtree_is_not_read(system) -> None:
    system.v2("/elsewhere", {"/docker/abc": str(GiB)}, mount_root="/docker/abc")
    assert limit(system) is None


def test_cgroup_v1_memory_limit_in_bytes(system) -> None:
    system.v1("/slurm/uid_0/job_7", {"/": "", "/slurm/uid_0/job_7": str(6 * GiB)})
    found = limit(system)
    assert found.nbytes == 6 * GiB
    assert found.source.startswith("cgroup v1 memory.limit_in_bytes at ")


def test_cgroup_v1_unlimited_value_is_no_limit(system) -> None:
    system.v1("/a", {"/": "9223372036854771712", "/a": "9223372036854771712"})
    assert limit(system) is None


def test_cgroup_v1_memory_comounted_with_other_controllers(system) -> None:
    system.v1("/a", {"/a": str(GiB)}, controllers="memory,hugetlb")
    assert limit(system).nbytes == GiB


def test_hybrid_layout_reads_the_v1_memory_hierarchy(system) -> None:
    """systemd's hybrid mode: a unified hierarchy without the memory controller, at
    /sys/fs/cgroup/unified, and memory in v1 (as on this test machine)."""
    system.v2("/", {"/": ""}, point="/sys/fs/cgroup/unified")
    system.v1("/process/x", {"/": "", "/process/x": str(1536 * MiB)})
    assert limit(system).nbytes == 1536 * MiB


def test_mount_point_with_an_escaped_space(system) -> None:
    system.v2("/j", {"/j": str(GiB)}, point="/sys/fs/cg\\040root")
    assert limit(system).nbytes == GiB


@pytest.mark.parametrize(
    ("slurm_mib", "v2", "v1", "want"),
    [
        (4096, 8 * GiB, 16 * GiB, "SLURM_MEM_PER_NODE"),
        (16384, 8 * GiB, 16 * GiB, "cgroup v2"),
        (16384, 16 * GiB, 2 * GiB, "cgroup v1"),
    ],
)
def test_the_lowest_limit_of_all_sources_wins(system, slurm_mib, v2, v1, want) -> None:
    system.v2("/job", {"/job": str(v2)}, point="/sys/fs/cgroup/unified")
    system.v1("/job", {"/job": str(v1)})
    env = {"SLURM_MEM_PER_NODE": str(slurm_mib)}
    found = limit(system, env)
    assert found.source.startswith(want)
    assert found.nbytes == min(slurm_mib * MiB, v2, v1)
    assert [x.nbytes for x in job_limits(env, proc=system.proc, root=system.root)] == [
        slurm_mib * MiB,
        v2,
        v1,
    ]


def test_missing_proc_files_are_no_limit(tmp_path) -> None:
    assert find_job_limit({}, proc=str(tmp_path / "none"), root=str(tmp_path)) is None


def test_this_machine_is_read_without_error() -> None:
    found = find_job_limit({})
    assert found is None or found.nbytes > 0
