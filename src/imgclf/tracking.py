"""The only module that talks to MLflow: runs, params, metrics, tags and artifacts."""
from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import mlflow
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit
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


def configure(uri: str, experiment: str | None = None) -> None:
    """Point MLflow at `uri` (and select `experiment`, creating it if needed)."""
    mlflow.set_tracking_uri(uri)
    if experiment:
        mlflow.set_experiment(experiment)


@contextmanager
def run(uri: str, experiment: str | None = None, run_id: str | None = None, run_name: str | None = None,
        tags: Mapping[str, str] | None = None) -> Iterator[str]:
    """Start (or, with `run_id`, reopen) a run; it ends FINISHED, KILLED on interrupt, FAILED on error."""
    configure(uri, None if run_id else experiment)
    active = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, tags=dict(tags or {}))
    try:
        yield active.info.run_id
    except KeyboardInterrupt:
        mlflow.end_run(status="KILLED")
        raise
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")


def log_config(cfg: Mapping[str, Any]) -> None:
    """Log a resolved config as params with dotted keys, secrets redacted."""
    params = {k: str(redact(k, v))[:MAX_PARAM_LENGTH] for k, v in flatten(cfg).items()}
    items = list(params.items())
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        mlflow.log_params(dict(items[i:i + MAX_PARAMS_PER_BATCH]))


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def set_tags(tags: Mapping[str, Any]) -> None:
    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_artifacts(directory: str | Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifacts(str(directory), artifact_path=artifact_path)


def get_run(uri: str, run_id: str):
    """The run's data and info, for checks and reports."""
    return MlflowClient(tracking_uri=uri).get_run(run_id)
