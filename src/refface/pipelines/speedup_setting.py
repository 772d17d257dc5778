"""A pipeline's own on/off setting of refface's CPU speed-ups, which its calls read."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from refface import speedups

Method = TypeVar("Method", bound=Callable)


class SpeedupSetting:
    """Mixin for pipelines: `enable_speedups(on)` and the models it gives the faster modules."""

    _speedups = False

    def speedup_models(self) -> tuple[nn.Module, ...]:
        """The models whose modules the speed-ups replace."""
        raise NotImplementedError

    def enable_speedups(self, on: bool = True):
        """Turn this pipeline's CPU speed-ups on or off for its later calls (the output changes by rounding only).

        Off is a setting of the pipeline that its calls read, so it is thread-safe; on installs the faster modules
        the first time (`refface.speedups.install`), so turn them on before the pipeline is shared between
        threads. For one block of code in one thread, `with refface.speedups.disabled():` does the same.
        """
        if on:
            speedups.install(*self.speedup_models())
        self._speedups = on
        return self


def within_speedup_setting(method: Method) -> Method:
    """Runs a pipeline method under the pipeline's setting (off: off; on: whatever the caller's block says)."""

    @functools.wraps(method)
    def scoped(self: SpeedupSetting, *args, **kwargs):
        with speedups.allowed(self._speedups):
            return method(self, *args, **kwargs)

    return scoped
