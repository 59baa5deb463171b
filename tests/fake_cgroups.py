"""Fake /proc and cgroup trees in a temporary directory, as a kernel lays them out."""

from __future__ import annotations

import os
from pathlib import Path

_V2_MOUNT = "35 24 0:30 {root} {point} rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw\n"
_V1_MOUNT = "36 24 0:31 {root} {point} rw,nosuid - cgroup cgroup rw,{controllers}\n"
_OTHER = "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"


class FakeSystem:
    """``proc`` and ``root`` to pass to :func:`shardio.memory.find_job_limit`.

    ``v2(path, limits)`` mounts a unified hierarchy at /sys/fs/cgroup and puts this
    process in ``path``; ``v1(path, limits)`` a memory hierarchy at
    /sys/fs/cgroup/memory. ``limits`` maps a cgroup path to its memory file's text."""

    def __init__(self, base: Path) -> None:
        self.proc = str(base / "proc")
        self.root = str(base / "root")
        os.makedirs(os.path.join(self.proc, "self"))
        os.makedirs(self.root)
        self._cgroup_lines: list[str] = []
        self._mounts: list[str] = [_OTHER]
        self._write()

    def v2(
        self,
        path: str,
        limits: dict[str, str],
        mount_root: str = "/",
        point: str = "/sys/fs/cgroup",
    ) -> None:
        self._mounts.append(_V2_MOUNT.format(root=mount_root, point=point))
        self._cgroup_lines.append(f"0::{path}")
        self._files(point, mount_root, limits, "memory.max")

    def v1(
        self,
        path: str,
        limits: dict[str, str],
        mount_root: str = "/",
        point: str = "/sys/fs/cgroup/memory",
        controllers: str = "memory",
    ) -> None:
        self._mounts.append(_V1_MOUNT.format(root=mount_root, point=point, controllers=controllers))
        self._cgroup_lines.insert(0, f"4:{controllers}:{path}")
        self._files(point, mount_root, limits, "memory.limit_in_bytes")

    def _files(self, point: str, mount_root: str, limits: dict[str, str], name: str) -> None:
        mounted = os.path.join(self.root, point.lstrip("/").replace("\\040", " "))
        for cgroup, text in limits.items():
            relative = os.path.relpath(cgroup, mount_root)
            directory = os.path.normpath(os.path.join(mounted, relative))
            os.makedirs(directory, exist_ok=True)
            Path(directory, "cgroup.procs").write_text("")
            if text:
                Path(directory, name).write_text(text + "\n")
        self._write()

    def _write(self) -> None:
        Path(self.proc, "self", "mountinfo").write_text("".join(self._mounts))
        Path(self.proc, "self", "cgroup").write_text("\n".join(self._cgroup_lines) + "\n")
