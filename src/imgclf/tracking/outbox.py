"""A journal of tracking records that outlives the tracking server.

Each record (a batch of metrics/params/tags, an artifact, the run's end) is appended to `journal.jsonl` before a
background thread sends it; `sent` counts the records the server has taken. Training never waits for the server:
while it is away, records wait here (on disk, so a crash loses none of them) and go out in order when it comes
back. Files to upload are hard-linked (or copied) into the outbox when they are logged, so a file replaced or
deleted later is still uploaded as it was. What is left when the owner gives up waiting is sent later by
`imgclf sync`, which reads the same journal. Nothing here knows MLflow: `send` does (runs.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imgclf.credentials import hide
from imgclf.paths import user_cache

log = logging.getLogger(__name__)

JOURNAL = "journal.jsonl"
SENT = "sent"
META = "meta.json"
FIRST_DELAY, MAX_DELAY = 0.5, 30.0  # seconds between tries while the server is away
# ... and once the owner only waits for the records (`close`): a try every CLOSING_DELAY s at most, so a process done
# training ends within seconds of the server's return, not up to MAX_DELAY later
CLOSING_DELAY = 1.0


def default_root() -> Path:
    """~/.cache/imgclf/outbox (XDG_CACHE_HOME respected): outside the repo and DVC's temporary experiment copies."""
    return user_cache("outbox")


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=_link_file)
    else:
        _link_file(src, dst)


def _link_file(src: str | Path, dst: str | Path) -> None:
    """A hard link keeps the content as logged: our writers replace files by rename, never in place."""
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


class Outbox:
    """Records for one run, delivered in order by a background thread; `close` waits for them (up to a limit)."""

    def __init__(
        self,
        directory: Path,
        send: Callable[[dict[str, Any], Path], None],
        *,
        permanent: Callable[[Exception], bool],
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        if meta is not None:
            (self.dir / META).write_text(json.dumps(meta))
        self._send, self._permanent = send, permanent
        self._sent = int((self.dir / SENT).read_text()) if (self.dir / SENT).is_file() else 0
        lines = self._whole_records()
        self._pending = deque(json.loads(line) for line in lines[self._sent :])
        self._count = len(lines)
        self._journal = (self.dir / JOURNAL).open("a")
        self._cond = threading.Condition()
        self._closing = self._abandoned = False
        self.outage_since: float | None = None
        self._thread = threading.Thread(target=self._deliver, name="imgclf-outbox", daemon=True)
        self._thread.start()

    def _whole_records(self) -> list[str]:
        """The journal's lines; a last one without its newline (its writer killed mid-append: never taken by the
        server, as `sent` counts only whole records) is cut off, so the next record starts on a line of its own."""
        journal = self.dir / JOURNAL
        if not journal.is_file():
            return []
        data = journal.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]
        if len(whole) < len(data):
            log.warning("outbox %s: dropped a record cut short by a killed process", self.dir)
            with journal.open("r+b") as f:
                f.truncate(len(whole))
        return whole.decode().splitlines()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def put(self, record: dict[str, Any]) -> None:
        with self._cond:
            self._journal.write(json.dumps(record) + "\n")
            self._journal.flush()
            self._count += 1
            self._pending.append(record)
            self._cond.notify_all()

    def put_file(self, path: Path, artifact_path: str | None) -> None:
        """Queue an upload of a file or directory, taken as it is now."""
        name = f"files/{self._count}/{Path(path).name}"
        _link_or_copy(Path(path), self.dir / name)
        self.put({"op": "artifact", "file": name, "artifact_path": artifact_path})

    def _deliver(self) -> None:
        delay = FIRST_DELAY
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending or self._abandoned:
                    return
                record = self._pending[0]
            try:
                self._send(record, self.dir)
            except Exception as exc:  # noqa: BLE001 - the server's errors are many; `permanent` sorts them
                if self._permanent(exc):
                    log.warning("tracking: dropped a %s record the server refused: %s", record["op"], _first(exc))
                else:
                    self._waiting(exc)
                    with self._cond:
                        self._cond.wait(min(delay, CLOSING_DELAY) if self._closing else delay)  # close() wakes it
                    delay = min(delay * 2, MAX_DELAY)
                    continue
            if self.outage_since is not None:
                log.warning("tracking server back after %.0f s; sending %d buffered records", *self._back())
            delay = FIRST_DELAY
            self._done()

    def _waiting(self, exc: Exception) -> None:
        if self.outage_since is None:
            self.outage_since = time.monotonic()
            log.warning("tracking server unreachable (%s); training goes on, records wait in %s", _first(exc), self.dir)

    def _back(self) -> tuple[float, int]:
        since, self.outage_since = self.outage_since, None
        return time.monotonic() - since, self.pending

    def _done(self) -> None:
        with self._cond:
            self._pending.popleft()
            self._sent += 1
            tmp = self.dir / f"{SENT}.tmp"
            tmp.write_text(str(self._sent))
            os.replace(tmp, self.dir / SENT)
            self._cond.notify_all()

    def close(self, timeout: float) -> bool:
        """Wait up to `timeout` s for every record to be sent. True: all sent, the outbox is removed. False: the
        journal stays on disk for `imgclf sync`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while self._pending and time.monotonic() < deadline:
                self._cond.wait(min(1.0, max(deadline - time.monotonic(), 0.0)))
            left = len(self._pending)
            self._abandoned = left > 0
            self._cond.notify_all()
            self._journal.close()
        if left:
            return False
        self._thread.join()
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.dir.parent.rmdir()  # <root>/<run id>/, when no other outbox of the run is left
        return True


def _first(exc: Exception) -> str:
    text = hide(str(exc).strip())
    return text.splitlines()[0][:300] if text else type(exc).__name__


def leftover(root: Path) -> list[Path]:
    """Outboxes under `root` with records still to send (oldest first)."""
    if not root.is_dir():
        return []
    return sorted((p.parent for p in root.rglob(META)), key=lambda p: p.stat().st_mtime)


def waiting(directory: Path) -> int:
    """How many whole records of the outbox in `directory` the server has not taken (read only)."""
    journal, sent = directory / JOURNAL, directory / SENT
    records = journal.read_bytes().count(b"\n") if journal.is_file() else 0
    return records - (int(sent.read_text()) if sent.is_file() else 0)
