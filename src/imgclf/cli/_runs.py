"""The commands about MLflow runs: `imgclf runs` compares them, `imgclf reproduce` re-creates one from its record,
`imgclf sync` sends what runs left in the outbox while the tracking server was away."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from imgclf.cli._arguments import number_from_0
from imgclf.credentials import take_uri_credentials
from imgclf.errors import USER_ERRORS, BadInput


def runs_parser() -> argparse.ArgumentParser:
    from imgclf.tracking.compare import FORMATS

    parser = argparse.ArgumentParser(
        prog="imgclf runs",
        description=runs.__doc__,
        epilog="Metrics are each run's latest value: val/acc is the last epoch's, best/val/acc the best epoch's. "
        "Sweep parent runs (tag imgclf.role=sweep) are never listed.",
    )
    parser.add_argument(
        "--uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
        help="tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    parser.add_argument("--experiment", default="imgclf")
    parser.add_argument(
        "--sweep",
        help="only the jobs of this sweep: its directory (tag imgclf.sweep) or an Optuna study's name (every "
        "worker's trials); the table ends with the jobs by state (finished, pruned, failed, running) and the best",
    )
    parser.add_argument("--parent", metavar="RUN_ID", help="only the child runs of this parent run")
    parser.add_argument("--metric", default="val/acc", help="sort by this metric (default: val/acc)")
    parser.add_argument("--order", choices=("desc", "asc"), default="desc", help="desc: highest first (default)")
    parser.add_argument("--limit", type=int, help="show only the first N runs")
    parser.add_argument("--all-params", action="store_true", help="show every param, not only those that differ")
    parser.add_argument("--format", choices=FORMATS, help="default: table, or from the --out suffix (.csv, .md)")
    parser.add_argument("--out", help="write the table to this file instead of printing it")
    parser.add_argument("--force", action="store_true", help="replace an --out file that is already there")
    parser.add_argument(
        "--best", action="store_true", help="print the best run's id, then name, metric, checkpoint and export lines"
    )
    parser.add_argument(
        "--as-overrides",
        action="store_true",
        help="with --best: print the `dvc exp run -S ...` that composes conf/ into the best sweep job's config "
        "(its group choices and every key that differs, the workspace's included): run it in the project",
    )
    return parser


def runs(argv: list[str]) -> int:
    """Compare MLflow runs: a table sorted by a metric showing the params that differ, or the best run's outputs."""
    from imgclf import tracking
    from imgclf.files import write_text
    from imgclf.targets import refuse_reading, refuse_to_replace
    from imgclf.tracking import compare as compare
    from imgclf.tracking.store import sqlite_file

    parser = runs_parser()
    args = parser.parse_args(argv)
    if args.best and (args.out or args.format):
        parser.error("--best prints key: value lines; it takes no --format or --out")
    if args.as_overrides and not args.best:
        parser.error("--as-overrides goes with --best")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    given = {flag: getattr(args, flag) for flag in ("sweep", "parent", "out")}
    if empty := [flag for flag, value in given.items() if value is not None and not value.strip()]:
        parser.error(f"--{empty[0]} was given an empty value (it would mean none given)")
    if args.out and (args.out.endswith(("/", os.sep)) or not (args.format or compare.known_suffix(args.out))):
        parser.error(f"--out {args.out}: give a file name ending .csv, .md or .txt (or none), or a --format")
    args.uri = take_uri_credentials(args.uri)  # user:password into MLflow's variables: in no message or command
    try:
        tracking.require_server(args.uri)
        if args.out:
            refuse_to_replace(args.out, "--out", args.force)
            store = sqlite_file(args.uri)  # --force replaces an earlier table, never the store the table is read from
            refuse_reading(args.out, "--out", [os.path.expanduser(store)] if store else [])
        rows = compare.list_runs(args.uri, args.experiment, args.sweep, args.parent)
        if not rows:
            raise BadInput(compare.no_match_message(args.uri, args.experiment, args.sweep, args.parent))
        if args.best:
            best = compare.best_run(rows, args.metric, args.order)
            if args.as_overrides:
                print(compare.best_command(args.uri, best))
                return 0
            print("\n".join(compare.best_report(args.uri, best, args.metric)))
            return 0
        compare.check_metric(rows, args.metric)
        every, rows = rows, compare.sort_rows(rows, args.metric, args.order)[: args.limit]
        fmt = compare.format_for(args.out or "", args.format)
        text = compare.format_table(rows, compare.table_columns(rows, args.metric, args.all_params), fmt)
        if args.out:
            write_text(args.out, text)
            print(f"wrote {len(rows)} runs to {args.out}")
        else:
            print(text, end="")
            if (args.sweep or args.parent) and fmt == "table":
                print(compare.sweep_summary(every, args.metric, args.order))  # all, --limit or not
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


_tolerance = number_from_0(float("inf"), "a number >= 0")


def reproduce_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgclf reproduce", description=reproduce.__doc__)
    parser.add_argument("run_id", help="the MLflow run to reproduce (a train run; evaluate's metrics are compared)")
    parser.add_argument("--uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    parser.add_argument("--out-dir", help="a new or empty folder the new run writes into (default: reproduce/<run id>)")
    parser.add_argument(
        "--tolerance",
        type=_tolerance,
        help="max |difference| per metric (default: 0 on the same machine and libraries, 0.02 elsewhere)",
    )
    return parser


def reproduce(argv: list[str]) -> int:
    """Re-create a run from its MLflow record (config, code version, data version) into a new run, and compare."""
    from omegaconf import OmegaConf

    from imgclf import tracking
    from imgclf.paths import Paths
    from imgclf.reproduce import Record, compare, differences, format_rows, reproduction_config, tolerance_for
    from imgclf.stages.evaluate import evaluate
    from imgclf.stages.train import train

    args = reproduce_parser().parse_args(argv)
    args.uri = take_uri_credentials(args.uri)
    try:
        out_dir = Path(args.out_dir or Path("reproduce") / args.run_id)
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise BadInput(
                f"--out-dir {out_dir} is already there{'' if out_dir.is_dir() else ' (a file)'}: give a new or empty "
                "folder (the reproduction writes its models/, reports/ and checkpoints/ in it); nothing was written"
            )
        tracking.require_server(args.uri)
        record = _record(Record, args.uri, args.run_id)
        found = differences(record, Paths.from_config(record.config["paths"]))
        if found:
            raise BadInput(f"cannot reproduce run {args.run_id}: {'; '.join(found)}")
        tolerance, why = tolerance_for(record, args.tolerance)
        cfg = OmegaConf.create(reproduction_config(record, args.uri, out_dir))
        train(cfg)
        evaluate(cfg)
        new_id = tracking.read_run_file(out_dir / "models" / "run.json")["run_id"]
        tracking.set_run_tags(args.uri, new_id, {"imgclf.reproduces": args.run_id})
        rows, ok = compare(record.metrics, tracking.run_record(args.uri, new_id)["metrics"], tolerance)
        print(format_rows(rows, args.run_id, new_id))
        print(f"tolerance {tolerance:g} ({why}): {'reproduced' if ok else 'NOT reproduced'}")
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


def _record(record, uri: str, run_id: str):
    """The run's record, or one line naming the id or the store, and where the runs are listed."""
    from imgclf.deploy.model_card import RUN_ID
    from imgclf.errors import shown

    listed = f"`imgclf runs --uri {uri}` lists the runs there"
    if not RUN_ID.fullmatch(run_id):
        raise BadInput(f"{shown(run_id, 40)!r} is not an MLflow run id (32 hex digits): {listed}")
    try:
        return record.load(uri, run_id)
    except USER_ERRORS as exc:
        if f"Run with id={run_id} not found" in str(exc):  # MLflow's words
            raise BadInput(f"no run {run_id} in {uri}: {listed}") from None
        raise


def sync_parser() -> argparse.ArgumentParser:
    from imgclf.tracking.outbox import default_root

    parser = argparse.ArgumentParser(prog="imgclf sync", description=sync.__doc__)
    parser.add_argument("--outbox", type=Path, default=default_root(), help="default: %(default)s")
    parser.add_argument(
        "--uri", help="tracking URI (default: the run's own, or MLFLOW_TRACKING_URI when its credentials were hidden)"
    )
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the server per run")
    return parser


def sync(argv: list[str]) -> int:
    """Send the records that runs left in the outbox when the tracking server stayed away (tracking.outage_wait_s)."""
    from imgclf import tracking
    from imgclf.credentials import unknown_store

    parser = sync_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.wait < float("inf"):
        parser.error(f"--wait {args.wait} is not valid: seconds, a number from 0")
    store = args.uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    why = unknown_store(store)
    if why is None and args.outbox.exists() and not args.outbox.is_dir():
        why = f"--outbox {args.outbox} is a file; give the folder runs keep their outboxes in"
    if why is not None:
        print(f"error: {why}", file=sys.stderr)
        return 1
    try:  # a database that does not answer: one line now, not MLflow's minutes of retries (a server is waited for)
        tracking.require_database(tracking.resolve_uri(store), "give another --uri")
        results = tracking.sync_outboxes(args.outbox, args.uri, args.wait)
        for run_id, left in results:
            print(f"{run_id}: {'sent' if left == 0 else f'{left} records still waiting'}")
        if not results:
            print(f"nothing to send in {args.outbox}")
        for run_id in tracking.end_killed_runs_in_store(store):
            print(f"{run_id}: its process was killed; marked KILLED")
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 1 if any(left for _, left in results) else 0
