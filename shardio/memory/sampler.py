"""One RSS sampler: a process's resident memory, at most every ``interval`` seconds,
on demand (`maybe_sample`, `due`) or from a daemon thread (`start`).

The benchmark (``tools.bench.rss``), the job watch (`JobWatch`) and the loader doctor
(``tools.diagnose``) all sample through it. A sample is ``(time.monotonic(), rss,
anon, file)`` in bytes, anon and file -1 where the OS does not say (no /proc: psutil's
total only); on Linux ``time.monotonic`` is one clock for every process, so the
samples of DataLoader workers line up with the main process's. With ``path``, every
sample is also appended to that file as four little-endian 8-byte values (``<f8 <i8
<i8 <i8``), one ``os.write`` each on an ``O_APPEND`` descriptor, so nothing is lost
when a worker exits through ``os._exit``.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time
from collections.abc import Callable
from typing import Self

from shardio.core.errors import InvalidOptionError

from .rss import process_rss, read_rss

__all__ = ["RSS_ROW", "RssRow", "RssSampler"]

RssRow = tuple[float, int, int, int]
"""One sample: seconds (``time.monotonic``), RSS, its anonymous and file-backed parts."""
#: How a sample is written to ``path``.
RSS_ROW = struct.Struct("<dqqq")


class RssSampler:
    """Samples this process's RSS at most every ``interval`` seconds."""

    def __init__(
        self,
        interval: float = 0.02,
        path: str | None = None,
        on_sample: Callable[[], None] | None = None,
    ) -> None:
        if not interval > 0:
            raise InvalidOptionError(f"interval should be > 0 seconds, but got {interval!r}")
        self.interval = interval
        self.path = path
        self.on_sample = on_sample
        self.rows: list[RssRow] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self._next = 0.0

    def due(self, now: float | None = None) -> bool:
        """True (and the next one ``interval`` away) when a sample is due at ``now``
        (``time.monotonic()`` unless given, on the caller's clock)."""
        now = time.monotonic() if now is None else now
        if now < self._next:
            return False
        self._next = now + self.interval
        return True

    def maybe_sample(self) -> RssRow | None:
        """A sample if one is due, else None."""
        return self.sample() if self.due() else None

    def sample(self) -> RssRow:
        """Take one sample now (kept in `rows`, and written to ``path``)."""
        reading = read_rss()
        if reading is not None:
            row = (time.monotonic(), reading.rss, reading.anon, reading.file)
        else:
            row = (time.monotonic(), process_rss() or 0, -1, -1)
        with self._lock:
            self.rows.append(row)
        if self._fd is not None:
            os.write(self._fd, RSS_ROW.pack(*row))
        return row

    def start(self) -> Self:
        """Sample now, then every ``interval`` seconds from a daemon thread."""
        if self._thread is not None:
            return self
        if self.path is not None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="shardio-rss", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()
            if self.on_sample is not None:
                with contextlib.suppress(Exception):  # a report hook never stops sampling
                    self.on_sample()

    def stop(self) -> list[RssRow]:
        """Stop the thread after one last sample; returns every sample taken."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.sample()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with self._lock:
            return list(self.rows)

    def __getstate__(self) -> dict[str, object]:
        """A copy (a spawned worker's) carries the settings, not the thread or file."""
        return {"interval": self.interval, "path": self.path, "on_sample": self.on_sample}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
