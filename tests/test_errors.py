"""short_reason: the few words of an exception that error messages quote."""

from __future__ import annotations

import pytest

from refface.errors import short_reason


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ValueError("bad header.\nTraceback details"), "bad header"),
        (OSError(""), "OSError"),
        (KeyError("unet"), "'unet'"),
        (RuntimeError("\n  \x1b[31mno such file.\x1b[0m  \nmore"), "no such file"),
        (RuntimeError(" \n "), "RuntimeError"),
    ],
)
def test_the_first_line_or_the_type_name(error: BaseException, reason: str) -> None:
    assert short_reason(error) == reason


def test_long_reasons_are_shortened() -> None:
    long = short_reason(ValueError("x" * 200))
    assert len(long) == 160 and long.endswith("x...")
    assert short_reason(ValueError("x" * 160)) == "x" * 160
