"""Errors a user can fix: bad input, a missing prerequisite, refused access. Stages print them as one line.

Anything else is a bug and keeps its traceback (stages/_app.py). A stop (SIGTERM, Ctrl-C) is one line too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path


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


class Overrun(UserError, TimeoutError):
    """A run of a model took longer than its limit and was stopped; the message names the limit."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first line for a one-line message (a database driver's own, under SQLAlchemy's wrapper), or
    its type when it says nothing."""
    said = str(getattr(exc, "orig", None) or exc).strip()
    return said.splitlines()[0][:limit] if said else type(exc).__name__


def shown(text: object, limit: int | None = 200) -> str:
    """User text (a path, a file name, a label) as a one-line message shows it: control characters as repr writes
    them (`a\\nb`, `\\x1b`) and bytes that are not UTF-8 as `\\xff`, so a newline in it neither cuts the message
    nor starts a line of the log; cut past `limit` characters."""
    said = "".join(map(_escaped, str(text)))
    return said if limit is None or len(said) <= limit else said[:limit] + "..."


def _escaped(char: str) -> str:
    if "\udc80" <= char <= "\udcff":  # a byte that is not UTF-8, as a file name holds it (surrogateescape)
        return f"\\x{ord(char) - 0xDC00:02x}"
    return char if char.isprintable() else repr(char)[1:-1]


def did_you_mean(given: str, valid, prefix: str = "") -> str:
    """' (did you mean X?)' for the valid name closest to a mistyped one ('' when none is close)."""
    import difflib

    close = difflib.get_close_matches(given, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


# also one line at the stage boundary: a missing or unreadable file names itself and is the user's to fix
USER_ERRORS = (UserError, FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def stoppable() -> Iterator[None]:
    """SIGTERM (dvc queue kill, a scheduler) ends the work as Ctrl-C does: the run marked KILLED, its outbox
    closed, not left RUNNING; then either ends the process in one line with the shell's status for the signal
    (143, 130) instead of a traceback (IMGCLF_DEBUG=1 keeps it)."""
    before = signal.signal(signal.SIGTERM, _sigterm)
    try:
        yield
    except KeyboardInterrupt as exc:
        if os.environ.get("IMGCLF_DEBUG"):
            raise
        term = str(exc) == f"signal {signal.SIGTERM}"
        print(f"stopped by {'SIGTERM' if term else 'Ctrl-C'}", file=sys.stderr)
        sys.exit(128 + (signal.SIGTERM if term else signal.SIGINT))
    finally:
        signal.signal(signal.SIGTERM, before)


def yaml_error(exc: Exception) -> str:
    """A YAML parser's error as one line: the file, line and column, and the problem."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{mark.name} line {mark.line + 1}, column {mark.column + 1}" if mark else getattr(exc, "name", None)
    where = where or "a file of conf/"
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{where} is not valid YAML: {problem}"


def not_text(conf: Path, exc: UnicodeDecodeError) -> Exception:
    """Hydra's UnicodeDecodeError from a conf/ file as a YAML reader's error naming the file (yaml_error's line)."""
    from yaml.reader import ReaderError

    for path in sorted(conf.rglob("*.yaml")):
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as found:
            exc, name = found, str(path)
            break
    else:
        name = "a file of conf/"
    return ReaderError(name, exc.start, exc.object[exc.start], "utf-8", f"not UTF-8 text ({exc.reason})")
