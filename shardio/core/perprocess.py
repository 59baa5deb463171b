"""One value per process: handles, caches and counters that a forked child or an
unpickled copy must not share with the process that made them.

Every place that holds a library handle, a mapping or per-process bookkeeping keeps
it in a `PerProcess`, so "drop it when the PID changed" is written once.

The threading rule (docs/reliability.md): one value is made per process, by the
first thread that asks; threads asking meanwhile wait for it and then share it. (The
lock is reentrant, so a maker that asks for its own value fails with a
RecursionError instead of hanging.)
Whether the value itself may be used by several threads at once is its owner's
business (shard readers are; see `DatasetReader`).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["ForkSafeLock", "PerProcess", "process_alive"]

T = TypeVar("T")

_INSTANCES: weakref.WeakSet[PerProcess[Any]] = weakref.WeakSet()
_LOCKS: weakref.WeakSet[ForkSafeLock] = weakref.WeakSet()


def _fresh_locks_in_child() -> None:
    # NOTE: a lock held by another thread of the parent at fork time stays held forever
    # in the child, where that thread does not exist; the child starts with new ones.
    for instance in list(_INSTANCES):
        instance._lock = threading.RLock()
    for lock in list(_LOCKS):
        lock._lock = lock._new()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_locks_in_child)


class PerProcess(Generic[T]):
    """A value that belongs to the process that made it.

    A forked child finds the parent's value *inherited*: `get` drops it without
    closing it (closing would act on library state shared with the parent), unless
    the owner asks to handle it (``on_inherited``). A pickled copy carries no value.
    """

    __slots__ = ("__weakref__", "_lock", "_pid", "_value")

    def __init__(self) -> None:
        self._value: T | None = None
        self._pid = -1
        self._lock = threading.RLock()
        _INSTANCES.add(self)

    def get(self, make: Callable[[], T], on_inherited: Callable[[T], None] | None = None) -> T:
        """This process's value, made by ``make()`` on first use in the process."""
        value, pid = self._value, os.getpid()
        if value is not None and self._pid == pid:
            return value
        with self._lock:
            if self._value is not None and self._pid != pid:
                inherited, self._value = self._value, None
                if on_inherited is not None:
                    on_inherited(inherited)
                del inherited  # let it go before a new one is made, not after
            if self._value is None:
                self._value = make()
                self._pid = pid
            return self._value

    def current(self) -> T | None:
        """This process's value, or None when it has none yet."""
        value = self._value
        return value if value is not None and self._pid == os.getpid() else None

    def take(self) -> T | None:
        """Remove and return this process's value, for the caller to close; a value
        inherited from another process is dropped, and None returned."""
        with self._lock:
            value, self._value = self._value, None
            return value if value is not None and self._pid == os.getpid() else None

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._value = None
        self._pid = -1
        self._lock = threading.RLock()
        _INSTANCES.add(self)

    def __repr__(self) -> str:
        return f"PerProcess({self.current()!r})"


class ForkSafeLock:
    """A lock (``with lock: ...``) that a forked child and a pickled copy get anew.

    For locks of objects that forked DataLoader workers inherit while other threads of
    the parent may hold them (a thread loader, the Prefetcher)."""

    __slots__ = ("__weakref__", "_lock", "_reentrant")

    def __init__(self, reentrant: bool = False) -> None:
        self._reentrant = reentrant
        self._lock = self._new()
        _LOCKS.add(self)

    def _new(self) -> Any:
        return threading.RLock() if self._reentrant else threading.Lock()

    def __enter__(self) -> ForkSafeLock:
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def __getstate__(self) -> dict[str, Any]:
        return {"reentrant": self._reentrant}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["reentrant"])  # type: ignore[misc]


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (another user's live process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
