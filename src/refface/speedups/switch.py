"""The one switch over every CPU speed-up, scoped to the current thread or task.

The faster modules (`refface.speedups.install`) compute the same functions as the modules they replace,
so whether they take their fast path is a per-call decision, not a property of the model: a context
variable, so turning them off for one restoration (a benchmark of the plain path, a debugging run)
leaves a concurrent restoration on the same model in another thread as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar

_ACTIVE: ContextVar[bool] = ContextVar("refface_speedups_active", default=True)


def active() -> bool:
    """Whether installed speed-ups take their fast paths in the current thread or task (default True)."""
    return _ACTIVE.get()


@contextmanager
def enabled(on: bool = True) -> Iterator[None]:
    """Within the block (this thread or task only) the installed speed-ups are on or off."""
    token = _ACTIVE.set(on)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def disabled() -> AbstractContextManager[None]:
    """Within the block (this thread or task only) every installed module runs its plain computation."""
    return enabled(False)


def allowed(on: bool) -> AbstractContextManager[None]:
    """A pipeline's own setting within the block: False turns the speed-ups off there, True leaves the
    surrounding setting (an enclosing `disabled()` still holds)."""
    return nullcontext() if on else disabled()
