"""Read a process's resident set size, split into file-backed and anonymous parts."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RssInfo", "process_rss", "read_pss", "read_rss"]

_KEYS = {
    b"VmRSS:": "rss",
    b"RssAnon:": "anon",
    b"RssFile:": "file",
    b"RssShmem:": "shmem",
    b"VmHWM:": "peak",
}


@dataclass(frozen=True)
class RssInfo:
    """Bytes resident: total, anonymous (heap, caches), file-backed (mapped files), shared."""

    rss: int
    anon: int
    file: int
    shmem: int
    peak: int


def read_rss(pid: int | str = "self") -> RssInfo | None:
    """RSS of ``pid`` from ``/proc/PID/status``; ``None`` where /proc is absent (macOS)."""
    values = {"rss": 0, "anon": 0, "file": 0, "shmem": 0, "peak": 0}
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                key = _KEYS.get(line.split(None, 1)[0]) if line else None
                if key is not None:
                    values[key] = int(line.split()[1]) * 1024  # reported in kB
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return RssInfo(**values)


def process_rss(pid: int | str = "self") -> int | None:
    """Resident bytes of ``pid``: /proc where there is one, else psutil if installed;
    ``None`` where neither can say."""
    info = read_rss(pid)
    if info is not None:
        return info.rss
    try:
        import psutil  # optional: only where /proc is missing (macOS)
    except ImportError:
        return None
    try:
        return int(psutil.Process(None if pid == "self" else int(pid)).memory_info().rss)
    except psutil.Error:
        return None


def read_pss(pid: int | str = "self") -> int | None:
    """Proportional set size of ``pid`` from ``/proc/PID/smaps_rollup``: each shared
    page counts 1/N in each of the N processes mapping it, so PSS adds up over a job.
    ``None`` where the file is missing (macOS, kernels before 4.14) or unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as handle:
            for line in handle:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None
