"""`imgclf runs` against a real MLflow sqlite store made with MLflow's own API."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pytest
from mlflow.tracking import MlflowClient

from imgclf.tracking.compare import (
    RunRow,
    best_report,
    best_run,
    differing_params,
    format_table,
    list_runs,
    table_columns,
)

from ..conftest import BIN, console, empty_mlflow_store

SAME = {"model.name": "resnet18", "trainer.batch_size": "32", "seed": "0"}


def log_identity_model() -> None:
    """A tiny pyfunc model named "model", as the export stage logs one."""

    class Identity(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: list[str], params=None) -> list[str]:  # hints: MLflow warns without
            return model_input

    mlflow.pyfunc.log_model(name="model", python_model=Identity(), pip_requirements=["numpy"])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """mlflow.db: runs a, b, c (a and b of sweep s1; b and c children of a sweep parent); experiment 'other'."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{empty_mlflow_store(root / 'mlflow.db')}"
    client = MlflowClient(uri)
    exp = client.create_experiment("imgclf", artifact_location=(root / "artifacts").as_uri())
    client.create_experiment("other", artifact_location=(root / "other").as_uri())
    mlflow.set_tracking_uri(uri)
    ids = {}
    with mlflow.start_run(experiment_id=exp, run_name="sweep-parent", tags={"imgclf.role": "sweep"}) as parent:
        mlflow.log_metric("val/acc", 0.99)  # higher than every job: it must still never be listed or chosen
    specs = {
        "a": (0.1, 0.7, "s1", None),
        "b": (0.01, 0.9, "s1", parent.info.run_id),
        "c": (0.001, 0.8, None, parent.info.run_id),
    }
    for name, (lr, acc, sweep, parent_id) in specs.items():
        tags = {k: v for k, v in {"imgclf.sweep": sweep, "mlflow.parentRunId": parent_id}.items() if v}
        with mlflow.start_run(experiment_id=exp, run_name=name, tags=tags) as run:
            mlflow.log_params({**SAME, "optim.lr": lr})
            for epoch, value in enumerate((acc - 0.2, acc)):
                mlflow.log_metrics({"val/acc": value, "train/loss": 1 - value}, step=epoch)
            mlflow.log_metrics({"best/val/acc": acc, "test/acc": acc - 0.05})
            ids[name] = run.info.run_id
    with mlflow.start_run(run_id=ids["b"]):  # the best run has outputs, as train and export leave them
        ckpt = root / "model.pt"
        ckpt.write_bytes(b"weights")
        (root / "run.json").write_text(json.dumps({"run_id": ids["b"]}))  # beside it, as train writes it
        mlflow.log_artifact(str(ckpt), "checkpoint")
        mlflow.set_tags({"imgclf.checkpoint": str(ckpt), "imgclf.export_dir": str(root / "export")})
        log_identity_model()
    mlflow.set_tracking_uri(None)
    return {"root": root, "uri": uri, "ids": ids, "parent": parent.info.run_id, "client": client}


def imgclf_runs(*args: str, cwd: Path, process: bool = False) -> subprocess.CompletedProcess:
    """`imgclf runs ARGS` in `cwd`: its function in this process, or with `process` the installed script."""
    if process:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the default URI is under test
        return subprocess.run([str(BIN / "imgclf"), "runs", *args], cwd=cwd, env=env, capture_output=True, text=True)
    from imgclf.cli import runs

    return console(runs, list(args), cwd)


def store_runs(store) -> dict[str, object]:
    """Run id -> the store's own run, for comparing with what the command printed."""
    return {i: store["client"].get_run(i) for i in store["ids"].values()}


def test_table_is_sorted_by_metric_and_shows_only_differing_params(store):
    result = imgclf_runs(cwd=store["root"], process=True)  # the console script, default --uri sqlite:///mlflow.db
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    by_acc = sorted(store_runs(store).values(), key=lambda r: -r.data.metrics["val/acc"])
    assert [line.split()[0] for line in lines] == [r.info.run_id[:8] for r in by_acc]
    assert store["parent"][:8] not in result.stdout
    assert "optim.lr" in header.split() and "test/acc" in header.split()
    for same in SAME:
        assert same not in header


def test_order_asc_and_limit(store):
    result = imgclf_runs("--order", "asc", "--limit", "2", "--metric", "test/acc", cwd=store["root"])
    assert result.returncode == 0, result.stderr
    ids = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert ids == [store["ids"]["a"][:8], store["ids"]["c"][:8]]


def test_csv_out_matches_store_exactly(store, tmp_path):
    out = tmp_path / "runs.csv"  # format from the suffix
    result = imgclf_runs("--uri", store["uri"], "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    runs = store_runs(store)
    assert [r["run"] for r in rows] == [store["ids"][n] for n in ("b", "c", "a")]
    for row in rows:
        run = runs[row["run"]]
        assert row["name"] == run.info.run_name and row["status"] == run.info.status == "FINISHED"
        assert float(row["val/acc"]) == run.data.metrics["val/acc"]
        assert float(row["test/acc"]) == run.data.metrics["test/acc"]
        assert row["optim.lr"] == run.data.params["optim.lr"]
        assert "trainer.batch_size" not in row and "seed" not in row
    before = out.read_bytes()
    again = imgclf_runs("--uri", store["uri"], "--out", str(out), "--metric", "test/acc", cwd=tmp_path)
    assert again.returncode == 1 and "is already there; give another name, or add --force" in again.stderr
    assert out.read_bytes() == before  # a file already there is replaced only when the user says so
    forced = imgclf_runs("--uri", store["uri"], "--out", str(out), "--metric", "test/acc", "--force", cwd=tmp_path)
    assert forced.returncode == 0 and out.read_bytes() != before
    for args, says in (  # a folder's name, an unknown suffix, an empty filter: refused, nothing written
        (["--out", f"{tmp_path}/new/"], "give a file name ending .csv, .md or .txt (or none), or a --format"),
        (["--out", str(tmp_path / "runs.xlsx")], f"--out {tmp_path / 'runs.xlsx'}: give a file name ending .csv"),
        (["--sweep", ""], "--sweep was given an empty value (it would mean none given)"),
        (["--parent", " "], "--parent was given an empty value"),
    ):
        refused = imgclf_runs("--uri", store["uri"], *args, cwd=tmp_path)
        assert refused.returncode == 2 and says in refused.stderr, refused.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.csv"]
    db = Path(store["uri"].removeprefix("sqlite:///"))
    kept = db.read_bytes()
    for out in (db, tmp_path / "link.db"):  # the store the table is read from, or a link to it: never replaced
        if out != db:
            out.symlink_to(db)
        args = ("--uri", store["uri"], "--format", "csv", "--out", str(out), "--force")
        refused = imgclf_runs(*args, cwd=tmp_path)
        assert refused.returncode == 1 and "which this command reads" in refused.stderr, refused.stderr
    assert db.read_bytes() == kept and (tmp_path / "link.db").is_symlink()


def test_markdown_is_a_pipe_table(store):
    result = imgclf_runs("--format", "markdown", "--all-params", cwd=store["root"])
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| run | name | status | val/acc |") and "trainer.batch_size" in lines[0]
    assert set(lines[1].replace("|", "").split()) <= {"---", "---:"}
    assert len(lines) == 2 + 3 and all(line.startswith("| ") and line.endswith(" |") for line in lines)


def test_sweep_and_parent_filters(store):
    ids = store["ids"]
    assert {r.id for r in list_runs(store["uri"], "imgclf", sweep="s1")} == {ids["a"], ids["b"]}
    assert {r.id for r in list_runs(store["uri"], "imgclf", parent=store["parent"])} == {ids["b"], ids["c"]}
    assert {r.id for r in list_runs(store["uri"], "imgclf")} == set(ids.values())  # never the parent
    result = imgclf_runs("--sweep", "s1", "--format", "csv", cwd=store["root"])
    assert [r["run"] for r in csv.DictReader(io.StringIO(result.stdout))] == [ids["b"], ids["a"]]


def test_best_prints_id_metric_and_checkpoint(store):
    result = imgclf_runs("--best", cwd=store["root"])
    assert result.returncode == 0, result.stderr
    runs = store_runs(store)
    best = max(runs.values(), key=lambda r: r.data.metrics["val/acc"])
    first, *rest = result.stdout.splitlines()
    fields = dict(line.split(": ", 1) for line in rest)
    assert first == best.info.run_id
    assert float(fields["val/acc"]) == best.data.metrics["val/acc"]
    assert fields["checkpoint_artifact"] == f"{best.info.artifact_uri}/checkpoint/model.pt"
    assert Path(fields["checkpoint_artifact"].removeprefix("file://")).read_bytes() == b"weights"
    assert fields["checkpoint"] == best.data.tags["imgclf.checkpoint"]
    assert fields["model_uri"] == f"runs:/{best.info.run_id}/model"


def test_best_of_ascending_order_has_no_outputs(store):
    rows = list_runs(store["uri"], "imgclf")
    worst = best_run(rows, "val/acc", "asc")
    assert worst.id == store["ids"]["a"]
    lines = best_report(store["uri"], worst, "val/acc")
    assert lines[0] == worst.id and not any(line.startswith(("checkpoint", "model_uri")) for line in lines)


@pytest.mark.parametrize(
    "args, names",
    [
        (("--experiment", "nope"), ["'nope'", "Default, imgclf, other"]),
        (("--sweep", "s9"), ["'s9'", "sweeps: s1"]),
        (("--metric", "val/acc2"), ["'val/acc2'", "val/acc"]),
    ],
)
def test_bad_queries_fail_with_one_line(store, args, names):
    result = imgclf_runs(*args, cwd=store["root"])
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
    for name in names:
        assert name in result.stderr


def test_missing_store_fails_without_creating_one(tmp_path):
    result = imgclf_runs(cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: no MLflow database at mlflow.db (tracking URI sqlite:///mlflow.db)"
    ]
    assert list(tmp_path.iterdir()) == []


def _row(run_id: str, **params: str) -> RunRow:
    return RunRow(run_id, run_id, "FINISHED", 0, params, {"val/acc": 0.5}, {}, "")


def test_differing_params_counts_a_missing_param_as_different():
    rows = [_row("r1", lr="0.1", bs="32"), _row("r2", lr="0.2", bs="32", extra="x")]
    assert differing_params(rows) == ["extra", "lr"]
    table = format_table(rows, table_columns(rows, "val/acc"), "table").splitlines()
    assert table[0].split() == ["run", "name", "status", "val/acc", "extra", "lr"]
    assert table[1].split() == ["r1", "r1", "FINISHED", "0.5000", "-", "0.1"]


def test_a_store_that_is_not_mlflows_is_refused_untouched(tmp_path):
    import sqlite3

    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE notes (text)").connection.commit()
    before = (tmp_path / "other.db").read_bytes()
    for uri, says in (
        ("sqlite:////etc/passwd", "error: 'sqlite:////etc/passwd': /etc/passwd is not an SQLite database; give an"),
        (f"sqlite:///{tmp_path}/other.db", f"error: {tmp_path}/other.db is an SQLite database of something else"),
    ):
        result = imgclf_runs("--uri", uri, cwd=tmp_path)
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
        assert result.stderr.startswith(says), result.stderr
    assert (tmp_path / "other.db").read_bytes() == before  # MLflow never migrated it


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """An Optuna study's parent run (tag imgclf.study) and three trials from two workers' sweep dirs: one pruned
    with the highest val/acc of its last epoch, one failed, one finished."""
    root = tmp_path_factory.mktemp("study")
    uri = f"sqlite:///{empty_mlflow_store(root / 'mlflow.db')}"
    client = MlflowClient(uri)
    exp = client.create_experiment("imgclf", artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(exp, run_name="sweep-lr", tags={"imgclf.role": "sweep", "imgclf.study": "lr-3f2a"})
    ids = {}
    for name, acc, sweep_dir, status, tags in (
        ("pruned", 0.95, "w1", "FINISHED", {"imgclf.pruned": "after epoch 1 of 3"}),
        ("failed", 0.5, "w2", "FAILED", {}),
        ("finished", 0.9, "w2", "FINISHED", {}),
    ):
        tags = {"mlflow.parentRunId": parent.info.run_id, "imgclf.sweep": sweep_dir, **tags}
        run = client.create_run(exp, run_name=name, tags=tags)
        client.log_metric(run.info.run_id, "val/acc", acc)
        client.log_param(run.info.run_id, "optim.lr", acc / 100)
        client.set_terminated(run.info.run_id, status)
        ids[name] = run.info.run_id
    client.set_terminated(parent.info.run_id)
    return {"root": root, "uri": uri, "ids": ids}


def test_a_study_lists_every_workers_trials_by_state_and_its_best(study):
    result = imgclf_runs("--uri", study["uri"], "--sweep", "lr-3f2a", cwd=study["root"])
    assert result.returncode == 0, result.stderr
    header, *lines, summary = result.stdout.splitlines()
    assert {line.split()[0] for line in lines} == {i[:8] for i in study["ids"].values()}  # both sweep dirs
    states = {line.split()[1]: line.split()[2] for line in lines}
    assert states == {"pruned": "PRUNED", "failed": "FAILED", "finished": "FINISHED"}
    best = study["ids"]["finished"][:8]
    assert summary == f"3 jobs: 1 failed, 1 finished, 1 pruned; best so far by val/acc: {best} finished (0.9000)"
    chosen = imgclf_runs("--uri", study["uri"], "--sweep", "lr-3f2a", "--best", cwd=study["root"])
    assert chosen.stdout.splitlines()[0] == study["ids"]["finished"]  # a pruned trial's last epoch is not a result
    one_dir = imgclf_runs("--uri", study["uri"], "--sweep", "w1", "--format", "csv", cwd=study["root"])
    assert [r["run"] for r in csv.DictReader(io.StringIO(one_dir.stdout))] == [study["ids"]["pruned"]]
    unknown = imgclf_runs("--uri", study["uri"], "--sweep", "lr-0000", cwd=study["root"])
    assert unknown.returncode == 1 and "studies: lr-3f2a" in unknown.stderr


def test_a_database_that_does_not_answer_is_one_line_without_its_password(tmp_path):
    done = imgclf_runs("--uri", "postgresql://alice:pw-secret-5e@127.0.0.1:1/mlflow", cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "pw-secret-5e" not in done.stdout + done.stderr
    assert done.stderr.startswith("error: cannot reach the tracking database at postgresql://alice:***@127.0.0.1:1/")


def test_a_uri_that_is_no_store_is_one_line_naming_the_valid_ones(tmp_path):
    from imgclf.cli import sync

    from ..conftest import console

    for uri in ("bogus://x", "mlruns", "file:///tmp/x", str(tmp_path)):
        for done in (imgclf_runs("--uri", uri, cwd=tmp_path), console(sync, ["--uri", uri], tmp_path)):
            assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
            assert done.stderr.startswith(f"error: {uri!r} is not a tracking store imgclf can use: give sqlite:///")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "uri, says",
    [
        ("ftp://bob:pw-secret-5e@x/", "'ftp://***@x/' is not a tracking store imgclf can use: give sqlite:///"),
        ("http://bob:pw-secret-5e@host:port/", "host:port/' is not a URL: give SCHEME://HOST:PORT/"),
        ("http://bob:pw-secret-5e/", "is not a URL: give SCHEME://HOST:PORT/"),  # no @: a port of letters
        ("http://bob:pw-secret-5e@[::1", "[::1' is not a URL"),
        ("postgresql://bob:pw-secret-5e@h:99999/db", "'postgresql://***@h:99999/db' is not a URL"),
        ("sqlite://bob:pw-secret-5e@/x.db", "'sqlite://***@/x.db' is not an SQLite URI: give sqlite:///PATH"),
    ],
)
def test_a_store_uri_that_is_no_url_is_one_line_without_its_password(uri, says, tmp_path):
    """Each was a traceback (InvalidURL, ValueError, SQLAlchemy's ArgumentError), or its error line showed the
    password."""
    from imgclf.cli import reproduce, runs, sync

    from ..conftest import console

    for command, argv in ((runs, []), (sync, ["--outbox", str(tmp_path / "outbox")]), (reproduce, ["0" * 32])):
        done = console(command, [*argv, "--uri", uri], tmp_path)
        shown = done.stdout + done.stderr
        assert done.returncode == 1 and shown.startswith("error: ") and says in shown, (command, shown)
        assert shown.count("\n") == 1 and ("pw-secret-5e" not in shown or "@" not in uri), shown
    assert list(tmp_path.iterdir()) == []
