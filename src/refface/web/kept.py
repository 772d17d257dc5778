"""What clients uploaded (photos, people), kept by random id until it has not been used for a while.

The page works in steps (upload a photo, give the people, restore), so uploads outlive one request; an
unguessable id is the only handle a client gets, and anything unused for `keep_seconds` is forgotten.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from refface.errors import RefFaceError

T = TypeVar("T")


class Kept(Generic[T]):
    """A thread-safe map from random ids to items, each forgotten `keep_seconds` after its last use.

    `missing`: the sentence a client gets for an unknown or expired id; `forget(item)` runs for every item
    that is dropped (e.g. to delete its files).
    """

    def __init__(self, keep_seconds: float, missing: str, forget: Callable[[T], None] | None = None) -> None:
        self._keep, self._missing, self._forget = keep_seconds, missing, forget
        self._items: dict[str, tuple[T, float]] = {}
        self._lock = threading.Lock()

    def add(self, item: T) -> str:
        identifier = secrets.token_urlsafe(16)
        with self._lock:
            old = self._expired()
            self._items[identifier] = (item, time.monotonic())
        self._drop(old)
        return identifier

    def get(self, identifier: str) -> T:
        with self._lock:
            kept = self._items.get(identifier)
            if kept is None:
                raise RefFaceError(self._missing)
            self._items[identifier] = (kept[0], time.monotonic())
            return kept[0]

    def clear(self) -> None:
        with self._lock:
            items = [item for item, _ in self._items.values()]
            self._items.clear()
        self._drop(items)

    def _expired(self) -> list[T]:
        now = time.monotonic()
        old = [key for key, (_, touched) in self._items.items() if now - touched > self._keep]
        return [self._items.pop(key)[0] for key in old]

    def _drop(self, items: list[T]) -> None:
        if self._forget is not None:
            for item in items:
                self._forget(item)
