"""The memory limit of the job this process runs in: SLURM's request or the cgroup's.

Sources, in order (the lowest limit that applies wins; on a tie the first listed):
``SLURM_MEM_PER_NODE``; ``SLURM_MEM_PER_CPU`` x ``SLURM_CPUS_ON_NODE``; cgroup v2
``memory.max``; cgroup v1 ``memory.limit_in_bytes``. A cgroup's limit is the lowest
along the path from this process's cgroup (``/proc/self/cgroup``) up to the root of
its mount (``/proc/self/mountinfo``), since a parent's limit binds its children.
Both roots are parameters, so tests point them at fake trees.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

__all__ = ["PROC_ROOT", "FS_ROOT", "JobLimit", "find_job_limit", "job_limits"]

#: Where ``self/cgroup`` and ``self/mountinfo`` are read, and the prefix of the mount
#: points they name, where a caller passes none (tests point them at fake trees).
PROC_ROOT = "/proc"
FS_ROOT = "/"

#: SLURM states memory in megabytes of 2**20 bytes (``--mem=32G`` -> 32768).
_SLURM_UNIT = 2**20
#: cgroup v1 writes "no limit" as PAGE_COUNTER_MAX rounded to pages (about 2**63).
_V1_UNLIMITED = 2**62
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class JobLimit:
    """A memory limit in bytes and where it was read (for logs and errors)."""

    nbytes: int
    source: str


def find_job_limit(
    environ: Mapping[str, str] | None = None, proc: str | None = None, root: str | None = None
) -> JobLimit | None:
    """The lowest limit that applies to this process, or ``None`` where none is set.

    ``environ`` defaults to ``os.environ``; ``proc`` is where ``self/cgroup`` and
    ``self/mountinfo`` are read (`PROC_ROOT`); ``root`` prefixes the mount
    points they name (`FS_ROOT`)."""
    found = job_limits(environ, proc, root)
    return min(found, key=lambda limit: limit.nbytes) if found else None


def job_limits(
    environ: Mapping[str, str] | None = None, proc: str | None = None, root: str | None = None
) -> list[JobLimit]:
    """Every limit that applies, in the order of the sources (see the module doc)."""
    env = os.environ if environ is None else environ
    proc = PROC_ROOT if proc is None else proc
    root = FS_ROOT if root is None else root
    limits = list(_slurm_limits(env))
    mounts = _cgroup_mounts(proc)
    for version, memory_file in ((2, "memory.max"), (1, "memory.limit_in_bytes")):
        limit = _lowest(_own_cgroup_dirs(proc, root, mounts, version), memory_file)
        if limit is not None:
            nbytes, where = limit
            limits.append(JobLimit(nbytes, f"cgroup v{version} {memory_file} at {where}"))
    return limits


# ----------------------------------------------------------------------- SLURM
def _slurm_limits(env: Mapping[str, str]) -> Iterator[JobLimit]:
    per_node = _positive_int(env.get("SLURM_MEM_PER_NODE"))
    if per_node:
        yield JobLimit(per_node * _SLURM_UNIT, f"SLURM_MEM_PER_NODE={per_node}")
    per_cpu = _positive_int(env.get("SLURM_MEM_PER_CPU"))
    cpus = _positive_int(env.get("SLURM_CPUS_ON_NODE"))
    if per_cpu and cpus:
        yield JobLimit(
            per_cpu * cpus * _SLURM_UNIT,
            f"SLURM_MEM_PER_CPU={per_cpu} x SLURM_CPUS_ON_NODE={cpus}",
        )


def _positive_int(text: str | None) -> int | None:
    """SLURM's integer (a trailing unit letter such as ``M`` allowed); 0 means "all"."""
    if not text:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[Mm]?\s*", text)
    value = int(match.group(1)) if match else 0
    return value or None


# ---------------------------------------------------------------------- cgroups
def _cgroup_mounts(proc: str) -> dict[int, tuple[str, str]]:
    """cgroup version -> (mount root inside the hierarchy, mount point), for the
    unified (v2) hierarchy and the v1 hierarchy holding the memory controller."""
    mounts: dict[int, tuple[str, str]] = {}
    try:
        with open(os.path.join(proc, "self", "mountinfo"), encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return mounts
    for line in lines:
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, point = _unescape(fields[3]), _unescape(fields[4])
        if tail[0] == "cgroup2":
            mounts.setdefault(2, (root, point))
        elif tail[0] == "cgroup" and "memory" in tail[2].split(","):
            mounts.setdefault(1, (root, point))
    return mounts


def _unescape(text: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), text)


def _own_cgroup_dirs(
    proc: str, root: str, mounts: dict[int, tuple[str, str]], version: int
) -> list[str]:
    """This process's cgroup directory in the hierarchy of ``version`` and its
    ancestors up to the mount point (outermost first); empty where not found."""
    if version not in mounts:
        return []
    try:
        with open(os.path.join(proc, "self", "cgroup"), encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        wanted = controllers == "" if version == 2 else "memory" in controllers.split(",")
        if not wanted:
            continue
        mount_root, point = mounts[version]
        # The hierarchy is mounted from mount_root: only paths below it are reachable.
        relative = os.path.relpath(path, mount_root)
        if relative.startswith(".."):
            return []
        directory = os.path.normpath(os.path.join(root, point.lstrip("/")))
        found = [directory]
        for name in [] if relative == "." else relative.split(os.sep):
            directory = os.path.join(directory, name)
            found.append(directory)
        return found
    return []


def _lowest(directories: list[str], memory_file: str) -> tuple[int, str] | None:
    """The lowest limit set in any of ``directories``, and the file that sets it."""
    lowest: tuple[int, str] | None = None
    for directory in directories:
        path = os.path.join(directory, memory_file)
        value = _read_limit(path)
        if value is not None and (lowest is None or value < lowest[0]):
            lowest = (value, path)
    return lowest


def _read_limit(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as handle:
            text = handle.read().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None  # "max": no limit here
    value = int(text)
    return value if 0 < value < _V1_UNLIMITED else None
