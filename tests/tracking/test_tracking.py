import re

import pytest

from imgclf import tracking


def test_flatten_uses_dotted_keys():
    assert tracking.flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}


def test_secrets_never_leave_redact():
    cfg = {"tracking": {"uri": "http://alice:s3cret@host:5000", "password": "pw"}, "kaggle": {"api_token": "tok"}}
    out = tracking.redacted(cfg)
    assert out == {"tracking": {"uri": "http://***@host:5000", "password": "***"}, "kaggle": {"api_token": "***"}}
    assert "s3cret" not in str(out)
    cfg = {"data": {"kaggle_key": "k", "key_id": "k"}, "model": {"monkey": "m"}}  # `key` as a word of its own
    assert tracking.redacted(cfg) == {"data": {"kaggle_key": "***", "key_id": "***"}, "model": {"monkey": "m"}}
    assert tracking.redact_overrides(["tracking.uri=https://u:pw@h", "+kaggle.key_token=abc", "optim.lr=0.1"]) == (
        "tracking.uri=https://***@h +kaggle.key_token=*** optim.lr=0.1"
    )


def _store(tmp_path):
    from ..conftest import empty_mlflow_store

    if not (tmp_path / "mlflow.db").exists():
        empty_mlflow_store(tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


def get_run(uri, run_id):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri).get_run(run_id)


def test_run_status_follows_outcome(tmp_path):
    uri = _store(tmp_path)
    with tracking.run(uri, "exp") as ok_id:
        tracking.log_config({"optim": {"lr": 0.1}, **{f"k{i}": i for i in range(150)}})  # > one 100-param batch
        tracking.log_metrics({"val/acc": 0.5}, step=1)
    with pytest.raises(ValueError), tracking.run(uri, "exp") as failed_id:
        raise ValueError("boom")
    with pytest.raises(KeyboardInterrupt), tracking.run(uri, "exp") as killed_id:
        raise KeyboardInterrupt
    ok = get_run(uri, ok_id)
    assert ok.info.status == "FINISHED"
    assert ok.data.params["optim.lr"] == "0.1" and len(ok.data.params) == 151
    assert ok.data.metrics["val/acc"] == 0.5
    assert get_run(uri, failed_id).info.status == "FAILED"
    assert get_run(uri, killed_id).info.status == "KILLED"


def test_reopened_run_gets_later_metrics(tmp_path):
    uri = _store(tmp_path)
    with tracking.run(uri, "exp") as run_id:
        tracking.log_metrics({"val/acc": 0.5})
    with tracking.run(uri, run_id=run_id) as same:
        tracking.log_metrics({"test/acc": 0.7})
    assert same == run_id
    assert get_run(uri, run_id).data.metrics == {"val/acc": 0.5, "test/acc": 0.7}


def test_retry_locked_retries_only_database_is_locked(monkeypatch):
    from imgclf import tracking

    monkeypatch.setattr("imgclf.tracking.store.time.sleep", lambda s: None)  # retry_locked's backoff
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert tracking.retry_locked(flaky) == "ok" and len(calls) == 3

    def broken():
        calls.append(1)
        raise RuntimeError("no such table: runs")

    calls.clear()
    with pytest.raises(RuntimeError, match="no such table"):
        tracking.retry_locked(broken)
    assert len(calls) == 1


def test_relative_sqlite_store_resolves_against_dvc_root(monkeypatch, tmp_path):
    from imgclf.tracking.store import resolve_uri

    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert resolve_uri("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # a queued experiment runs in a temporary copy
    assert resolve_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_uri("sqlite:////abs/store.db") == "sqlite:////abs/store.db"
    assert resolve_uri("http://mlflow:5000") == "http://mlflow:5000"


def test_a_store_left_mid_transaction_by_a_killed_process_is_recovered_not_refused(tmp_path):
    """SIGKILL inside a write leaves a hot journal; the next run must roll it back and go on (a read-only look
    cannot), keeping every committed row and none of the killed transaction's."""
    import contextlib
    import sqlite3
    import subprocess
    import sys

    uri = _store(tmp_path)
    with tracking.run(uri, "exp") as committed:
        tracking.log_metrics({"val/acc": 0.5}, step=1)
    db = tmp_path / "mlflow.db"
    writer = (
        "import os, signal, sqlite3, sys\n"
        "con = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "con.execute('PRAGMA cache_size=2')\n"  # spill to the file mid-transaction, as a long write does
        "con.execute('BEGIN IMMEDIATE')\n"
        "con.execute('CREATE TABLE unfinished AS WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c "
        "WHERE i < 200) SELECT randomblob(4000) AS b FROM c')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", writer, str(db)], capture_output=True)
    assert killed.returncode == -9, killed.stderr
    assert (tmp_path / "mlflow.db-journal").stat().st_size > 0

    from imgclf.tracking.store import _initialised

    _initialised.discard(uri)  # as a new process would see it
    with tracking.run(uri, "exp") as after:
        tracking.log_metrics({"val/acc": 0.6}, step=1)
    assert get_run(uri, committed).data.metrics == {"val/acc": 0.5}
    assert get_run(uri, after).data.metrics == {"val/acc": 0.6}
    with contextlib.closing(sqlite3.connect(db)) as con:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "unfinished" not in tables and "runs" in tables


def test_sync_sends_to_the_runs_own_store_from_any_folder_and_keeps_what_another_store_cannot_take(
    tmp_path, monkeypatch
):
    """An outbox left by a run started with the default relative URI names its store in full, so `imgclf sync` from
    another folder sends there (it used to create an empty mlflow.db in that folder and drop every record as
    refused); a --uri without the run, or without a store, keeps the records and creates nothing."""
    import json

    from mlflow.tracking import MlflowClient

    from imgclf.cli import sync
    from imgclf.tracking.outbox import Outbox
    from imgclf.tracking.runs import open_outbox

    from ..conftest import console

    project, elsewhere, root = tmp_path / "project", tmp_path / "elsewhere", tmp_path / "outbox"
    elsewhere.mkdir()
    client = MlflowClient(tracking_uri=_store(project))
    run_id = client.create_run(client.create_experiment("exp")).info.run_id
    monkeypatch.chdir(project)
    box = open_outbox("sqlite:///mlflow.db", run_id, root / run_id / "1")  # a run's outbox, the default URI
    meta = json.loads((box.dir / "meta.json").read_text())
    assert box.close(30)

    def out_of_reach(record, directory):
        raise ConnectionError("the store is out of reach")

    # the same outbox, left by a process that died while the store was out of reach: one record not taken
    away = Outbox(root / run_id / "1", out_of_reach, permanent=lambda exc: False, meta=meta)
    away.put({"op": "batch", "metrics": [["m", 1.0, 0, 1]]})
    assert not away.close(0)
    for uri in (_store(tmp_path / "other"), f"sqlite:///{tmp_path}/absent/mlflow.db"):
        out = console(sync, ["--outbox", str(root), "--uri", uri, "--wait", "1"], elsewhere)
        assert out.returncode == 1 and f"{run_id}: 1 records still waiting" in out.stdout, out
    assert not (tmp_path / "absent").exists() and (root / run_id / "1").is_dir()
    foreign = tmp_path / "notes.db"  # an SQLite database of another program: MLflow would add its tables to it
    with __import__("sqlite3").connect(foreign) as db:
        db.execute("CREATE TABLE notes (text)")
    before = foreign.read_bytes()
    out = console(sync, ["--outbox", str(root), "--uri", f"sqlite:///{foreign}", "--wait", "1"], elsewhere)
    assert out.returncode == 1 and out.stderr == f"error: {foreign} is an SQLite database of something else, not an " \
        "MLflow store; it is left as it is\n"  # fmt: skip
    assert foreign.read_bytes() == before and (root / run_id / "1").is_dir()
    out = console(sync, ["--outbox", str(root), "--wait", "30"], elsewhere)  # the store the run was started on
    assert out.returncode == 0 and f"{run_id}: sent" in out.stdout, out
    assert not (elsewhere / "mlflow.db").exists() and not (root / run_id).exists()
    assert [m.value for m in client.get_metric_history(run_id, "m")] == [1.0]
    out = console(sync, ["--outbox", str(root), "--uri", f"sqlite:///{foreign}"], elsewhere)  # nothing to send
    assert out.returncode == 1 and "something else, not an MLflow store" in out.stderr
    assert foreign.read_bytes() == before
    for args, says in ((["--wait", "nan"], "--wait nan is not valid"), (["--outbox", str(foreign)], "is a file")):
        out = console(sync, args, elsewhere)
        assert out.returncode in (1, 2) and says in out.stderr, out


def test_metrics_of_any_class_name_and_any_number_of_classes_all_reach_mlflow(tmp_path):
    """MLflow refuses a whole batch for one name it does not take (a class folder named `a,b` or `=x`) or for more
    than 1000 metrics (300 classes x 4 per-class metrics): test/acc went with it."""
    uri = _store(tmp_path)
    per_class = {f"test/{m}/{c}": 0.5 for m in ("precision", "recall", "f1", "support") for c in range(300)}
    odd = {"test/recall/a,b": 0.25, "test/recall/=HYPERLINK(1)": 0.75, 'test/recall/q"uote': 1.0}
    odd |= {"test/recall/a;b": 0.5, "test/recall/a_b": 0.125}  # three classes that were one name: one value kept
    with tracking.run(uri, "exp") as run_id:
        tracking.log_metrics({"test/acc": 0.9, **odd, **per_class})
    logged = get_run(uri, run_id).data.metrics
    assert logged["test/acc"] == 0.9 and logged["test/recall/a_b"] == 0.125 and len(logged) == 1 + len(odd) + 1200
    assert {k: v for k, v in logged.items() if k not in per_class and k not in ("test/acc", "test/recall/a_b")} == {
        tracking.metric_name(k): v for k, v in odd.items() if k != "test/recall/a_b"
    }
    assert re.fullmatch(r"test/recall/_HYPERLINK_1_-[0-9a-f]{6}", tracking.metric_name("test/recall/=HYPERLINK(1)"))


@pytest.mark.parametrize("command", ["runs", "reproduce"])
def test_runs_and_reproduce_with_the_server_away_are_one_line_at_once(tmp_path, command):
    import time

    from imgclf import cli
    from imgclf.tracking.server import free_port

    from ..conftest import console

    uri = f"http://alice:fake-pw-0d@127.0.0.1:{free_port()}"  # nothing listens there: MLflow retries for minutes
    argv = ["--uri", uri] + (["0123456789abcdef0123456789abcdef"] if command == "reproduce" else [])
    start = time.monotonic()
    done = console(getattr(cli, command), argv, tmp_path)
    assert time.monotonic() - start < 30  # seconds, not MLflow's retries (minutes)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert done.stderr.startswith("error: cannot reach the tracking server at http://127.0.0.1:")
    assert "fake-pw-0d" not in done.stdout + done.stderr


def test_a_run_on_a_server_never_reached_fails_after_one_wait_not_two(monkeypatch, caplog):
    """A server that never answered this process is not an outage to wait out again: one FIRST_CONTACT_S wait,
    then its one line; no "went away" warning."""
    from imgclf import tracking
    from imgclf.errors import MissingInput
    from imgclf.tracking import store
    from imgclf.tracking.server import free_port

    waits = []
    checked = store.wait_for_server
    monkeypatch.setattr(store, "FIRST_CONTACT_S", 0.5)
    monkeypatch.setattr(store, "wait_for_server", lambda uri: waits.append(uri) or checked(uri))
    monkeypatch.delenv(tracking.REACHED_ENV, raising=False)
    refused = pytest.raises(MissingInput, match="cannot reach the tracking server at http://127.0.0.1:")
    with refused, tracking.run(f"http://127.0.0.1:{free_port()}", "never"):
        pass
    assert len(waits) == 1 and "went away" not in caplog.text


def test_sync_with_the_server_away_is_one_line_at_once(tmp_path):
    from imgclf.cli import sync
    from imgclf.tracking.server import free_port

    from ..conftest import console

    uri = f"http://alice:fake-pw-0d@127.0.0.1:{free_port()}"  # nothing listens there
    done = console(sync, ["--uri", uri, "--outbox", str(tmp_path / "outbox"), "--wait", "1"], tmp_path)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert done.stderr.startswith("error: cannot reach the tracking server at http://127.0.0.1:")
    assert "fake-pw-0d" not in done.stdout + done.stderr


def test_the_team_server_refuses_what_it_cannot_serve_in_one_line_before_postgresql_starts(tmp_path):
    """`make mlflow-server` (python -m imgclf.tracking.server): a bad port, address or folder is one line, and
    nothing is started or made; a cluster PostgreSQL cannot start is one line naming what its log says."""
    import socket

    from imgclf.tracking.server import main

    from ..conftest import console

    home = tmp_path / "server"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        used = taken.getsockname()[1]
        for args, code, says in (
            (["--port", "99999"], 2, "--port 99999 is not valid: an integer from 1 to 65535"),
            (["--pg-port", "0"], 2, "--pg-port 0 is not valid: an integer from 1 to 65535"),
            (["--port", "5999", "--pg-port", "5999"], 2, "--port and --pg-port are both 5999: give each its own"),
            (["--workers", "0"], 2, "--workers 0 is not valid: an integer >= 1"),
            (["--port", str(used)], 1, f"127.0.0.1:{used} (Address already in use); give another --port"),
            (["--pg-port", str(used)], 1, "(Address already in use); give another --pg-port"),
            (["--host", "256.1.1.1"], 1, "cannot listen on 256.1.1.1:"),
            (["--host", ""], 1, "give --host an address of this machine"),
        ):
            done = console(main, ["--dir", str(home), *args], tmp_path)
            assert done.returncode == code and says in done.stderr, (args, done.stderr)
            assert done.stderr.count("\n") == 1 or code == 2, done.stderr  # argparse adds its usage
            assert not home.exists(), args
    afile = tmp_path / "afile"
    afile.write_text("mine")
    done = console(main, ["--dir", str(afile)], tmp_path)
    says = f"error: --dir {afile} is a file; give a folder (it is made if missing)\n"
    assert (done.returncode, done.stderr) == (1, says)
    assert afile.read_text() == "mine"


def test_a_cluster_postgresql_cannot_start_is_one_line_naming_its_log(tmp_path):
    from imgclf.tracking.server import free_port, main, pg_bin

    from ..conftest import console

    try:
        pg_bin("pg_ctl")
    except Exception as exc:  # PostgreSQL not installed: make test installs it
        pytest.skip(str(exc))
    data = tmp_path / "server" / "postgres" / "data"
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")  # a cluster folder without its configuration (as root, also one the
    # postgres user may not enter): PostgreSQL refuses either
    done = console(main, ["--dir", str(tmp_path / "server"), "--port", str(free_port()), "--pg-port", str(free_port())],
                   tmp_path)  # fmt: skip
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: PostgreSQL did not start in {tmp_path / 'server' / 'postgres'}: ")
    assert f"(log: {tmp_path / 'server' / 'postgres' / 'postgres.log'})" in done.stderr


def test_a_sqlite_store_under_home_is_the_one_in_home(monkeypatch, tmp_path):
    """`tracking.uri='sqlite:///~/x.db'` passed the checks (they expand ~) and MLflow made a folder named ~ in the
    project, a trap for a later `rm -r ~`."""
    from imgclf.tracking.store import resolve_uri, sqlite_path

    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_uri("sqlite:///~/x.db") == f"sqlite:///{tmp_path}/x.db"
    assert resolve_uri("sqlite+pysqlite:///~/x.db") == f"sqlite+pysqlite:///{tmp_path}/x.db"
    assert sqlite_path("sqlite+pysqlite:////a/b.db?mode=ro") == "/a/b.db" and sqlite_path("postgresql://h/db") is None


def test_a_store_another_process_is_making_is_waited_for_not_refused(tmp_path):
    """Trainings started together on a new store (`dvc queue start -j 3`): the first makes MLflow's tables, one
    migration at a time, under a lock on the file; a second that looked before taking the lock saw half the tables
    and refused the store as another program's database."""
    import fcntl
    import shutil
    import sqlite3
    import threading

    from imgclf.tracking.store import init_store

    from ..conftest import empty_mlflow_store

    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as con:  # the first process, part-way through MLflow's migrations
        con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
    con.close()
    whole = empty_mlflow_store(tmp_path / "whole" / "mlflow.db")
    failed: list[BaseException] = []

    def second() -> None:
        try:
            init_store(f"sqlite:///{db}")
        except BaseException as exc:  # noqa: BLE001 - what the second process would have died of
            failed.append(exc)

    with open(db, "ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(1)
        assert thread.is_alive() and not failed  # waiting for the first, not refusing its half-made store
        shutil.copyfile(whole, db)  # the first process's migrations done
        fcntl.flock(held, fcntl.LOCK_UN)
    thread.join(60)
    assert not thread.is_alive() and not failed, failed


def test_the_link_serve_shows_to_a_run_never_holds_a_database_password():
    from imgclf.tracking.queries import run_link

    link = run_link("postgresql+psycopg://team:S3cretPW@db.example:5432/mlflow", "abc")
    assert link == "mlflow ui --backend-store-uri postgresql+psycopg://***@db.example:5432/mlflow  (run abc)"
