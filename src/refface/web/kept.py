"""What clients uploaded (photos, people), kept by random id until it has not been used for a while.

The page works in steps (upload a photo, give the people, restore), so uploads outlive one request; an
unguessable id is the only handle a client gets, and anything unused for `keep_seconds` is forgotten. Memory is
bounded too: past `max_items` entries or `max_bytes` in all, the least recently used are forgotten first (their
client is told to upload again).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from refface.errors import RefFaceError

T = TypeVar("T")


class Kept(Generic[T]):
    """A thread-safe map from random ids to items, each forgotten `keep_seconds` after its last use, and the least
    recently used forgotten first beyond `max_items` items or `max_bytes` (as `size(item)` counts them).

    `missing`: the sentence a client gets for an unknown, expired or evicted id; `forget(item)` runs for every
    item that is dropped (e.g. to delete its files).
    """

    def __init__(
        self,
        keep_seconds: float,
        missing: str,
        forget: Callable[[T], None] | None = None,
        *,
        max_items: int | None = None,
        max_bytes: int | None = None,
        size: Callable[[T], int] = lambda item: 0,
    ) -> None:
        self._keep, self._missing, self._forget = keep_seconds, missing, forget
        self._max_items, self._max_bytes, self._size = max_items, max_bytes, size
        self._items: OrderedDict[str, tuple[T, float, int]] = OrderedDict()  # least recently used first
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, item: T) -> str:
        identifier = secrets.token_urlsafe(16)
        size = self._size(item)
        with self._lock:
            old = self._expired()
            self._items[identifier] = (item, time.monotonic(), size)
            self._bytes += size
            old += self._over_bounds(keep=identifier)
        self._drop(old)
        return identifier

    def get(self, identifier: str) -> T:
        with self._lock:
            kept = self._items.get(identifier)
            if kept is None:
                raise RefFaceError(self._missing)
            self._items[identifier] = (kept[0], time.monotonic(), kept[2])
            self._items.move_to_end(identifier)
            return kept[0]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def bytes(self) -> int:
        """What the kept items count for, in all."""
        with self._lock:
            return self._bytes

    def clear(self) -> None:
        with self._lock:
            items = [item for item, _, _ in self._items.values()]
            self._items.clear()
            self._bytes = 0
        self._drop(items)

    def _pop(self, key: str) -> T:
        item, _, size = self._items.pop(key)
        self._bytes -= size
        return item

    def _expired(self) -> list[T]:
        now = time.monotonic()
        old = [key for key, (_, touched, _) in self._items.items() if now - touched > self._keep]
        return [self._pop(key) for key in old]

    def _over_bounds(self, keep: str) -> list[T]:
        """The least recently used items beyond the bounds (never the one just added)."""
        dropped = []
        for key in list(self._items):
            too_many = self._max_items is not None and len(self._items) > self._max_items
            too_big = self._max_bytes is not None and self._bytes > self._max_bytes
            if not (too_many or too_big):
                break
            if key != keep:
                dropped.append(self._pop(key))
        return dropped

    def _drop(self, items: list[T]) -> None:
        if self._forget is not None:
            for item in items:
                self._forget(item)
