"""Errors a user can fix: bad input, a missing prerequisite, refused access. Stages print them as one line.

Anything else is a bug and keeps its traceback (stages/_app.py).
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a missing prerequisite: `error: <message>`, exit 1, no traceback."""


class BadInput(UserError, ValueError):
    """A config value out of range or a malformed input file; the message says what is valid."""


class BadConfig(BadInput):
    """The composed config refused before a stage does any work (imgclf.options)."""


class MissingInput(UserError, FileNotFoundError):
    """A file the user names, or an earlier stage writes, is not there; the message says how to get it."""


class DiskFull(UserError, OSError):
    """A write failed for want of space (or a file-size limit); the message says what was kept."""


class AccessDenied(UserError, PermissionError):
    """A service refused our credentials; the message says what to do."""


def did_you_mean(given: str, valid, prefix: str = "") -> str:
    """' (did you mean X?)' for the valid name closest to a mistyped one ('' when none is close)."""
    import difflib

    close = difflib.get_close_matches(given, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


# also one line at the stage boundary: a missing or unreadable file names itself and is the user's to fix
USER_ERRORS = (UserError, FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)
