"""Atomic file writes: a temporary file in the same folder, renamed into place, so readers and
interrupted runs never see half a file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def new_file_mode() -> int:
    """The permissions `open()` would give a new file (0o666 less the umask).

    mkstemp makes its files private to the owner; a restored photo or a results table should be as
    readable as any file the user creates.
    """
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc (macOS, Windows): read the umask by setting it back at once
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_output(target: Path, mode: str = "wb", **open_args: Any) -> Iterator[IO]:
    """A stream whose content replaces `target` in one rename when the block ends without an error."""
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(handle, new_file_mode())
        with os.fdopen(handle, mode, **open_args) as stream:
            yield stream
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomically(target: Path, text: str) -> None:
    """Replace `target` with `text` (UTF-8, newlines as given) in one rename."""
    with atomic_output(Path(target), "w", encoding="utf-8", newline="") as stream:
        stream.write(text)
