"""Progress of a long job: a tqdm bar on a terminal, plain log lines otherwise, or nothing."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from shardio.core.config import format_size
from shardio.core.errors import InvalidOptionError

__all__ = ["Progress", "progress_mode"]

_LOG_INTERVAL_S = 5.0


def progress_mode(progress: bool | str | None, stream: TextIO | None = None) -> str:
    """``"bar"``, ``"log"`` or ``"none"`` for the ``progress=`` option.

    ``True`` or ``"auto"`` picks a bar when ``stream`` (stderr) is a terminal and log
    lines otherwise; ``False`` or ``None`` shows nothing.
    """
    if progress is None or progress is False:
        return "none"
    if progress is True or progress == "auto":
        stream = stream or sys.stderr
        isatty = getattr(stream, "isatty", None)
        return "bar" if isatty is not None and isatty() else "log"
    if progress in ("bar", "log", "none"):
        return str(progress)
    raise InvalidOptionError(
        f"progress should be True, False, 'auto', 'bar', 'log' or 'none', but got "
        f"progress={progress!r}"
    )


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.5))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Counts samples, bytes and shards of a job and shows them in one of three ways."""

    def __init__(
        self,
        mode: str,
        label: str,
        *,
        total_samples: int,
        total_bytes: int,
        total_shards: int,
        done_samples: int = 0,
        done_bytes: int = 0,
        done_shards: int = 0,
        stream: TextIO | None = None,
        interval: float = _LOG_INTERVAL_S,
    ) -> None:
        self.mode = mode
        self.label = label
        self.stream = stream or sys.stderr
        self.interval = interval
        self.total_samples = total_samples
        self.total_bytes = max(total_bytes, 0)
        self.total_shards = total_shards
        self.samples = done_samples
        self.nbytes = done_bytes
        self.shards = done_shards
        self._initial_samples = done_samples
        self._initial_bytes = done_bytes
        self._start = time.perf_counter()
        self._last_log = self._start
        self._bar: Any = None
        if mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total_bytes or None,
                initial=done_bytes,
                unit="B",
                unit_scale=True,
                unit_divisor=1000,
                desc=label,
                file=self.stream,
                dynamic_ncols=True,
                smoothing=0.1,
            )
            self._bar.set_postfix_str(self._postfix(), refresh=False)
        elif mode == "log":
            resumed = f"; {done_shards} already complete" if done_shards else ""
            self._print(
                f"{label}: {total_shards} shards, {total_samples} samples, "
                f"{format_size(self.total_bytes)}{resumed}"
            )

    # ----------------------------------------------------------------- updates
    def advance(self, samples: int, nbytes: int) -> None:
        """Samples and bytes processed inside a shard that is not finished yet."""
        self.samples += samples
        self.nbytes += nbytes
        if self._bar is not None:
            self._bar.update(nbytes)
            self._bar.set_postfix_str(self._postfix(), refresh=False)

    def shard_done(self, samples: int = 0, nbytes: int = 0) -> None:
        """One more shard complete; ``samples``/``nbytes`` not yet counted by advance()."""
        self.shards += 1
        self.advance(samples, nbytes)
        if self.mode == "log":
            now = time.perf_counter()
            if now - self._last_log >= self.interval or self.shards == self.total_shards:
                self._last_log = now
                self._print(self.status())

    def message(self, text: str) -> None:
        """A line outside the bar (a warning, a note)."""
        if self.mode == "none":
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            self._print(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # ----------------------------------------------------------------- figures
    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def rates(self) -> tuple[float, float]:
        """(samples/s, bytes/s) of this run, not counting resumed work."""
        elapsed = max(self.elapsed, 1e-9)
        return (
            (self.samples - self._initial_samples) / elapsed,
            (self.nbytes - self._initial_bytes) / elapsed,
        )

    def _postfix(self) -> str:
        samples_per_s, _ = self.rates()
        return f"{self.shards}/{self.total_shards} shards, {samples_per_s:,.0f} samples/s"

    def status(self) -> str:
        samples_per_s, bytes_per_s = self.rates()
        percent = 100.0 * self.samples / self.total_samples if self.total_samples else 100.0
        remaining = self.total_samples - self.samples
        eta = _duration(remaining / samples_per_s) if samples_per_s > 0 else "?"
        return (
            f"{self.label}: {self.shards}/{self.total_shards} shards, "
            f"{self.samples}/{self.total_samples} samples ({percent:.0f}%), "
            f"{format_size(self.nbytes)}, {bytes_per_s / 1e6:.1f} MB/s, "
            f"{samples_per_s:,.0f} samples/s, ETA {eta}"
        )

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
