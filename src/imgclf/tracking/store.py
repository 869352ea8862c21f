"""The MLflow store: its URI, a new SQLite store created once under a lock, a server waited for, retries while
SQLite is locked, and the settings a run takes from the config."""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.tracking import MlflowClient

from imgclf.credentials import SQLITE_URI, hide, sqlite_path, store_scheme, take_uri_credentials, unknown_store
from imgclf.errors import BadInput, MissingInput, first_line
from imgclf.targets import sqlite_tables

log = logging.getLogger(__name__)


T = TypeVar("T")
LOCK_RETRIES = 12  # ~30 s of backoff: parallel jobs each hold SQLite's write lock for milliseconds


SQLITE = "sqlite:///"


def sqlite_file(uri: str) -> str | None:
    """The database file of a SQLite store kept on disk; None for other stores and an in-memory one."""
    db = sqlite_path(uri)
    return None if db in (None, "", ":memory:") else db


def absolute_uri(uri: str) -> str:
    """A relative `sqlite:///file.db` made absolute from the working directory: what is written down for later (an
    outbox's target) must not change meaning with the directory a later command runs in."""
    db = sqlite_file(uri)
    if db is None or Path(db).is_absolute():
        return uri
    return SQLITE + str(Path(db).resolve()) + uri[len(SQLITE) + len(db) :]


def resolve_uri(uri: str) -> str:
    """A relative `sqlite:///file.db` taken from the DVC project root when DVC runs us (DVC_ROOT), `~` expanded: queued
    experiments run in a temporary copy of the project, and their runs belong in the project's store. An http(s)
    URI's user:password move into MLflow's variables (credentials.py), out of every message that quotes a URL."""
    uri = take_uri_credentials(uri)
    found = SQLITE_URI.match(uri)
    if found and uri[found.end() :].startswith("~"):  # MLflow would make a folder named ~ where it runs
        uri = uri[: found.end()] + os.path.expanduser(uri[found.end() :])
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/") and os.environ.get("DVC_ROOT"):
        return SQLITE + str(Path(os.environ["DVC_ROOT"]) / uri[len(SQLITE) :])
    return uri


def _artifact_root(uri: str, experiment: str) -> str | None:
    """Artifacts beside a SQLite store, not under whatever directory the first run happened to start in."""
    db = sqlite_path(uri)
    if db is None:
        return None
    return str(Path(db).resolve().parent / "mlruns" / re.sub(r"[^\w.-]", "_", experiment))


def retry_locked(fn: Callable[..., T], *args, **kwargs) -> T:
    """Call `fn`, retrying while SQLite says "database is locked" (parallel jobs writing one store)."""
    delay = 0.1
    for attempt in range(LOCK_RETRIES):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # MLflow wraps SQLAlchemy's OperationalError in its own exceptions
            if "database is locked" not in str(exc) or attempt == LOCK_RETRIES - 1:
                raise
            log.info("MLflow store is locked by another job; retrying in %.1f s", delay)
            time.sleep(delay + random.uniform(0, delay))
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


# tracking.outbox (null: ~/.cache/imgclf/outbox) and tracking.outage_wait_s, from the config (use)
OPTIONS: dict[str, Any] = {"outbox": None, "outage_wait_s": 1800.0}


def use(outbox: str | None = None, outage_wait_s: float | None = None, *, store: str | None = None) -> None:
    """Take `tracking.outbox` (null: ~/.cache/imgclf/outbox) and `tracking.outage_wait_s` from the config; `store`
    (tracking.uri), when a database, is asked once now (require_database): train, before it builds its network."""
    for key, value in (("outbox", outbox), ("outage_wait_s", outage_wait_s)):
        if value is not None:
            OPTIONS[key] = value
    if store is not None:
        require_database(resolve_uri(store), "set tracking.uri")


FIRST_CONTACT_S = 20.0  # a server never reached in this process: a mistyped URI fails in seconds, in one line
REACHED_ENV = "IMGCLF_TRACKING_REACHED"  # set by a sweep once its parent run is on the server, for every job


_reached: set[str] = set()


def wait_for_server(uri: str) -> None:
    """Return once an http(s) tracking server answers. One this process reached before (a sweep's later jobs)
    gets `tracking.outage_wait_s` to come back; a new one FIRST_CONTACT_S, then a one-line error."""
    if not uri.startswith(("http://", "https://")):
        return
    reached = uri in _reached or os.environ.get(REACHED_ENV) == uri
    deadline = time.monotonic() + (float(OPTIONS["outage_wait_s"]) if reached else FIRST_CONTACT_S)
    while (error := _unanswered(uri)) is not None:
        if time.monotonic() > deadline:
            raise MissingInput(
                f"cannot reach the tracking server at {uri} ({error}); start it (make mlflow-server) "
                "or set tracking.uri"
            )
        time.sleep(1.0)
    _reached.add(uri)


def through_outage(uri: str, step: Callable[[], T]) -> T:
    """`step` (requests to an http(s) server), tried again once the server is back where it failed because the
    server went away: a sweep's job that passed wait_for_server as an outage began waits it out as it would have
    before its first request, instead of failing its trial. An error the answering server gives is raised."""
    while True:
        try:
            return step()
        except MissingInput:  # wait_for_server's own: it stayed away past its wait (or was never reached)
            raise
        except Exception:
            if not uri.startswith(("http://", "https://")) or _unanswered(uri) is None:
                raise
            log.warning("the tracking server at %s went away; waiting for it to come back", hide(uri))
            wait_for_server(uri)  # MissingInput once it stays away past its wait


def _unanswered(uri: str) -> str | None:
    """Why the http(s) server at `uri` did not answer one request (None: it answered)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).close()
    except urllib.error.HTTPError:  # it answered (an auth proxy may refuse /health): it is there
        return None
    except OSError as exc:
        return str(getattr(exc, "reason", exc))
    return None


def require_server(uri: str) -> None:
    """For a command that asks a store once (`imgclf runs`, `reproduce`): an http(s) server that does not answer
    one request is one line now, not MLflow's retries for minutes."""
    if why := unknown_store(uri):
        raise BadInput(why)
    if uri.startswith(("http://", "https://")) and (error := _unanswered(uri)) is not None:
        raise MissingInput(f"cannot reach the tracking server at {uri} ({error}); start it or give another --uri")
    require_database(uri, "give another --uri")


DATABASES = ("postgresql", "mysql", "mssql")  # the SQLAlchemy stores MLflow takes besides SQLite


def require_database(uri: str, instead: str) -> None:
    """A database store (PostgreSQL, MySQL) that takes no connection now, within a 10 s connect timeout, is one line
    with its password hidden, not MLflow's SQLAlchemy retries for minutes. One this process or its sweep reached
    before is left to those retries, as a server that was there is waited for."""
    if store_scheme(uri) not in DATABASES or uri in _reached or os.environ.get(REACHED_ENV) == uri:
        return
    if (error := _database_unanswered(uri)) is not None:
        from sqlalchemy.engine import make_url

        shown = make_url(uri).render_as_string(hide_password=True)
        raise MissingInput(f"cannot reach the tracking database at {shown} ({error}); start it or {instead}")
    _reached.add(uri)


def _database_unanswered(uri: str) -> str | None:
    """Why the database at `uri` does not take a connection now (its first line), or None."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    timeout = {"connect_timeout": 10} if url.get_backend_name() in ("postgresql", "mysql") else {}
    try:
        engine = sqlalchemy.create_engine(url, connect_args=timeout)
        with engine.connect():
            pass
        engine.dispose()
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
        error = first_line(exc)
        return error.replace(url.password, "***") if url.password else error
    return None


def answers(uri: str) -> bool:
    """True when the store at `uri` can be asked now: a server that answers one request, a database that takes a
    connection, or any other store."""
    if store_scheme(uri) in DATABASES:
        return _database_unanswered(uri) is None
    return not uri.startswith(("http://", "https://")) or _unanswered(uri) is None


_initialised: set[str] = set()


def init_store(uri: str) -> None:
    """Create a new SQLite store's tables once, whatever the number of processes starting on it together: MLflow
    migrates a new database without a lock, and a second process migrating it too dies on a duplicate column. An
    exclusive flock on the database file itself (SQLite's own locks are fcntl byte ranges, unaffected) makes the
    others wait until the first has finished, then find the tables made."""
    import fcntl

    db = sqlite_path(uri)
    if db in (None, "", ":memory:") or uri in _initialised:
        return
    if Path(db).exists() and not Path(db).is_file():  # a pipe would block the open below for ever, a device be written
        raise BadInput(f"tracking store {db} is not a file (a folder, pipe or device); give an MLflow store file, e.g. "
                       "sqlite:///mlflow.db")  # fmt: skip
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    with open(db, "ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # first: a store another process is making has half its tables
        try:
            if Path(db).stat().st_size > 0:
                check_sqlite_store(db)  # MLflow would migrate (rewrite) any SQLite database it is pointed at
            retry_locked(MlflowClient(tracking_uri=uri).search_experiments, max_results=1)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    _initialised.add(uri)


def check_sqlite_store(db: str) -> None:
    """BadInput unless `db` is an SQLite database holding MLflow's tables (or none yet). A read-only look."""
    try:
        tables = sqlite_tables(db)
    except BadInput as exc:
        raise BadInput(f"{exc}; give an MLflow store, e.g. sqlite:///mlflow.db") from None
    if tables and not {"experiments", "runs", "alembic_version"} <= tables:
        raise BadInput(f"{db} is an SQLite database of something else, not an MLflow store; it is left as it is")


def configure(uri: str, experiment: str | None = None) -> None:
    """Point MLflow at `uri` (and select `experiment`, creating it beside the store if needed)."""
    uri = resolve_uri(uri)
    wait_for_server(uri)
    require_database(uri, "set tracking.uri")
    init_store(uri)
    mlflow.set_tracking_uri(uri)
    if experiment:
        client = MlflowClient(tracking_uri=uri)
        if retry_locked(client.get_experiment_by_name, experiment) is None:
            try:
                retry_locked(client.create_experiment, experiment, artifact_location=_artifact_root(uri, experiment))
            except Exception as exc:  # a parallel job created it first
                if "already exists" not in str(exc) and "UNIQUE constraint" not in str(exc):
                    raise
        found = retry_locked(client.get_experiment_by_name, experiment)
        if found is not None and found.lifecycle_stage == "deleted":  # MLflow's own error is a traceback
            raise BadInput(
                f"tracking.experiment={experiment} is deleted in {hide(uri)}: restore it (mlflow experiments restore "
                f"--experiment-id {found.experiment_id}) or give another name"
            )
        retry_locked(mlflow.set_experiment, experiment)
