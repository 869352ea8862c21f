"""Runs whose process was killed (SIGKILL, the OOM killer, a lost node) stay RUNNING: found and ended here."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mlflow.tracking import MlflowClient

from imgclf.credentials import hide
from imgclf.errors import MissingInput
from imgclf.files import pid_alive, proc_stat
from imgclf.tracking.store import answers, check_sqlite_store, resolve_uri, retry_locked, sqlite_file

log = logging.getLogger(__name__)


PROCESS_TAG = "imgclf.process"  # host:pid:start time of the process that holds the run open


def process_tag(pid: int | None = None) -> str:
    import socket

    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def _start_time(pid: int) -> str:
    """When `pid` started, in clock ticks since boot (Linux): a pid reused by another process has another."""
    try:
        return proc_stat(pid)[19]
    except (OSError, IndexError):
        return ""


def process_gone(tag: str) -> bool:
    """True when the process a PROCESS_TAG names ran on this host and no longer exists; False when unknown."""
    import socket

    parts = tag.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or parts[0] != socket.gethostname():
        return False
    pid, started = int(parts[1]), parts[2]
    if not pid_alive(pid):
        return True
    return bool(started) and _start_time(pid) not in ("", started)  # the pid now names another process


def end_killed_runs_in_store(uri: str) -> list[str]:
    """end_killed_runs over every experiment of a store (`imgclf sync`); nothing when a SQLite store is absent."""
    uri = resolve_uri(uri)
    db = sqlite_file(uri)
    if db is not None and not Path(db).is_file():
        return []
    if db is not None:
        check_sqlite_store(db)  # MLflow would add its tables to any SQLite database
    if not answers(uri):  # at once, not after MLflow's minutes of retries, and in one line
        raise MissingInput(f"cannot reach the tracking server at {hide(uri)}; run imgclf sync again when it is back")
    client = MlflowClient(tracking_uri=uri)
    return [r for e in retry_locked(client.search_experiments) for r in end_killed_runs(uri, e.experiment_id)]


def end_killed_runs(uri: str, experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of an experiment whose process on this host is gone; returns their ids."""
    client = MlflowClient(tracking_uri=uri)
    ended = []
    running = retry_locked(client.search_runs, [experiment_id], "attributes.status = 'RUNNING'", max_results=500)
    for run in running:
        tag = run.data.tags.get(PROCESS_TAG)
        if tag and process_gone(tag):
            retry_locked(client.set_tag, run.info.run_id, "imgclf.ended", "process killed; found by a later start")
            retry_locked(client.set_terminated, run.info.run_id, "KILLED")
            log.warning("run %s was left RUNNING by a process that is gone (killed); marked KILLED", run.info.run_id)
            ended.append(run.info.run_id)
    return ended
