"""The only package that imports MLflow: the store (store.py), the active run and its outbox (runs.py, outbox.py),
killed runs (processes.py), secrets kept out (redaction.py), the served pyfunc model (served.py), the
queries of `imgclf runs` and `imgclf serve` (queries.py, compare.py), sweeps' parent runs (sweeps.py), and a team's
server (server.py). The rest of imgclf calls it as `tracking.run(...)`, `tracking.log_metrics(...)`: these names."""

from imgclf.tracking.processes import end_killed_runs_in_store
from imgclf.tracking.queries import (
    artifact_file,
    artifact_text,
    download_model,
    list_artifact_paths,
    recent_runs,
    run_curves,
    run_link,
    run_record,
    search_runs,
    served_models,
    set_run_tags,
)
from imgclf.tracking.redaction import flatten, redact_overrides, redacted
from imgclf.tracking.runs import (
    finish_parent_run,
    log_artifact,
    log_artifacts,
    log_config,
    log_metrics,
    log_text,
    read_run_file,
    reopen,
    run,
    set_tags,
    share_artifacts,
    start_parent_run,
    sync_outboxes,
)
from imgclf.tracking.served import log_served_model
from imgclf.tracking.store import REACHED_ENV, resolve_uri, retry_locked, use, wait_for_server

__all__ = [
    "REACHED_ENV",
    "artifact_file",
    "artifact_text",
    "download_model",
    "end_killed_runs_in_store",
    "finish_parent_run",
    "flatten",
    "list_artifact_paths",
    "log_artifact",
    "log_artifacts",
    "log_config",
    "log_metrics",
    "log_served_model",
    "log_text",
    "read_run_file",
    "redact_overrides",
    "redacted",
    "recent_runs",
    "reopen",
    "resolve_uri",
    "retry_locked",
    "run",
    "run_curves",
    "run_link",
    "run_record",
    "search_runs",
    "served_models",
    "set_run_tags",
    "set_tags",
    "share_artifacts",
    "start_parent_run",
    "sync_outboxes",
    "use",
    "wait_for_server",
]
