"""The shard readers a dataset holds, which of them threads are reading, and which
to close.

One `OpenShards` per `DatasetReader`: readers by shard number, a count of the threads
reading each one now, and the open limit (least recently used closed first). Nothing
here closes a reader a thread is reading: a reader that must close while in use is
closed by the last thread that leaves it. All of it belongs to the process that made
it: a DataLoader worker makes its own readers, with its own options, on first use.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from shardio.core.perprocess import ForkSafeLock, PerProcess
from shardio.memory import ReleaseKind, ReleaseResult

from .adapters.base import ShardReader
from .openlimit import RecentlyUsed

__all__ = ["OpenShards", "ProcessShards"]


@dataclass
class ProcessShards:
    """One process's readers and who is reading them."""

    readers: dict[int, ShardReader[Any]] = field(default_factory=dict)
    users: Counter[int] = field(default_factory=Counter)
    close_when_unused: set[int] = field(default_factory=set)


class OpenShards:
    """Shard readers by number, their users, and the open limit.

    NOTE: threads of one process share it (shardio.Loader). ``lock`` guards the
    bookkeeping only (readers, use counts, the limit), never the reads themselves,
    which release the GIL; callers take it around `enter`-like sequences."""

    def __init__(self, limit: int) -> None:
        self.lock = ForkSafeLock()
        self.recent = RecentlyUsed(limit)
        # NOTE: a forked child drops the parent's readers without closing them (their
        # handles are the parent's); threads that were reading exist only there.
        self._held: PerProcess[ProcessShards] = PerProcess()

    @property
    def readers(self) -> dict[int, ShardReader[Any]]:
        """This process's shard readers by number (made on first use here)."""
        return self._held.get(ProcessShards).readers

    def here(self) -> ProcessShards:
        """This process's readers and users, looked up once for a batch's bookkeeping."""
        return self._held.get(ProcessShards)

    def use(self, number: int, held: ProcessShards | None = None) -> None:
        """Count a use of shard ``number`` for the open limit (under ``lock``): the
        least recently used shard beyond it closes now, or when its last reader leaves."""
        held = held if held is not None else self._held.get(ProcessShards)
        evicted = self.recent.use(number)
        held.close_when_unused.discard(number)
        if evicted is None or evicted not in held.readers:
            return
        if held.users[evicted]:
            held.close_when_unused.add(evicted)
        else:
            held.readers[evicted].close()

    def enter(self, number: int, held: ProcessShards | None = None) -> None:
        """A thread starts reading shard ``number`` (under ``lock``)."""
        (held if held is not None else self._held.get(ProcessShards)).users[number] += 1

    def leave(self, number: int, close: bool = False) -> None:
        """A thread is done with shard ``number``; the last one closes it where that
        was asked meanwhile (or ``close``: a reader opened only for this use)."""
        with self.lock:
            self._leave(self._held.get(ProcessShards), number, close)

    def leave_all(self, numbers: list[int]) -> None:
        """`leave` for each of ``numbers`` (shards a batch entered), under one lock."""
        with self.lock:
            self.leave_held(self._held.get(ProcessShards), numbers)

    def leave_held(self, held: ProcessShards, numbers: list[int]) -> None:
        """`leave_all` for a caller that holds ``lock`` and looked up ``held``."""
        for number in numbers:
            self._leave(held, number, False)

    @staticmethod
    def _leave(held: ProcessShards, number: int, close: bool) -> None:
        users = held.users
        users[number] -= 1
        if users[number]:
            return
        del users[number]
        if close or number in held.close_when_unused:
            held.close_when_unused.discard(number)
            held.readers[number].close()

    def close_unused(self, keep: int) -> None:
        """Close every open reader no thread reads, but shard ``keep``'s (under ``lock``)."""
        held = self._held.get(ProcessShards)
        for number, reader in held.readers.items():
            if number != keep and reader.is_open and not held.users[number]:
                reader.close()

    def open_numbers(self) -> set[int]:
        return {n for n, r in self.readers.items() if r.is_open}

    def release(self, kind: ReleaseKind) -> ReleaseResult:
        """Ask every open reader to release what reading made resident: a reader a
        thread is reading is only advised (mapped pages dropped), never closed; its
        next release comes with a later check."""
        total = ReleaseResult()
        with self.lock:
            held = self._held.get(ProcessShards)
            for number, reader in held.readers.items():
                if reader.is_open:
                    total += reader.release_memory(kind, may_close=not held.users[number])
        return total

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()
