"""Reading the store: runs, records, artifacts, registered models (imgclf runs, serve)."""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from imgclf.contract import run_of
from imgclf.credentials import hide
from imgclf.errors import BadInput, MissingInput
from imgclf.tracking.store import check_sqlite_store, resolve_uri, retry_locked, sqlite_path

log = logging.getLogger(__name__)


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
    path = sqlite_path(uri)
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
            raise BadInput(f"no experiment '{experiment}' in {hide(uri)}; experiments: {names}")
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
    with _one_line_errors(), tempfile.TemporaryDirectory(prefix="imgclf-artifact-") as tmp:  # not MLflow's own, kept
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, dst_path=tmp, tracking_uri=resolve_uri(uri)
        )
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
    with _one_line_errors():
        version = _version_of(client, model_uri[len("models:/") :])
        # where that version's files are, from this store: a models:/ URI would be resolved against the process's
        # registry, which need not be `uri`
        source = client.get_model_version_download_uri(version.name, version.version)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(dest), tracking_uri=resolve_uri(uri)
        )
    return Path(local), version.run_id


def _version_of(client, ref: str):
    """The model version `name/N`, `name/latest` or `name@alias` names (MLflow's forms of models:/...)."""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, _, version = ref.partition("/")
    if version == "latest":
        versions = _versions_named(client, name)
        if not versions:
            raise MissingInput(f"no versions of registered model {name!r}")
        return max(versions, key=lambda v: int(v.version))
    return client.get_model_version(name, version)


def _versions_named(client, name: str) -> list:
    """Every version of registered model `name`. MLflow's filter strings have no escapes, so the name is quoted
    with a quote it does not hold and stays one string (`x' AND name != '` names a model, it selects no other's
    versions); a name holding both quotes is looked for among every model's versions. Matched exactly here."""
    quote = next((q for q in ("'", '"') if q not in name), None)
    query = f"name = {quote}{name}{quote}" if quote else None
    found, token = [], None
    while True:
        page = client.search_model_versions(query, page_token=token)
        found += [v for v in page if v.name == name]
        token = page.token
        if not token:
            return found


def served_models(uri: str, experiment: str, limit: int = 20) -> dict[str, list[dict[str, Any]]]:
    """What a model picker lists: registered model versions, and recent runs whose export is on this disk (the
    export folder still holding that run's model)."""
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
        if run_of(r["tags"]["imgclf.export_dir"]) == r["id"]:
            runs.append({"ref": r["id"], "name": r["name"], "test/acc": r["metrics"].get("test/acc")})
    return {"registered": registered, "runs": runs}


def run_link(uri: str, run_id: str) -> str:
    """Where a person sees the run: the server's page, or the `mlflow ui` command for a local store."""
    uri = resolve_uri(uri)
    if uri.startswith(("http://", "https://")):
        with _one_line_errors():
            experiment_id = _query_client(uri).get_run(run_id).info.experiment_id
        return hide(f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}")
    return hide(f"mlflow ui --backend-store-uri {uri}  (run {run_id})")  # a database's password: shown on a page


CURVES = ("train/loss", "val/loss", "train/acc", "val/acc")  # what the Runs view draws, per epoch
MAX_POINTS = 2000  # per curve: what one request may ask of the store


def recent_runs(uri: str, experiment: str, limit: int = 20) -> list[dict[str, Any]]:
    """The experiment's latest runs, newest first, with their status and headline metrics (serve's Runs view)."""
    client = _query_client(uri)
    with _one_line_errors():
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return []
        runs = client.search_runs([exp.experiment_id], max_results=limit, order_by=["attribute.start_time DESC"])
    return [
        {
            "run_id": r.info.run_id,
            "name": r.info.run_name,
            "status": r.info.status,
            "start_time": r.info.start_time,
            "metrics": {
                k: _shown(r.data.metrics[k]) for k in ("val/acc", "best/val/acc", "test/acc") if k in r.data.metrics
            },
        }
        for r in runs
    ]


def _shown(value: float) -> float | str:
    """A metric as JSON carries it: a number, or "nan" / "inf" / "-inf" (which JSON has no number for)."""
    return value if math.isfinite(value) else str(value)


def run_curves(uri: str, run_id: str) -> dict[str, Any]:
    """A run's status and its CURVES as [step, value] pairs (at most MAX_POINTS each), as they stand now; a point
    that is not a number (a loss gone to NaN) is left out, where the curve stops."""
    client = _query_client(uri)
    with _one_line_errors():
        run = client.get_run(run_id)
        curves = {
            key: [
                [m.step, m.value]
                for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
                if math.isfinite(m.value)
            ]
            for key in CURVES
            if key in run.data.metrics
        }
    return {
        "run_id": run_id,
        "name": run.info.run_name,
        "status": run.info.status,
        "curves": {k: v[-MAX_POINTS:] for k, v in curves.items()},
    }
