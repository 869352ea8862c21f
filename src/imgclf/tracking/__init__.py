"""The only package that imports MLflow: the store (store.py), the active run and its outbox (runs.py, outbox.py),
killed runs (processes.py), secrets kept out (redaction.py), the served pyfunc model (served.py), the
queries of `imgclf runs` and `imgclf serve` (queries.py, compare.py), sweeps' parent runs (sweeps.py), and a team's
server (server.py). The rest of imgclf calls it as `tracking.run(...)`, `tracking.log_metrics(...)`: these names.

Imported lazily (PEP 562): a name is looked up in its module on first use, so a process that only registers the
sweep callback (every stage's Hydra app: fetch and split never track) does not pay MLflow's import."""

from __future__ import annotations

import importlib
from typing import Any

# each public name and the module that defines it
_WHERE = {
    "end_killed_runs_in_store": "processes",
    "artifact_file": "queries",
    "artifact_text": "queries",
    "download_model": "queries",
    "list_artifact_paths": "queries",
    "recent_runs": "queries",
    "run_curves": "queries",
    "run_link": "queries",
    "run_record": "queries",
    "search_runs": "queries",
    "served_models": "queries",
    "set_run_tags": "queries",
    "flatten": "redaction",
    "redact_overrides": "redaction",
    "redacted": "redaction",
    "finish_parent_run": "runs",
    "log_artifact": "runs",
    "log_artifacts": "runs",
    "log_config": "runs",
    "log_metrics": "runs",
    "log_text": "runs",
    "metric_name": "runs",
    "read_run_file": "runs",
    "reopen": "runs",
    "run": "runs",
    "set_tags": "runs",
    "share_artifacts": "runs",
    "start_parent_run": "runs",
    "sync_outboxes": "runs",
    "log_served_model": "served",
    "REACHED_ENV": "store",
    "require_database": "store",
    "require_server": "store",
    "resolve_uri": "store",
    "retry_locked": "store",
    "use": "store",
    "wait_for_server": "store",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
