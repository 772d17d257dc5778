"""The one exception type users see: its message is a single sentence naming the problem and the file."""

import re
from pathlib import Path

_ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


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


def short_reason(error: BaseException) -> str:
    """What went wrong in a few words, to quote inside a sentence's parentheses: the first non-blank line of
    `str(error)` without ANSI colour codes, surrounding spaces or a trailing full stop, cut at 160 characters;
    the error type's name where the message is empty."""
    text = _ANSI_COLOUR.sub("", str(error)).strip().splitlines()
    line = text[0].strip().rstrip(".") if text else ""
    line = line or type(error).__name__
    return line if len(line) <= 160 else line[:157] + "..."
