"""Atomic file writes: a temporary file in the same folder, renamed into place, so readers and
interrupted runs never see half a file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from refface.errors import RefFaceError

PART_SUFFIX = ".part"  # the temporary files of atomic_output: `.NAME.XXXXXXXX.part` beside NAME


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


def cannot_write(target: Path, error: OSError) -> RefFaceError:
    """One sentence for an OS error while writing `target` (read-only folder, disk full, no permission)."""
    return RefFaceError(f"Could not write {target} ({error.strerror or error}).")


@contextmanager
def atomic_output(target: Path, mode: str = "wb", **open_args: Any) -> Iterator[IO]:
    """A stream whose content replaces `target` in one rename when the block ends without an error.

    Failing to write (a read-only folder, a full disk) is one sentence naming `target`; an error of the block's
    own (say, reading an input) is left as it is.
    """
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=PART_SUFFIX, dir=target.parent)
    except OSError as error:
        raise cannot_write(target, error) from None
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(handle, new_file_mode())
        with os.fdopen(handle, mode, **open_args) as stream:
            yield stream
        os.replace(temporary, target)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        if error.filename not in (None, temporary, str(target)):
            raise
        raise cannot_write(target, error) from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def remove_stale_parts(folder: Path) -> int:
    """Delete the temporary files a killed run left under `folder` (its own run holds the folder's lock)."""
    removed = 0
    for path in folder.rglob(f".*{PART_SUFFIX}"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def write_text_atomically(target: Path, text: str) -> None:
    """Replace `target` with `text` (UTF-8, newlines as given) in one rename."""
    with atomic_output(Path(target), "w", encoding="utf-8", newline="") as stream:
        stream.write(text)


class FolderLock:
    """One writer per output folder: a second run into the same folder is told which process holds it.

    An advisory lock (flock) on `FOLDER/.refface.lock`, released when the run ends or its process dies, so a
    killed run never leaves a stale lock; the file keeps the holder's process id for the message. Where the
    system has no flock (Windows), nothing is locked.
    """

    NAME = ".refface.lock"

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._handle: int | None = None
        self._made_folder = False

    def acquire(self) -> FolderLock:
        try:
            import fcntl
        except ImportError:  # no advisory locks here
            return self
        path = self.folder / self.NAME
        try:
            self._made_folder = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise cannot_write(path, error) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(handle, 64).decode("ascii", "replace").strip() or "another process"
            os.close(handle)
            raise RefFaceError(
                f"Another refface run (process {holder}) is writing into {self.folder}; wait for it to finish or "
                "choose another --output."
            ) from None
        os.ftruncate(handle, 0)
        os.write(handle, str(os.getpid()).encode("ascii"))
        self._handle = handle
        return self

    def release(self) -> None:
        """Free the folder; one this lock made and nothing was written into is removed again (a refused run
        leaves no empty output folder behind)."""
        if self._handle is None:
            return
        lock_file = self.folder / self.NAME
        if self._made_folder and [path.name for path in self.folder.iterdir()] == [self.NAME]:
            lock_file.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.folder.rmdir()
        os.close(self._handle)  # closing the descriptor releases the lock
        self._handle = None

    def __del__(self) -> None:
        self.release()
