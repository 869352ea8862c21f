"""The only module that talks to MLflow: runs, params, metrics, tags and artifacts."""

from __future__ import annotations

import logging
import os
import random
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.tracking import MlflowClient

from imgclf import serving
from imgclf.credentials import USERINFO, take_uri_credentials
from imgclf.errors import BadInput, MissingInput
from imgclf.outbox import Outbox, default_root

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit
LOCK_RETRIES = 12  # ~30 s of backoff: parallel jobs each hold SQLite's write lock for milliseconds
MAX_PARAM_LENGTH = 6000
SECRET_KEY = re.compile(r"(password|passwd|secret|token|api_key|apikey|credential)", re.IGNORECASE)
URL_USERINFO = USERINFO


def redact(key: str, value: Any) -> Any:
    """Hide secrets: values of secret-looking keys, and user:password@ parts of URLs."""
    if value is None:
        return value
    if SECRET_KEY.search(key):
        return "***"
    if isinstance(value, str):
        return URL_USERINFO.sub(r"\g<scheme>***@", value)
    return value


def redact_overrides(overrides: list[str]) -> str:
    """Hydra overrides as one string, with secret values hidden."""
    parts = (o.split("=", 1) for o in overrides)
    return " ".join(f"{p[0]}={redact(p[0], p[1])}" if len(p) == 2 else p[0] for p in parts)


def redacted(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a nested config with secrets hidden (for artifacts, checkpoints and logs)."""
    return {k: redacted(v) if isinstance(v, Mapping) else redact(k, v) for k, v in cfg.items()}


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b.c": value}; lists become their string form."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


SQLITE = "sqlite:///"


def _sqlite_path(uri: str) -> str | None:
    """The database file of a `sqlite:///` URI (query string dropped); None for other stores."""
    return uri[len(SQLITE) :].split("?", 1)[0] if uri.startswith(SQLITE) else None


def resolve_uri(uri: str) -> str:
    """A relative `sqlite:///file.db` taken from the DVC project root when DVC runs us (DVC_ROOT): queued
    experiments run in a temporary copy of the project, and their runs belong in the project's store. An http(s)
    URI's user:password move into MLflow's variables (credentials.py), out of every message that quotes a URL."""
    uri = take_uri_credentials(uri)
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/") and os.environ.get("DVC_ROOT"):
        return SQLITE + str(Path(os.environ["DVC_ROOT"]) / uri[len(SQLITE) :])
    return uri


def _artifact_root(uri: str, experiment: str) -> str | None:
    """Artifacts beside a SQLite store, not under whatever directory the first run happened to start in."""
    db = _sqlite_path(uri)
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


FIRST_CONTACT_S = 20.0  # a server never reached in this process: a mistyped URI fails in seconds, in one line
REACHED_ENV = "IMGCLF_TRACKING_REACHED"  # set by a sweep once its parent run is on the server, for every job
_reached: set[str] = set()


def wait_for_server(uri: str) -> None:
    """Return once an http(s) tracking server answers. One this process reached before (a sweep's later jobs)
    gets `tracking.outage_wait_s` to come back; a new one FIRST_CONTACT_S, then a one-line error."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    reached = uri in _reached or os.environ.get(REACHED_ENV) == uri
    deadline = time.monotonic() + (float(OPTIONS["outage_wait_s"]) if reached else FIRST_CONTACT_S)
    while True:
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).close()
            break
        except urllib.error.HTTPError:  # it answered (an auth proxy may refuse /health): it is there
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                reason = getattr(exc, "reason", exc)
                raise MissingInput(
                    f"cannot reach the tracking server at {uri} ({reason}); start it (make mlflow-server) "
                    "or set tracking.uri"
                ) from None
            time.sleep(1.0)
    _reached.add(uri)


_initialised: set[str] = set()


def init_store(uri: str) -> None:
    """Create a new SQLite store's tables once, whatever the number of processes starting on it together: MLflow
    migrates a new database without a lock, and a second process migrating it too dies on a duplicate column. An
    exclusive flock on the database file itself (SQLite's own locks are fcntl byte ranges, unaffected) makes the
    others wait until the first has finished, then find the tables made."""
    import fcntl

    db = _sqlite_path(uri)
    if db in (None, "", ":memory:") or uri in _initialised:
        return
    if Path(db).is_file() and Path(db).stat().st_size > 0:
        check_sqlite_store(db)  # MLflow would migrate (rewrite) any SQLite database it is pointed at
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    with open(db, "ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            retry_locked(MlflowClient(tracking_uri=uri).search_experiments, max_results=1)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    _initialised.add(uri)


def check_sqlite_store(db: str) -> None:
    """BadInput unless `db` is an SQLite database holding MLflow's tables (read-only look: nothing is changed)."""
    import sqlite3

    try:
        with open(db, "rb") as f:
            magic = f.read(16)
    except OSError as exc:
        raise BadInput(f"tracking store {db}: {exc.strerror or exc}") from None
    if magic != b"SQLite format 3\x00":
        raise BadInput(f"{db} is not an SQLite database; give an MLflow store, e.g. sqlite:///mlflow.db")
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise BadInput(f"{db} is not a readable SQLite database ({exc})") from None
    if tables and not {"experiments", "runs", "alembic_version"} <= tables:
        raise BadInput(f"{db} is an SQLite database of something else, not an MLflow store; it is left as it is")


def configure(uri: str, experiment: str | None = None) -> None:
    """Point MLflow at `uri` (and select `experiment`, creating it beside the store if needed)."""
    uri = resolve_uri(uri)
    wait_for_server(uri)
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
        retry_locked(mlflow.set_experiment, experiment)


# --- the active run: everything logged goes through its outbox (outbox.py), so an absent server stalls nothing ---

OPTIONS: dict[str, Any] = {"outbox": None, "outage_wait_s": 1800.0}
_active: Outbox | None = None
_active_run_id: str | None = None
# MLflow's error codes for a request the server understood and refused: sending it again cannot help
REFUSED = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST"}


def use(options: Mapping[str, Any]) -> None:
    """Take `tracking.outbox` (null: ~/.cache/imgclf/outbox) and `tracking.outage_wait_s` from the config."""
    for key in OPTIONS:
        if options.get(key) is not None:
            OPTIONS[key] = options[key]


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
            upload = client.log_artifacts if path.is_dir() else client.log_artifact
            upload(run_id, str(path), record["artifact_path"])
        elif op == "status":
            client.set_terminated(run_id, record["status"], end_time=record["end_time"])
        else:
            raise FileNotFoundError(f"unknown outbox record {op!r}")  # refused: dropped with a warning

    return send


def open_outbox(uri: str, run_id: str, directory: Path | None = None) -> Outbox:
    """An outbox delivering to `run_id` on `uri` (a new one, or the journal left in `directory`)."""
    stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    directory = directory or outbox_root() / run_id / stamp
    meta = {"run_id": run_id, "uri": redact("uri", uri)} if not (directory / "meta.json").is_file() else None
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

    from imgclf.outbox import leftover

    results = []
    for directory in leftover(Path(root)):
        meta = json.loads((directory / "meta.json").read_text())
        target = uri or meta["uri"]
        if "***@" in target:  # credentials are never written down: take them from the environment
            target = os.environ.get("MLFLOW_TRACKING_URI") or target
        box = open_outbox(target, meta["run_id"], directory)
        results.append((meta["run_id"], 0 if box.close(wait_s) else box.pending))
    return results


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


# --- runs whose process was killed (SIGKILL, the OOM killer, a lost node) stay RUNNING: found and ended here ---

PROCESS_TAG = "imgclf.process"  # host:pid:start time of the process that holds the run open


def process_tag(pid: int | None = None) -> str:
    import socket

    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def _start_time(pid: int) -> str:
    """When `pid` started, in clock ticks since boot (Linux): a pid reused by another process has another."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_gone(tag: str) -> bool:
    """True when the process a PROCESS_TAG names ran on this host and no longer exists; False when unknown."""
    import socket

    parts = tag.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or parts[0] != socket.gethostname():
        return False
    pid, started = int(parts[1]), parts[2]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return bool(started) and _start_time(pid) not in ("", started)


def end_killed_runs_in_store(uri: str) -> list[str]:
    """end_killed_runs over every experiment of a store (`imgclf sync`); nothing when a SQLite store is absent."""
    uri = resolve_uri(uri)
    db = _sqlite_path(uri)
    if db not in (None, "", ":memory:") and not Path(db).is_file():
        return []
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

    A new run with `parent_id` (a sweep's parent run, imgclf.sweeps) is its child in the MLflow UI. What is logged
    inside goes through an outbox: the block never waits for the server, and at its end the run waits up to
    `tracking.outage_wait_s` for the server to take everything.
    """
    global _active, _active_run_id
    configure(uri, None if run_id else experiment)
    uri = resolve_uri(uri)
    tags = dict(tags or {})
    if run_id is None and parent_id:
        tags["mlflow.parentRunId"] = parent_id
    run_id = _open_run(uri, experiment, run_id, run_name, tags)
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
        box.put({"op": "batch", "metrics": [[k, float(v), now, step or 0] for k, v in metrics.items()]})
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


def log_text(text: str, artifact_file: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        path.write_text(text)
        _box().put_file(path, str(Path(artifact_file).parent) if Path(artifact_file).parent != Path(".") else None)


def log_artifacts(directory: str | Path, artifact_path: str | None = None) -> None:
    """Upload the contents of `directory` under `artifact_path`."""
    _box().put_file(Path(directory), artifact_path)


def _served_model_class():
    """The pyfunc class, defined on first use: importing mlflow.pyfunc (and defining a PythonModel) makes MLflow
    warn about type hints, which every stage would print otherwise; the signature is given explicitly instead."""
    import mlflow.pyfunc

    class OnnxImageClassifier(mlflow.pyfunc.PythonModel):
        """The exported ONNX network as an MLflow model: RGB uint8 images (N, S, S, 3) in, class probabilities out."""

        def load_context(self, context) -> None:
            import onnxruntime as ort

            self.session = ort.InferenceSession(context.artifacts["onnx"], providers=["CPUExecutionProvider"])
            self.spec = serving.ServingSpec.read(Path(context.artifacts["onnx"]).parent)

        def predict(self, context, model_input, params=None):
            import numpy as np
            import pandas as pd

            x = self.spec.normalize_images(np.asarray(model_input, dtype=np.uint8))
            probs = serving.softmax(self.session.run(["logits"], {"images": x})[0])
            table = pd.DataFrame(probs, columns=self.spec.class_names)
            table["label"] = [self.spec.class_names[i] for i in probs.argmax(1)]
            return table

    return OnnxImageClassifier


def log_served_model(export_dir: str | Path, examples, registered_name: str | None, name: str = "model") -> str:
    """Log the ONNX export as a pyfunc model (signature, input example) and register it; returns its URI."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    export_dir = Path(export_dir)
    labels = serving.ServingSpec.read(export_dir).class_names
    size = examples.shape[1]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, size, size, 3))]),  # one unnamed tensor: {"inputs": [...]}
        outputs=Schema([ColSpec("double", c) for c in labels] + [ColSpec("string", "label")]),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")
        model = _served_model_class()()
    import cloudpickle

    # serving.py travels inside the pickled class, so the served model needs no imgclf (numpy, pandas, onnxruntime)
    cloudpickle.register_pickle_by_value(serving)
    mlflow.start_run(run_id=_active_run_id)  # log_model logs into the fluent API's active run
    try:
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=model,
            signature=signature,
            input_example=examples,
            artifacts={
                "onnx": str(export_dir / "model.onnx"),
                "labels": str(export_dir / serving.LABELS_FILE),
                "preprocessing": str(export_dir / serving.PREPROCESSING_FILE),
            },
            pip_requirements=["onnxruntime", "numpy", "pandas"],
            registered_model_name=registered_name or None,
        )
    finally:
        cloudpickle.unregister_pickle_by_value(serving)
        mlflow.end_run()  # the run's own end (its final status) follows through the outbox
    return info.model_uri


# --- queries for imgclf runs ---

SEARCH_PAGE_SIZE = 1000  # MLflow's default page; search_runs follows page tokens past it


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """MLflow's query errors as ValueError with their first line, so the CLI can print them as one line."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        raise BadInput(str(exc.message).splitlines()[0]) from exc


def _query_client(uri: str) -> MlflowClient:
    """A client for an existing store: MLflow would create an empty database at a mistyped sqlite path."""
    uri = resolve_uri(uri)
    path = _sqlite_path(uri)
    if path not in (None, "", ":memory:"):
        if not Path(path).is_file():
            raise MissingInput(f"no MLflow database at {path} (tracking URI {uri})")
        check_sqlite_store(path)
    return MlflowClient(tracking_uri=uri)


def experiment_names(uri: str) -> list[str]:
    """Names of the store's active experiments, sorted."""
    with _one_line_errors():
        return sorted(e.name for e in _query_client(uri).search_experiments())


def search_runs(uri: str, experiment: str, filter_string: str = "") -> list[dict[str, Any]]:
    """Every active run of `experiment` matching an MLflow `filter_string`, as plain dicts."""
    client = _query_client(uri)
    with _one_line_errors():
        exp = client.get_experiment_by_name(experiment)
        if exp is None or exp.lifecycle_stage != "active":
            names = ", ".join(experiment_names(uri)) or "none"
            raise BadInput(f"no experiment '{experiment}' in {uri}; experiments: {names}")
        runs, token = [], None
        while True:
            page = client.search_runs(
                [exp.experiment_id], filter_string, max_results=SEARCH_PAGE_SIZE, page_token=token
            )
            runs.extend(page)
            token = page.token
            if not token:
                break
    return [
        {
            "id": r.info.run_id,
            "name": r.info.run_name or "",
            "status": r.info.status,
            "start_time": r.info.start_time,
            "params": dict(r.data.params),
            "metrics": dict(r.data.metrics),
            "tags": dict(r.data.tags),
            "artifact_uri": r.info.artifact_uri,
        }
        for r in runs
    ]


def list_artifact_paths(uri: str, run_id: str, path: str | None = None) -> list[str]:
    """Paths of a run's artifacts directly under `path`; MLflow 3 also resolves logged models ("model")."""
    with _one_line_errors():
        return [a.path for a in _query_client(uri).list_artifacts(run_id, path)]


def run_record(uri: str, run_id: str) -> dict[str, Any]:
    """A run's name, params, latest metrics and tags, as plain dicts."""
    with _one_line_errors():
        run = _query_client(uri).get_run(run_id)
    return {
        "name": run.info.run_name or "",
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
        "tags": dict(run.data.tags),
    }


def artifact_text(uri: str, run_id: str, path: str) -> str:
    """The text of one artifact of a run (e.g. train/config.yaml)."""
    import mlflow.artifacts

    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # a bar on stderr around a one-line error
    with _one_line_errors():
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, tracking_uri=resolve_uri(uri))
    return Path(local).read_text()


def set_run_tags(uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    """Tags on a finished run (not the active one)."""
    client = MlflowClient(tracking_uri=resolve_uri(uri))
    for key, value in tags.items():
        retry_locked(client.set_tag, run_id, key, str(value))


def artifact_file(uri: str, run_id: str, path: str, dest: Path) -> Path | None:
    """One artifact of a run downloaded under `dest` (None when the run has no such artifact)."""
    import mlflow.artifacts

    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, dst_path=str(dest), tracking_uri=resolve_uri(uri)
        )
    except Exception as exc:  # noqa: BLE001 - missing artifact, store without it: the page shows it as absent
        log.info("no artifact %s in run %s: %s", path, run_id, str(exc).splitlines()[0] if str(exc) else exc)
        return None
    return Path(local)


def download_model(uri: str, model_uri: str, dest: Path) -> tuple[Path, str | None]:
    """A registered model (`models:/name/version`) downloaded under `dest`; returns its directory and run id."""
    import mlflow.artifacts

    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    client = _query_client(uri)
    name, _, version = model_uri[len("models:/") :].partition("/")
    with _one_line_errors():
        run_id = client.get_model_version(name, version).run_id if version.isdigit() else None
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=model_uri, dst_path=str(dest), tracking_uri=resolve_uri(uri)
        )
    return Path(local), run_id


def served_models(uri: str, experiment: str, limit: int = 20) -> dict[str, list[dict[str, Any]]]:
    """What a model picker lists: registered model versions, and recent runs whose export is on this disk."""
    client = _query_client(uri)
    with _one_line_errors():
        versions = client.search_model_versions(max_results=limit)
    registered = [{"ref": f"models:/{v.name}/{v.version}", "run_id": v.run_id} for v in versions]
    runs = []
    try:
        found = search_runs(uri, experiment, "tags.`imgclf.export_dir` != ''")
    except BadInput:
        found = []
    for r in sorted(found, key=lambda r: -(r["start_time"] or 0))[:limit]:
        if Path(r["tags"]["imgclf.export_dir"]).is_dir():
            runs.append({"ref": r["id"], "name": r["name"], "test/acc": r["metrics"].get("test/acc")})
    return {"registered": registered, "runs": runs}


def run_link(uri: str, run_id: str) -> str:
    """Where a person sees the run: the server's page, or the `mlflow ui` command for a local store."""
    uri = resolve_uri(uri)
    if uri.startswith(("http://", "https://")):
        with _one_line_errors():
            experiment_id = _query_client(uri).get_run(run_id).info.experiment_id
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"mlflow ui --backend-store-uri {uri}  (run {run_id})"
