"""A DVC experiment queue: a pair of queued experiments in dvc exp show and in the project's MLflow store."""

import json
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from .conftest import TINY, sh


def experiments(shown):
    """(params, metrics) of every experiment in `dvc exp show --json`, whatever the nesting."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            data = node.get("data")
            if isinstance(data, dict) and data.get("params") and data.get("rev") != "workspace":
                params = data["params"].get("params.yaml", {}).get("data", {})
                metrics = {k: v for f in (data.get("metrics") or {}).values() for k, v in (f.get("data") or {}).items()}
                found.append((data.get("name") or data.get("rev"), params, metrics))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(shown)
    return found


def queue_states(repo):
    """The states `dvc queue status` lists, through DVC's Python API in this process (polled each second: a DVC
    start-up per look saved)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        return [entry["status"] for entry in dvc.experiments.celery_queue.status()]


@pytest.mark.slow
def test_dvc_queue_runs_a_pair_shown_in_exp_show_and_mlflow(repo, env, tmp_path):
    from ..conftest import make_class_folders

    # a small folder data set: the queue is what is tested here, fetch and split of 20 images take no time
    folder = make_class_folders(tmp_path / "small", {"a": 10, "b": 10})
    data = ("data=folder", f"data.path={folder}", "data.split.sample_per_class=2")
    overrides = [arg for o in data for arg in ("-S", o)]
    # up to evaluate: the metrics compared below come from train and evaluate; export is tested elsewhere
    sh(["dvc", "exp", "run", "--queue", "-S", "optim.lr=0.002,0.0002", *TINY, *overrides, "evaluate"], repo, env)
    # the worker DVC starts keeps the command's output open until it stops (10 s after the queue empties): to a file
    with open(tmp_path / "queue-start.log", "w") as log:
        started = subprocess.run(["dvc", "queue", "start", "-j", "1"], cwd=repo, env=env, stdout=log, stderr=log)
    assert started.returncode == 0, (tmp_path / "queue-start.log").read_text()
    deadline = time.time() + 900
    # both ended, a count that only goes up: an entry moving from Queued to Running can be in neither list of a look
    while sum(state in ("Success", "Failed") for state in queue_states(repo)) < 2:
        assert time.time() < deadline, sh(["dvc", "queue", "status"], repo, env)
        time.sleep(1)
    status = sh(["dvc", "queue", "status"], repo, env)
    failed = [line.split()[0] for line in status.splitlines() if "Failed" in line]
    assert not failed, status + "".join(sh(["dvc", "queue", "logs", task], repo, env) for task in failed)
    shown = experiments(json.loads(sh(["dvc", "exp", "show", "--json"], repo, env)))
    by_lr = {params["optim"]["lr"]: metrics for _, params, metrics in shown}
    assert {0.002, 0.0002} <= set(by_lr)
    # each queued experiment ran in a temporary copy, yet logged into the project's store (DVC_ROOT)
    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("imgclf").experiment_id])
    logged = {r.data.params["optim.lr"]: r for r in runs}
    for lr in ("0.002", "0.0002"):
        assert logged[lr].info.status == "FINISHED"
        assert logged[lr].data.metrics["test/acc"] == pytest.approx(by_lr[float(lr)]["test/acc"])
        assert logged[lr].data.metrics["best/val/acc"] == pytest.approx(by_lr[float(lr)]["val/acc"])
