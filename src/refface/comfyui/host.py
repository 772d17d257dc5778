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
    """Counts a node's work for the host: ComfyUI's progress bar inside ComfyUI, a tqdm bar elsewhere.

    `check()` (called between sampling steps) is where a ComfyUI user's Cancel takes effect: ComfyUI's
    interrupt check raises its own exception, which stops the restoration there.
    """

    def __init__(self, total: int, description: str = "refface") -> None:
        utils = _comfy_module("comfy.utils")
        management = _comfy_module("comfy.model_management")
        self._interrupted: Callable[[], None] | None = (
            getattr(management, "throw_exception_if_processing_interrupted", None) if management else None
        )
        self._bar = utils.ProgressBar(total) if utils is not None and hasattr(utils, "ProgressBar") else None
        self._tqdm = tqdm(total=total, desc=description, unit="step") if self._bar is None else None

    def check(self, *_: object) -> None:
        """Stop here if the ComfyUI user pressed Cancel (a pipeline `step_callback`: between two steps)."""
        if self._interrupted is not None:
            self._interrupted()

    def advance(self, count: int = 1) -> None:
        """`count` more units of work started or done."""
        self.check()
        if self._bar is not None:
            self._bar.update(count)
        else:
            self._tqdm.update(count)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()


def comfyui_models_folder() -> Path | None:
    """ComfyUI's models folder when running inside ComfyUI, else None."""
    paths = _comfy_module("folder_paths")
    folder = getattr(paths, "models_dir", None) if paths is not None else None
    return Path(folder) if folder else None
