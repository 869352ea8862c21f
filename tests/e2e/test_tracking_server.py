"""A team's tracking server for real: PostgreSQL (its own cluster, on a loopback port) behind `mlflow server`.

Training outlives the server being killed (its whole process group, SIGKILL) and started again; a sweep of parallel
jobs and SIGTERM go to the same server; no credential from the environment or the URI reaches anything written,
the server's database included. `make test` installs PostgreSQL from Debian's packages and sets
IMGCLF_REQUIRE_SERVERS=1, so in CI a missing PostgreSQL fails instead of skipping.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from imgclf.tracking.server import MlflowServer, free_port, pg_bin

from ..conftest import ROOT, TINY_OVERRIDES
from ..warm import python

pytestmark = pytest.mark.slow
SECRETS = {"KAGGLE_KEY": "fake-kaggle-key-7d1e", "MLFLOW_TRACKING_PASSWORD": "fake-mlflow-pw-93ab"}
URI_SECRET = "fake-uri-pw-c4f0"


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    home = tmp_path_factory.mktemp("mlflow-server")
    # one uvicorn process (the app in the server's own): a team's default two start a second copy of MLflow at each
    # of this file's four starts, seconds of CPU each, and change nothing the tests look at
    srv = MlflowServer(postgres.uri, home / "artifacts", free_port(), log=home / "server.log", workers=1).start()
    yield srv
    srv.kill()


def stage(name, uri, *overrides):
    args = [python(), "-m", f"imgclf.stages.{name}", "--config-dir", str(ROOT / "conf"), *TINY_OVERRIDES]
    return [*args, f"tracking.uri={uri}", *overrides]


def wait_until(condition, proc, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def runs_of(uri, experiment):
    client = MlflowClient(tracking_uri=uri)
    return client, client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_training_outlives_the_server_killed_and_restarted_and_no_secret_is_written(
    tiny_project, project_env, server, postgres, tmp_path_factory
):
    outbox = tmp_path_factory.mktemp("outbox")
    # MLflow's own HTTP retries give up at once: the outage outlasts them, as a 10-minute one outlasts the default 7
    env = dict(project_env, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5", **SECRETS)
    env["MLFLOW_TRACKING_USERNAME"] = "alice"
    uri = server.uri.replace("http://", f"http://alice:{URI_SECRET}@")
    common = ("tracking.experiment=outage", f"tracking.outbox={outbox}", "tracking.outage_wait_s=600")
    proc = subprocess.Popen(
        stage("train", uri, "trainer.epochs=12", *common),
        cwd=tiny_project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until((tiny_project / "checkpoints" / "last.pt").is_file, proc)  # epoch 1 done, its metrics sent
    server.kill()  # the server, its workers and its job runner, with no chance to clean up
    down = time.monotonic()
    wait_until((tiny_project / "models" / "run.json").is_file, proc)  # training went on to the end without it
    time.sleep(2)
    assert proc.poll() is None  # ... and now waits for the server, up to tracking.outage_wait_s
    server.start()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    outage = time.monotonic() - down
    assert "tracking server unreachable" in out + err and "tracking server back" in out + err

    run_id = json.loads((tiny_project / "models" / "run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED", f"after a {outage:.0f} s outage"
    assert sorted(m.step for m in client.get_metric_history(run_id, "val/acc")) == list(range(1, 13))
    assert "best/val/acc" in run.data.metrics and run.data.params["trainer.epochs"] == "12"
    artifacts = {a.path for a in client.list_artifacts(run_id, "train")}
    assert {"train/history.csv", "train/metrics.json"} <= artifacts
    assert not any(outbox.rglob("journal.jsonl"))  # everything delivered, nothing left to sync

    # evaluate reopens the same run on the server
    done = subprocess.run(stage("evaluate", uri, *common), cwd=tiny_project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test/acc" in client.get_run(run_id).data.metrics

    # the commands that quote the URI back (no such experiment, an experiment without runs) quote it without it
    from imgclf.cli import runs

    from ..conftest import console

    client.create_experiment("empty")
    quoted = [console(runs, ["--uri", uri, "--experiment", name], tiny_project) for name in ("nosuch", "empty")]
    assert [q.returncode for q in quoted] == [1, 1] and "no runs in experiment 'empty' of http://" in quoted[1].stderr

    # no secret anywhere: what the stages printed, every file they wrote, the artifacts, the database
    dump = subprocess.run(
        [pg_bin("pg_dump"), "-h", postgres.host, "-p", str(postgres.port), "-U", "postgres", "mlflow"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert run_id.replace("-", "") in dump.replace("-", "")  # the dump holds the run: the grep below means something
    written = [out, err, done.stdout, done.stderr, dump, *(q.stdout + q.stderr for q in quoted)]
    for root in (tiny_project, server.artifacts, outbox):
        written += [p.read_bytes().decode("latin-1") for p in Path(root).rglob("*") if p.is_file()]
    for secret in (*SECRETS.values(), URI_SECRET):
        assert not any(secret in text for text in written), secret


def test_a_parallel_sweep_outlives_an_outage_and_sigterm_marks_killed_on_the_server(tiny_project, project_env, server):
    env = dict(project_env, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    sweep = stage("train", server.uri, "tracking.experiment=sweep", "optim.lr=0.001,0.0003,0.0001", "trainer.epochs=8")
    sweep.insert(sweep.index("--config-dir"), "-m")
    sweep += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tiny_project}/multirun"]
    proc = subprocess.Popen(sweep, cwd=tiny_project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = MlflowClient(tracking_uri=server.uri)

    def a_child_has_trained_an_epoch():
        runs = runs_of(server.uri, "sweep")[1] if client.get_experiment_by_name("sweep") else []
        return any(client.get_metric_history(r.info.run_id, "val/acc") for r in runs)

    wait_until(a_child_has_trained_an_epoch, proc)
    server.kill()  # two jobs mid-run, the third not started: it starts (or waits to) while the server is away
    time.sleep(3)  # an outage the running jobs and the starting one all meet
    server.start()
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    assert "database is locked" not in out + err
    _, runs = runs_of(server.uri, "sweep")
    parent = next(r for r in runs if r.data.tags.get("imgclf.role") == "sweep")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    found = [(r.info.run_id, r.info.status, r.data.tags.get("mlflow.parentRunId")) for r in runs]
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children), (found, err[-3000:])
    for child in children:
        assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "val/acc")) == list(range(1, 9))
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/finished"] == 3

    proc = subprocess.Popen(
        stage("train", server.uri, "tracking.experiment=sigterm", "trainer.epochs=200"),
        cwd=tiny_project,
        env=project_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = tiny_project / "checkpoints" / "last.pt"
    wait_until(last.is_file, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode != 0 and last.is_file()  # the last checkpoint is kept for a resume
    _, (killed,) = runs_of(server.uri, "sigterm")
    assert killed.info.status == "KILLED"


def test_a_run_whose_server_goes_away_as_it_opens_waits_it_out(server, tmp_path, monkeypatch):
    """A sweep's job starting as an outage begins: the server answered its check, then went away before the run was
    created. The job waits for it (it has reached this server: tracking.outage_wait_s), and its run is there."""
    import threading

    from imgclf import tracking
    from imgclf.tracking import store

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the outage is ours to wait out, not MLflow's retries
    monkeypatch.setenv(tracking.REACHED_ENV, server.uri)  # as a sweep sets it for its jobs
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the run's outbox
    checked, restart = store.wait_for_server, threading.Timer(2, server.start)

    def check_then_outage(uri):  # the first check answered: the server goes away for 2 s
        checked(uri)
        if restart.ident is None:
            server.kill()
            restart.start()

    monkeypatch.setattr(store, "wait_for_server", check_then_outage)
    try:
        with tracking.run(server.uri, "opened-in-an-outage") as run_id:
            tracking.log_metrics({"m": 1.0})
    finally:
        restart.join()
    assert MlflowClient(tracking_uri=server.uri).get_run(run_id).info.status == "FINISHED"


def test_runs_started_together_on_a_new_experiment_of_the_server_all_finish(server, tmp_path, project_env):
    script = (
        "from imgclf import tracking\n"
        f"with tracking.run({server.uri!r}, 'started-together') as run_id:\n"
        "    tracking.log_metrics({'m': 1.0})\n"
        "print(run_id)\n"
    )
    env = {**project_env, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # the outboxes: this test's own
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )  # fmt: skip
        for _ in range(3)
    ]
    outs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], [err[-1500:] for _, err in outs]
    client = MlflowClient(tracking_uri=server.uri)
    runs = client.search_runs([client.get_experiment_by_name("started-together").experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(out.split()[-1] for out, _ in outs)  # MLflow prints first
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_two_sweep_workers_share_one_study_in_the_teams_postgresql(tiny_project, project_env, postgres):
    """The same Optuna sweep started twice against the cluster's optuna database: 8 trials in all, none twice,
    every one a child of one MLflow parent run."""
    import optuna
    from optuna.trial import TrialState

    from ..stages.test_study import sweep_runs, two_workers

    two_workers(tiny_project, dict(project_env, IMGCLF_OPTUNA_STORAGE=postgres.optuna_uri), 8)
    assert not (tiny_project / "optuna.db").exists()  # the study lived in the server's database
    [summary] = optuna.get_all_study_summaries(postgres.optuna_uri)
    study = optuna.load_study(study_name=summary.study_name, storage=postgres.optuna_uri)
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 8
    parents, children = sweep_runs(tiny_project)
    assert len(parents) == 1 and len(children) == 8 and all(r.info.status == "FINISHED" for r in children)
    assert len({(r.data.params["optim.lr"], r.data.params["optim.weight_decay"]) for r in children}) == 8
