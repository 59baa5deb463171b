"""A bounded hand-off between the read-ahead thread and the training loop."""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

__all__ = ["Channel"]

T = TypeVar("T")


class Channel(Generic[T]):
    """A bounded FIFO for one producer and one consumer that the consumer can close.

    Closing discards what is queued and wakes a producer blocked on a full channel, so
    the read-ahead thread stops without polling (``queue.Queue`` gained ``shutdown``
    only in Python 3.13).
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: deque[T] = deque()
        self._closed = False
        self._changed = threading.Condition()

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T) -> bool:
        """Append ``item``, waiting while the channel is full; False once it is closed."""
        with self._changed:
            while len(self._items) >= self._capacity and not self._closed:
                self._changed.wait()
            if self._closed:
                return False
            self._items.append(item)
            self._changed.notify_all()
            return True

    def get(self) -> T:
        """Remove and return the oldest item, waiting while the channel is empty."""
        with self._changed:
            while not self._items:
                if self._closed:
                    raise RuntimeError("get() on a closed, empty channel")
                self._changed.wait()
            item = self._items.popleft()
            self._changed.notify_all()
            return item

    def close(self) -> None:
        """Drop queued items and make every later ``put`` return False."""
        with self._changed:
            self._closed = True
            self._items.clear()
            self._changed.notify_all()
