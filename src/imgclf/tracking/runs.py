"""The active run: everything logged goes through its outbox, so an absent server stalls nothing; sweeps' parent
runs; the train stage's run reopened by the stages after it (run.json)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from imgclf.errors import MissingInput
from imgclf.tracking.artifacts import local_artifact_dir, place_locally, share
from imgclf.tracking.outbox import Outbox, default_root
from imgclf.tracking.processes import PROCESS_TAG, end_killed_runs, process_tag
from imgclf.tracking.redaction import MAX_PARAM_LENGTH, flatten, redact
from imgclf.tracking.store import (
    OPTIONS,
    absolute_uri,
    answers,
    check_sqlite_store,
    configure,
    resolve_uri,
    retry_locked,
    sqlite_file,
    through_outage,
)

log = logging.getLogger(__name__)


MAX_PARAMS_PER_BATCH, MAX_METRICS_PER_BATCH = 100, 1000  # MLflow's log_batch limits: past them it refuses the batch
# what MLflow refuses in a metric name (and then the whole batch: test/acc with a class named `a,b`): each becomes _
NOT_IN_A_NAME = re.compile(r"[^/\w.\- :]")
_active: Outbox | None = None
_active_run_id: str | None = None


def metric_name(key: str) -> str:
    """`key` as MLflow takes a metric's name: each character it refuses becomes _, and the name then ends in 6 hex
    digits of the key's hash, so two classes such as `a,b` and `a;b` (or `a_b`) keep a metric each."""
    name = NOT_IN_A_NAME.sub("_", key)
    return name if name == key else f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:6]}"


def active_run_id() -> str | None:
    """The run `run()` has open in this process (the MLflow model logs into it)."""
    return _active_run_id


# MLflow's error codes for a request the server understood and refused: sending it again cannot help
REFUSED = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST"}


def outbox_root() -> Path:
    return Path(OPTIONS["outbox"]).expanduser() if OPTIONS["outbox"] else default_root()


def _refused(exc: Exception) -> bool:
    """True for errors that a retry cannot fix; a lost connection, a 5xx or a locked SQLite store are retried."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, FileNotFoundError):
        return True
    if isinstance(exc, MlflowException) and "database is locked" not in str(exc):
        return exc.error_code in REFUSED
    return False


def _sender(client: MlflowClient, run_id: str) -> Callable[[dict[str, Any], Path], None]:
    """Deliver one outbox record to `run_id`."""
    from mlflow.entities import Metric, Param, RunTag

    @functools.cache
    def artifact_dir() -> Path | None:  # asked once: where the run's artifacts live, when it is on this disk
        return local_artifact_dir(client.get_run(run_id).info.artifact_uri)

    def send(record: dict[str, Any], directory: Path) -> None:
        op = record["op"]
        if op == "batch":
            client.log_batch(
                run_id,
                metrics=[Metric(k, v, ts, step) for k, v, ts, step in record.get("metrics", [])],
                params=[Param(k, v) for k, v in record.get("params", {}).items()],
                tags=[RunTag(k, v) for k, v in record.get("tags", {}).items()],
            )
        elif op == "artifact":
            path = directory / record["file"]
            if artifact_dir():  # on this disk: models linked, not copied again
                place_locally(artifact_dir(), path, record["artifact_path"])
            else:
                upload = client.log_artifacts if path.is_dir() else client.log_artifact
                upload(run_id, str(path), record["artifact_path"])
        elif op == "share":  # only where the run's artifacts are on this disk; elsewhere nothing to share
            if artifact_dir():
                share(artifact_dir(), record["files"])
        elif op == "status":
            client.set_terminated(run_id, record["status"], end_time=record["end_time"])
        else:
            raise FileNotFoundError(f"unknown outbox record {op!r}")  # refused: dropped with a warning

    return send


def open_outbox(uri: str, run_id: str, directory: Path | None = None) -> Outbox:
    """An outbox delivering to `run_id` on `uri` (a new one, or the journal left in `directory`)."""
    stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    directory = directory or outbox_root() / run_id / stamp
    meta = (
        {"run_id": run_id, "uri": redact("uri", absolute_uri(uri))} if not (directory / "meta.json").is_file() else None
    )
    return Outbox(directory, _sender(MlflowClient(tracking_uri=uri), run_id), permanent=_refused, meta=meta)


def close_outbox(box: Outbox, run_id: str, wait_s: float) -> bool:
    """Wait for `box` to be delivered; warn, with the command that finishes the job, when the server stays away."""
    if box.close(wait_s):
        return True
    log.warning(
        "tracking server still unreachable after %.0f s: %d records of run %s kept in %s; "
        "`imgclf sync` sends them when it is back",
        wait_s,
        box.pending,
        run_id,
        box.dir,
    )
    return False


def sync_outboxes(root: Path, uri: str | None, wait_s: float) -> list[tuple[str, int]]:
    """Deliver every outbox left under `root` (oldest first): [(run id, records still waiting)]."""
    import json

    from imgclf.tracking.outbox import leftover, waiting

    results = []
    for directory in leftover(Path(root)):
        meta = json.loads((directory / "meta.json").read_text())
        target = uri or meta["uri"]
        if "***@" in target:  # credentials are never written down: take them from the environment
            target = os.environ.get("MLFLOW_TRACKING_URI") or target
        target = resolve_uri(target)  # a user:password in it moves into MLflow's variables, as for a run
        absent = _not_in(target, meta["run_id"])
        if absent:  # sent there, every record would be refused and dropped: they stay for the right store
            left = waiting(directory)
            if left:
                log.warning(
                    "%s; its %d records stay in %s (imgclf sync --uri STORE sends them)", absent, left, directory
                )
            else:  # the store took every record before the run's process died: nothing to keep
                shutil.rmtree(directory, ignore_errors=True)
            results.append((meta["run_id"], left))
            continue
        box = open_outbox(target, meta["run_id"], directory)
        results.append((meta["run_id"], 0 if box.close(wait_s) else box.pending))
    return results


def _not_in(uri: str, run_id: str) -> str | None:
    """Why the store at `uri` cannot take `run_id`'s records: it is not there (MLflow would create an empty
    SQLite store), or it does not hold the run. None when it can, or when a server is away (the records wait)."""
    from mlflow.exceptions import MlflowException

    db = sqlite_file(uri)
    if db is not None and not Path(db).is_file():
        return f"run {run_id}: no tracking store at {db}"
    if db is not None:
        check_sqlite_store(db)  # MLflow would add its tables to any SQLite database: BadInput, before it does
    if not answers(uri):
        return None
    try:
        MlflowClient(tracking_uri=uri).get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return f"run {run_id} is not in the store at {redact('uri', uri)}"
    return None


def _open_run(uri: str, experiment: str | None, run_id: str | None, run_name: str | None, tags: dict) -> str:
    """Create a run (MLflow's context tags: user, source, git) or reopen `run_id` as RUNNING; returns its id. Either
    way the run is tagged with this process (imgclf.process), so a later start can tell it was killed."""
    from mlflow.tracking.context.registry import resolve_tags

    client = MlflowClient(tracking_uri=uri)
    tags = {**tags, PROCESS_TAG: process_tag()}
    if run_id is not None:
        retry_locked(client.update_run, run_id, status="RUNNING")
        retry_locked(client.log_batch, run_id, tags=_run_tags(tags))
        return run_id
    exp = retry_locked(client.get_experiment_by_name, experiment or "Default")
    end_killed_runs(uri, exp.experiment_id)
    run = retry_locked(client.create_run, exp.experiment_id, run_name=run_name, tags=resolve_tags(tags))
    return run.info.run_id


def _run_tags(tags: Mapping[str, Any]) -> list:
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)) for k, v in tags.items()]


@contextmanager
def run(
    uri: str,
    experiment: str | None = None,
    *,
    run_id: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    parent_id: str | None = None,
) -> Iterator[str]:
    """Start (or, with `run_id`, reopen) a run; it ends FINISHED, KILLED on interrupt, FAILED on error.

    A new run with `parent_id` (a sweep's parent run, imgclf.tracking.sweeps) is its child in the MLflow UI. What is
    logged inside goes through an outbox: the block never waits for the server, and at its end the run waits up to
    `tracking.outage_wait_s` for the server to take everything.
    """
    global _active, _active_run_id
    tags = dict(tags or {})
    if run_id is None and parent_id:
        tags["mlflow.parentRunId"] = parent_id

    uri, reopened = resolve_uri(uri), run_id

    def opened() -> str:
        configure(uri, None if reopened else experiment)
        return _open_run(uri, experiment, reopened, run_name, tags)

    run_id = through_outage(uri, opened)  # a server gone between its check and the run's requests: waited out
    outer = (_active, _active_run_id)
    _active, _active_run_id = open_outbox(uri, run_id), run_id
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        box = _active
        _active, _active_run_id = outer
        box.put({"op": "status", "status": status, "end_time": int(time.time() * 1000)})
        close_outbox(box, run_id, float(OPTIONS["outage_wait_s"]))


def _box() -> Outbox:
    if _active is None:
        raise RuntimeError("no active imgclf run: log inside `with tracking.run(...)`")
    return _active


def start_parent_run(uri: str, experiment: str, name: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> str:
    """Create a sweep's parent run (not the active run: jobs may run in this very process) and return its id."""
    configure(uri, experiment)
    client = MlflowClient(tracking_uri=resolve_uri(uri))
    exp = retry_locked(client.get_experiment_by_name, experiment)
    run = retry_locked(client.create_run, exp.experiment_id, run_name=name, tags={**tags, PROCESS_TAG: process_tag()})
    for key, value in params.items():
        retry_locked(client.log_param, run.info.run_id, key, str(redact(key, value))[:MAX_PARAM_LENGTH])
    return run.info.run_id


def delete_run(uri: str, run_id: str) -> None:
    """Delete a run (a parent run another worker of the same study made first)."""
    retry_locked(MlflowClient(tracking_uri=resolve_uri(uri)).delete_run, run_id)


def finish_parent_run(
    uri: str,
    run_id: str,
    status: str,
    *,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    artifacts: Sequence[Path] = (),
) -> None:
    """Log a sweep's outcome (best trial, counts, search results) on its parent run and end it, through an outbox
    like any run's records (the server may be away when a long sweep ends)."""
    box = open_outbox(resolve_uri(uri), run_id)
    _put_batch(box, metrics=metrics, tags=tags, params=params)
    for path in artifacts:
        box.put_file(Path(path), "sweep")
    box.put({"op": "status", "status": status, "end_time": int(time.time() * 1000)})
    close_outbox(box, run_id, float(OPTIONS["outage_wait_s"]))


def _put_batch(
    box: Outbox,
    *,
    metrics: Mapping[str, float] | None = None,
    step: int | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> None:
    """Metrics, params and tags as outbox batches within MLflow's log_batch limits (100 params, 100 tags)."""
    if metrics:
        now = int(time.time() * 1000)
        rows = [[metric_name(k), float(v), now, step or 0] for k, v in metrics.items()]
        for i in range(0, len(rows), MAX_METRICS_PER_BATCH):
            box.put({"op": "batch", "metrics": rows[i : i + MAX_METRICS_PER_BATCH]})
    for field, values in (("params", params), ("tags", tags)):
        items = list((values or {}).items())
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            chunk = {k: str(redact(k, v))[:MAX_PARAM_LENGTH] for k, v in items[i : i + MAX_PARAMS_PER_BATCH]}
            box.put({"op": "batch", field: chunk})


def log_config(cfg: Mapping[str, Any]) -> None:
    """Log a resolved config as params with dotted keys, secrets redacted."""
    _put_batch(_box(), params=flatten(cfg))


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    _put_batch(_box(), metrics=metrics, step=step)


def set_tags(tags: Mapping[str, Any]) -> None:
    _put_batch(_box(), tags={k: str(v) for k, v in tags.items()})


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Upload a file as it is now (it may be replaced or deleted before the server takes it)."""
    _box().put_file(Path(path), artifact_path)


def share_artifacts(files: Mapping[str, Path]) -> None:
    """The run's logged copies of these workspace files (artifact path -> file) become links to them, where the
    store is on this disk and the bytes are the same (imgclf.tracking.artifacts.share)."""
    _box().put({"op": "share", "files": {rel: str(Path(path).resolve()) for rel, path in files.items()}})


def log_text(text: str, artifact_file: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        path.write_text(text)
        _box().put_file(path, str(Path(artifact_file).parent) if Path(artifact_file).parent != Path(".") else None)


def log_artifacts(directory: str | Path, artifact_path: str | None = None) -> None:
    """Upload the contents of `directory` under `artifact_path`."""
    _box().put_file(Path(directory), artifact_path)


def read_run_file(path: Path) -> dict:
    """models/run.json: the MLflow run of the last train stage, which evaluate, export and optimise log into."""
    if not path.is_file():
        raise MissingInput(f"{path} not found; run the train stage first (dvc repro train)")
    return json.loads(path.read_text())


@contextmanager
def reopen(run_file: Path, uri: str) -> Iterator[str]:
    """The MLflow run of the last train stage (models/run.json), for evaluate, export and optimise to log into."""
    with run(uri, run_id=read_run_file(run_file)["run_id"]) as run_id:
        yield run_id
