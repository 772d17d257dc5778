"""The one exception type users see: its message is a single sentence naming the problem and the file."""

from pathlib import Path


class RefFaceError(Exception):
    """A problem with the user's input, files or environment, explained in one sentence.

    The CLI prints the message without a traceback and exits non-zero; library users can catch
    this one type to tell bad input apart from bugs.
    """


def require_file(path: str | Path, what: str) -> Path:
    """`path` as a Path if it is an existing regular file; otherwise the one-sentence error."""
    source = Path(path)
    if not source.exists():
        raise RefFaceError(f"The {what} {source} does not exist.")
    if source.is_dir():
        raise RefFaceError(f"The {what} {source} is a directory, not a file.")
    return source
