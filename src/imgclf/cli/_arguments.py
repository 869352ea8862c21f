"""argparse types the commands share: a value that is not valid is refused in one line saying what is."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid: an integer >= 1")
    return value


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):  # nan too
        raise argparse.ArgumentTypeError(f"{text!r} is not valid: a number of seconds above 0")
    return value


def number_from_0(below: float, says: str) -> Callable[[str], float]:
    """An argparse type: a number from 0 up to (not including) `below`; anything else is `says` in one line."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0 <= value < below:
            raise argparse.ArgumentTypeError(f"{text!r} is not valid: {says}")
        return value

    return parse
