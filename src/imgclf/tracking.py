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

from . import serving
from .errors import BadInput, MissingInput

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit
LOCK_RETRIES = 12  # ~30 s of backoff: parallel jobs each hold SQLite's write lock for milliseconds
MAX_PARAM_LENGTH = 6000
SECRET_KEY = re.compile(r"(password|passwd|secret|token|api_key|apikey|credential)", re.IGNORECASE)
URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


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
    experiments run in a temporary copy of the project, and their runs belong in the project's store."""
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


def configure(uri: str, experiment: str | None = None) -> None:
    """Point MLflow at `uri` (and select `experiment`, creating it beside the store if needed)."""
    uri = resolve_uri(uri)
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

    A new run with `parent_id` (a sweep's parent run, imgclf.sweeps) is its child in the MLflow UI.
    """
    configure(uri, None if run_id else experiment)
    tags = dict(tags or {})
    if run_id is None and parent_id:
        tags["mlflow.parentRunId"] = parent_id
    active = retry_locked(mlflow.start_run, run_id=run_id, run_name=None if run_id else run_name, tags=tags)
    try:
        yield active.info.run_id
    except KeyboardInterrupt:
        _end_run(active.info.run_id, "KILLED")
        raise
    except BaseException:
        _end_run(active.info.run_id, "FAILED")
        raise
    _end_run(active.info.run_id, "FINISHED")


def _end_run(run_id: str, status: str) -> None:
    """End the active run; MLflow pops it before writing the status, so a locked store is retried by id."""
    try:
        mlflow.end_run(status=status)
    except Exception as exc:
        if "database is locked" not in str(exc):
            raise
        retry_locked(MlflowClient(tracking_uri=mlflow.get_tracking_uri()).set_terminated, run_id, status)


def start_parent_run(uri: str, experiment: str, name: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> str:
    """Create a sweep's parent run (not the active run: jobs may run in this very process) and return its id."""
    configure(uri, experiment)
    client = MlflowClient(tracking_uri=resolve_uri(uri))
    exp = retry_locked(client.get_experiment_by_name, experiment)
    run = retry_locked(client.create_run, exp.experiment_id, run_name=name, tags=dict(tags))
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
    """Log a sweep's outcome (best trial, counts, search results) on its parent run and end it."""
    client = MlflowClient(tracking_uri=resolve_uri(uri))
    for key, value in (metrics or {}).items():
        retry_locked(client.log_metric, run_id, key, float(value))
    for key, value in (tags or {}).items():
        retry_locked(client.set_tag, run_id, key, str(value))
    for key, value in (params or {}).items():
        retry_locked(client.log_param, run_id, key, str(redact(key, value))[:MAX_PARAM_LENGTH])
    for path in artifacts:
        client.log_artifact(run_id, str(path), "sweep")
    retry_locked(client.set_terminated, run_id, status)


def log_config(cfg: Mapping[str, Any]) -> None:
    """Log a resolved config as params with dotted keys, secrets redacted."""
    params = {k: str(redact(k, v))[:MAX_PARAM_LENGTH] for k, v in flatten(cfg).items()}
    items = list(params.items())
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        retry_locked(mlflow.log_params, dict(items[i : i + MAX_PARAMS_PER_BATCH]))


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    retry_locked(mlflow.log_metrics, {k: float(v) for k, v in metrics.items()}, step=step)


def set_tags(tags: Mapping[str, Any]) -> None:
    retry_locked(mlflow.set_tags, {k: str(v) for k, v in tags.items()})


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_text(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


def log_artifacts(directory: str | Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifacts(str(directory), artifact_path=artifact_path)


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


def log_served_model(export_dir: str | Path, examples, registered_name: str | None) -> str:
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
    try:
        info = mlflow.pyfunc.log_model(
            name="model",
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
    if path not in (None, "", ":memory:") and not Path(path).is_file():
        raise MissingInput(f"no MLflow database at {path} (tracking URI {uri})")
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
