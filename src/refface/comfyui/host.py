"""What refface's nodes use of ComfyUI when they run inside it: the progress bar, the interrupt check, the
models folder. Outside ComfyUI (tests, scripts) tqdm shows progress and nothing interrupts.

ComfyUI's modules (`comfy.utils`, `comfy.model_management`, `folder_paths`) are only importable inside a
ComfyUI process, so each is looked up when needed, never at import time.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm


def _comfy_module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


class Progress:
    """Counts a node's sampling steps for the host: ComfyUI's progress bar inside ComfyUI, a tqdm bar elsewhere.

    The bar has `steps` units for each of the node's `calls` pipeline calls (`calls` may be told at the first
    call instead, when only the restorer knows it). `begin()` starts a call, `step()` (a pipeline
    `step_callback`) counts a sampling step of it; with `strength` below 1 a call runs fewer steps and the bar
    jumps to the next call's start. Both are where a ComfyUI user's Cancel takes effect: ComfyUI's interrupt
    check raises its own exception, which stops the restoration between two sampling steps.
    """

    def __init__(self, calls: int | None, steps: int, description: str = "refface") -> None:
        utils = _comfy_module("comfy.utils")
        management = _comfy_module("comfy.model_management")
        self._interrupted: Callable[[], None] | None = (
            getattr(management, "throw_exception_if_processing_interrupted", None) if management else None
        )
        self.steps, self.calls, self.begun, self.done = max(int(steps), 1), calls, 0, 0
        total = (calls or 0) * self.steps
        self._bar = utils.ProgressBar(total) if utils is not None and hasattr(utils, "ProgressBar") else None
        self._tqdm = tqdm(total=total, desc=description, unit="step") if self._bar is None else None

    def check(self) -> None:
        """Stop here if the ComfyUI user pressed Cancel."""
        if self._interrupted is not None:
            self._interrupted()

    def begin(self, calls: int | None = None) -> None:
        """A pipeline call starts (`calls`: how many in all, when the bar was made without it)."""
        self.check()
        if self.calls is None and calls is not None:
            self.calls = calls
        self._show(self.begun * self.steps)
        self.begun += 1

    def step(self, index: int, *_: object) -> None:
        """Sampling step `index` (from 0) of the current call is done (a pipeline `step_callback`)."""
        self.check()
        self._show((self.begun - 1) * self.steps + min(index + 1, self.steps))

    def finish(self) -> None:
        """Every call ran: the bar is full (also where `strength` below 1 took fewer steps); no calls, no bar."""
        if self.calls:
            self._show(self.calls * self.steps)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()

    def _show(self, done: int) -> None:
        total = (self.calls or 0) * self.steps
        self.done = done
        if self._bar is not None:
            self._bar.update_absolute(done, total)
        else:
            self._tqdm.total = total
            self._tqdm.update(done - self._tqdm.n)


def comfyui_models_folder() -> Path | None:
    """ComfyUI's models folder when running inside ComfyUI, else None."""
    paths = _comfy_module("folder_paths")
    folder = getattr(paths, "models_dir", None) if paths is not None else None
    return Path(folder) if folder else None
