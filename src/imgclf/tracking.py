"""The only module that talks to MLflow: runs, params, metrics, tags and artifacts."""
from __future__ import annotations

import logging
import re
import warnings
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


def _served_model_class():
    """The pyfunc class, defined on first use: importing mlflow.pyfunc (and defining a PythonModel) makes MLflow
    warn about type hints, which every stage would print otherwise; the signature is given explicitly instead."""
    import mlflow.pyfunc

    class OnnxImageClassifier(mlflow.pyfunc.PythonModel):
        """The exported ONNX network as an MLflow model: RGB uint8 images (N, S, S, 3) in, class probabilities out."""

        def load_context(self, context) -> None:
            import json

            import numpy as np
            import onnxruntime as ort

            self.session = ort.InferenceSession(context.artifacts["onnx"], providers=["CPUExecutionProvider"])
            spec = json.loads(Path(context.artifacts["preprocessing"]).read_text())
            self.labels = Path(context.artifacts["labels"]).read_text().split("\n")[:-1]
            self.mean = np.asarray(spec["mean"], np.float32).reshape(1, 3, 1, 1)
            self.std = np.asarray(spec["std"], np.float32).reshape(1, 3, 1, 1)

        def predict(self, context, model_input, params=None):
            import numpy as np
            import pandas as pd

            x = np.asarray(model_input, dtype=np.float32).transpose(0, 3, 1, 2) / 255.0
            logits = self.session.run(["logits"], {"images": (x - self.mean) / self.std})[0]
            exp = np.exp(logits - logits.max(1, keepdims=True))
            probs = pd.DataFrame(exp / exp.sum(1, keepdims=True), columns=self.labels)
            probs["label"] = [self.labels[i] for i in logits.argmax(1)]
            return probs

    return OnnxImageClassifier


def log_served_model(export_dir: str | Path, examples, registered_name: str | None) -> str:
    """Log the ONNX export as a pyfunc model (signature, input example) and register it; returns its URI."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    export_dir = Path(export_dir)
    labels = (export_dir / "labels.txt").read_text().split("\n")[:-1]
    size = examples.shape[1]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, size, size, 3))]),  # one unnamed tensor: {"inputs": [...]}
        outputs=Schema([ColSpec("double", c) for c in labels] + [ColSpec("string", "label")]),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")
        model = _served_model_class()()
    info = mlflow.pyfunc.log_model(
        name="model", python_model=model, signature=signature, input_example=examples,
        artifacts={"onnx": str(export_dir / "model.onnx"), "labels": str(export_dir / "labels.txt"),
                   "preprocessing": str(export_dir / "preprocessing.json")},
        pip_requirements=["onnxruntime", "numpy", "pandas"],  # the class is pickled by value: no imgclf needed
        registered_model_name=registered_name or None,
    )
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
        raise ValueError(str(exc.message).splitlines()[0]) from exc


def _query_client(uri: str) -> MlflowClient:
    """A client for an existing store: MLflow would create an empty database at a mistyped sqlite path."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):].split("?", 1)[0]
        if path not in ("", ":memory:") and not Path(path).is_file():
            raise FileNotFoundError(f"no MLflow database at {path} (tracking URI {uri})")
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
            raise ValueError(f"no experiment '{experiment}' in {uri}; experiments: {names}")
        runs, token = [], None
        while True:
            page = client.search_runs([exp.experiment_id], filter_string, max_results=SEARCH_PAGE_SIZE,
                                      page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
    return [{"id": r.info.run_id, "name": r.info.run_name or "", "status": r.info.status,
             "start_time": r.info.start_time, "params": dict(r.data.params), "metrics": dict(r.data.metrics),
             "tags": dict(r.data.tags), "artifact_uri": r.info.artifact_uri} for r in runs]


def list_artifact_paths(uri: str, run_id: str, path: str | None = None) -> list[str]:
    """Paths of a run's artifacts directly under `path`; MLflow 3 also resolves logged models ("model")."""
    with _one_line_errors():
        return [a.path for a in _query_client(uri).list_artifacts(run_id, path)]
