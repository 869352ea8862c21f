"""Compare and pick MLflow runs: sorted tables of metrics and differing params, and the best run's outputs."""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from imgclf import tracking
from imgclf.contract import run_of
from imgclf.credentials import hide
from imgclf.errors import BadInput

STANDARD_METRICS = ("val/acc", "test/acc", "test/macro_f1", "train/images_per_sec")
SWEEP_TAG, ROLE_TAG, PARENT_TAG = "imgclf.sweep", "imgclf.role", "mlflow.parentRunId"
STUDY_TAG, PRUNED_TAG = "imgclf.study", "imgclf.pruned"  # an Optuna study's parent run; a job its pruner stopped
FORMATS = ("table", "csv", "markdown")
SUFFIX_FORMATS = {".csv": "csv", ".md": "markdown"}
MISSING = "-"


@dataclass(frozen=True)
class RunRow:
    """One MLflow run, as the `runs` command lists it."""

    id: str
    name: str
    status: str
    start_time: int | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    artifact_uri: str

    @property
    def state(self) -> str:
        """MLflow's status, but PRUNED for a job an Optuna pruner stopped (FINISHED in MLflow: it did what was
        asked)."""
        return "PRUNED" if self.status == "FINISHED" and PRUNED_TAG in self.tags else self.status


class Column(NamedTuple):
    """A table column: kind is "id", "name", "status", "metric" or "param"; key names the metric or param."""

    kind: str
    key: str


def _quoted(value: str) -> str:
    # MLflow's filter grammar has no escape for quotes inside a string literal
    if "'" in value:
        raise BadInput(f"tag values with a single quote cannot be searched: {value!r}")
    return f"'{value}'"


def list_runs(uri: str, experiment: str, sweep: str | None = None, parent: str | None = None) -> list[RunRow]:
    """Runs of `experiment`, optionally of one sweep (its directory, or an Optuna study's name: every worker's
    jobs) or under one parent run; sweep parent runs are left out."""
    filters = []
    if sweep:
        study = tracking.search_runs(uri, experiment, f"tags.`{STUDY_TAG}` = {_quoted(sweep)}")
        if study:  # one parent run per study, whichever worker made it
            parent = parent or study[0]["id"]
        else:
            filters.append(f"tags.`{SWEEP_TAG}` = {_quoted(sweep)}")
    if parent:
        filters.append(f"tags.`{PARENT_TAG}` = {_quoted(parent)}")
    runs = tracking.search_runs(uri, experiment, " and ".join(filters))
    # a sweep's parent run only groups its jobs: it has no metrics of its own to compare
    return [RunRow(**r) for r in runs if r["tags"].get(ROLE_TAG) != "sweep"]


def sweep_summary(rows: list[RunRow], metric: str, order: str = "desc") -> str:
    """One line under a sweep's table: its jobs by state and the best finished one so far."""
    counts = Counter(r.state for r in rows)
    line = f"{len(rows)} jobs: " + ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items()))
    finished = [r for r in rows if r.state == "FINISHED" and metric_value(r, metric) is not None]
    if finished:
        best = sort_rows(finished, metric, order)[0]
        line += f"; best so far by {metric}: {best.id[:8]} {best.name} ({_cell(best, Column('metric', metric), False)})"
    return line


def no_match_message(uri: str, experiment: str, sweep: str | None, parent: str | None) -> str:
    """Why `list_runs` found nothing, naming what the experiment does hold."""
    runs = list_runs(uri, experiment)
    if sweep:
        sweeps = sorted({r.tags[SWEEP_TAG] for r in runs if SWEEP_TAG in r.tags})
        studies = sorted(r["tags"][STUDY_TAG] for r in tracking.search_runs(uri, experiment) if STUDY_TAG in r["tags"])
        named = f"sweeps: {', '.join(sweeps) or 'none'}" + (f"; studies: {', '.join(studies)}" if studies else "")
        return f"no runs of sweep '{sweep}' in experiment '{experiment}'; {named}"
    if parent:
        parents = sorted({r.tags[PARENT_TAG] for r in runs if PARENT_TAG in r.tags})
        return f"no child runs of '{parent}' in experiment '{experiment}'; parent runs: {', '.join(parents) or 'none'}"
    return f"no runs in experiment '{experiment}' of {hide(uri)}"


def metric_value(row: RunRow, metric: str) -> float | None:
    """The run's latest value of `metric`; None when missing or NaN."""
    value = row.metrics.get(metric)
    return None if value is None or math.isnan(value) else value


def sort_rows(rows: list[RunRow], metric: str, order: str = "desc") -> list[RunRow]:
    """Rows by `metric` (order "desc" or "asc"); runs without it last, newest first among ties."""
    if order not in ("desc", "asc"):
        raise BadInput(f"unknown order '{order}'; choose one of: desc, asc")
    sign = -1.0 if order == "desc" else 1.0
    by_time = sorted(rows, key=lambda r: -(r.start_time or 0))
    return sorted(by_time, key=lambda r: (metric_value(r, metric) is None, sign * (metric_value(r, metric) or 0.0)))


def check_metric(rows: list[RunRow], metric: str) -> None:
    """ValueError naming the metrics that exist when no row has `metric` (a typo would leave the table unsorted)."""
    if rows and all(metric_value(r, metric) is None for r in rows):
        present = sorted({k for r in rows for k in r.metrics})
        raise BadInput(f"no listed run has metric '{metric}'; metrics: {', '.join(present) or 'none'}")


def differing_params(rows: list[RunRow]) -> list[str]:
    """Param names whose values (or presence) differ between the rows, sorted."""
    keys = sorted({k for r in rows for k in r.params})
    return [k for k in keys if len({r.params.get(k) for r in rows}) > 1]


def table_columns(rows: list[RunRow], metric: str, all_params: bool = False) -> list[Column]:
    """Id, name, status, the sort metric, the standard metrics some row has, then differing (or all) params."""
    metrics = [m for m in STANDARD_METRICS if m != metric and any(m in r.metrics for r in rows)]
    params = sorted({k for r in rows for k in r.params}) if all_params else differing_params(rows)
    return [
        Column("id", "run"),
        Column("name", "name"),
        Column("status", "status"),
        Column("metric", metric),
        *(Column("metric", m) for m in metrics),
        *(Column("param", p) for p in params),
    ]


def _cell(row: RunRow, column: Column, exact: bool) -> str:
    # exact (CSV): full run id and repr-exact floats, so the file round-trips to the store's values
    if column.kind == "id":
        return row.id if exact else row.id[:8]
    if column.kind == "name":
        return row.name
    if column.kind == "status":
        return row.state
    if column.kind == "param":
        return row.params.get(column.key, "" if exact else MISSING)
    value = row.metrics.get(column.key)
    if value is None:
        return "" if exact else MISSING
    if exact:
        return repr(value)
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"  # accuracies to 0.01%, throughputs to 0.1


def format_table(rows: list[RunRow], columns: list[Column], fmt: str = "table") -> str:
    """The rows as a fixed-width text table, CSV or a GitHub markdown table."""
    headers = [c.key for c in columns]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows([_cell(r, c, exact=True) for c in columns] for r in rows)
        return buf.getvalue()
    cells = [[_cell(r, c, exact=False) for c in columns] for r in rows]
    if fmt == "markdown":
        lines = [
            headers,
            ["---:" if c.kind == "metric" else "---" for c in columns],
            *([v.replace("|", "\\|") for v in line] for line in cells),
        ]
        return "".join(f"| {' | '.join(line)} |\n" for line in lines)
    if fmt != "table":
        raise BadInput(f"unknown format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    widths = [max(len(v) for v in col) for col in zip(headers, *cells)]
    return "".join(
        "  ".join(v.rjust(w) if c.kind == "metric" else v.ljust(w) for v, w, c in zip(line, widths, columns)).rstrip()
        + "\n"
        for line in [headers, *cells]
    )


def known_suffix(path: str) -> bool:
    """A file name whose suffix says a format (.csv, .md), or the text table's (.txt, or none)."""
    suffix = Path(path).suffix.lower()
    return suffix in ("", ".txt") or suffix in SUFFIX_FORMATS


def format_for(path: str, fmt: str | None) -> str:
    """The explicit format, else the one the file suffix names (.csv, .md), else the text table."""
    if fmt:
        return fmt
    suffix = path[path.rfind(".") :].lower() if "." in path else ""
    return SUFFIX_FORMATS.get(suffix, "table")


def best_run(rows: list[RunRow], metric: str, order: str = "desc") -> RunRow:
    """The run with the best `metric`, pruned jobs left out while another has it (as a sweep's parent leaves them
    out); ValueError when no row has it."""
    check_metric(rows, metric)
    if not rows:
        raise BadInput("no runs to choose from")
    kept = [r for r in rows if r.state != "PRUNED" and metric_value(r, metric) is not None]
    return sort_rows(kept or rows, metric, order)[0]


def best_report(uri: str, row: RunRow, metric: str) -> list[str]:
    """The best run's id, then `key: value` lines: name, metric, and the checkpoint and export that exist."""
    lines = [row.id, f"name: {row.name}", f"{metric}: {row.metrics[metric]!r}"]
    checkpoint = row.tags.get("imgclf.checkpoint", "")  # local paths the train and export stages record, shown
    if checkpoint and run_of(Path(checkpoint).parent) == row.id:  # while they hold this run's model (run.json)
        lines.append(f"checkpoint: {checkpoint}")
    if run_of(row.tags.get("imgclf.export_dir", "")) == row.id:  # the folder still holds this run's model
        lines.append(f"export: {row.tags['imgclf.export_dir']}")
    if "checkpoint/model.pt" in tracking.list_artifact_paths(uri, row.id, "checkpoint"):
        lines.append(f"checkpoint_artifact: {row.artifact_uri.rstrip('/')}/checkpoint/model.pt")
    if "imgclf.model_uri" in row.tags:  # the served model the export stage logged (models:/m-...)
        lines.append(f"model_uri: {row.tags['imgclf.model_uri']}")
    elif _has_model(uri, row.id):
        lines.append(f"model_uri: runs:/{row.id}/model")
    return lines


def best_command(uri: str, row: RunRow, root: str | Path = ".") -> str:
    """`dvc exp run -S ...` that composes conf/ into the best sweep job's config: its group choices (`model=vgg16`),
    then its keys that differ, the workspace's the sweep ran on included, since DVC composes conf/ with the -S
    overrides alone. The winning trial as a DVC experiment, in one command."""
    import shlex

    import yaml

    from imgclf.config import conf_dir
    from imgclf.workspace import overrides_for

    if not row.tags.get(PARENT_TAG):
        raise BadInput(f"run {row.id} is not a sweep's job: --as-overrides takes the best of --sweep or --parent")
    if not conf_dir(root).is_dir():
        raise BadInput(f"--as-overrides composes conf/, and {conf_dir(root)} is missing: run it in the project")
    config = yaml.safe_load(tracking.artifact_text(uri, row.id, "train/config.yaml"))  # resolved, as the job ran
    sets = overrides_for(config, root)
    if sets is None:
        raise BadInput(f"run {row.id}'s config cannot be composed from conf/ (edited since the sweep ran?)")
    return " ".join(["dvc exp run", *(f"-S {shlex.quote(_bare(s))}" for s in sets)])


def _bare(override: str) -> str:
    """key='text' as key=text where Hydra reads the bare text as the same string: shorter to read and to copy."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    key, _, value = override.partition("=")
    if len(value) < 2 or value[0] != "'" or value[-1] != "'":
        return override
    text = f"{key}={value[1:-1]}"
    try:
        parsed = OverridesParser.create().parse_override(text)
    except HydraException:
        return override
    return text if parsed.value() == value[1:-1] and isinstance(parsed.value(), str) else override


def _has_model(uri: str, run_id: str) -> bool:
    """Whether the run logged an MLflow model named `model`; MLflow 3 can fail to resolve one from another store."""
    try:
        return bool(tracking.list_artifact_paths(uri, run_id, "model"))
    except ValueError:
        return False
