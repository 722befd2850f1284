"""`LatestSlot`: the mailbox between two pipeline threads.

A live camera must never queue up: if inference is slower than the camera, the viewer wants the newest frame,
not a growing backlog of old ones. So `put` overwrites the oldest unread item (and counts it as dropped). A file
or generator has no "now", and losing frames there would make runs non-deterministic, so `put_wait` instead
waits until there is room. `close` wakes every waiter so threads can leave promptly; a reader still drains
what was put before the close, which is how end-of-stream travels down the pipeline without losing the tail.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """Keeps the newest `capacity` items (1 by default: a one-item mailbox); thread-safe."""

    def __init__(self, capacity: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f"slot capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._items: deque[T] = deque()
        self._condition = threading.Condition()
        self._closed = False
        self.put_count = 0
        self.taken = 0
        self.dropped = 0  # unread items replaced by newer ones

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        with self._condition:
            return len(self._items)

    def set_capacity(self, capacity: int) -> None:
        """Change how many items are kept; shrinking drops the oldest unread ones."""
        if capacity < 1:
            raise ValueError(f"slot capacity must be at least 1, got {capacity}")
        with self._condition:
            self._capacity = capacity
            self._trim()
            self._condition.notify_all()

    def put(self, item: T) -> bool:
        """Store `item` now, replacing the oldest unread item if full. False (item discarded) once closed."""
        with self._condition:
            if self._closed:
                return False
            self._items.append(item)
            self.put_count += 1
            self._trim()
            self._condition.notify_all()
            return True

    def put_wait(self, item: T, timeout: float | None = None) -> bool:
        """Store `item` once there is room (backpressure, nothing dropped). False on close or timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while len(self._items) >= self._capacity and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._condition.wait(remaining)
            if self._closed:
                return False
            self._items.append(item)
            self.put_count += 1
            self._condition.notify_all()
            return True

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest unread item, waiting up to `timeout`; None on timeout or when closed and empty."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while not self._items and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._condition.wait(remaining)
            if not self._items:
                return None
            self.taken += 1
            item = self._items.popleft()
            self._condition.notify_all()  # room for a waiting put_wait
            return item

    def close(self) -> None:
        """Refuse further puts and wake every waiter; unread items can still be taken."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def _trim(self) -> None:
        while len(self._items) > self._capacity:
            self._items.popleft()
            self.dropped += 1
