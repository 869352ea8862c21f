"""Hydra multiruns of the train stage: one MLflow parent run per sweep, its jobs as children, the best on it."""

import shlex
import shutil
import subprocess

import pytest
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from imgclf import cli

from ..conftest import ROOT, TINY_OVERRIDES, console, stage_main
from ..warm import forks, python

LOKY = "joblib.externals.loky.backend.popen_loky_posix"  # the module of joblib's workers


def multirun(project, env, *overrides, sweep_dir=None, returncode=0):
    uri = f"sqlite:///{project}/mlflow.db"
    sweep_dir = sweep_dir or project / "multirun" / "s1"
    args = ["--config-dir", str(ROOT / "conf"), "-m", *TINY_OVERRIDES, "trainer.epochs=1", f"tracking.uri={uri}"]
    args += [f"hydra.sweep.dir={sweep_dir}", *overrides]
    if "hydra/launcher=joblib" in overrides:  # jobs in processes of their own: the sweep itself is one too
        cmd = [python(), "-m", "imgclf.stages.train", *args]
        proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=900)
    else:  # Hydra's basic launcher runs the jobs in the sweep's process: the stage's main, in this one
        proc = stage_main("train", args, project)
    assert proc.returncode == returncode, proc.stdout[-2000:] + proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    parents = [r for r in runs if r.data.tags.get("imgclf.role") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1  # every job is a child of the sweep
    return parent, children, proc, sweep_dir


def best_of(children):
    return max((c for c in children if c.info.status == "FINISHED"), key=lambda c: c.data.metrics["kept/val/acc"])


def test_grid_of_three_jobs_is_three_children_under_one_parent(tiny_project, project_env):
    # joblib: two jobs at a time in their own processes, every one recorded (SQLite locks retried)
    workers = forks(LOKY)
    parent, children, _, sweep_dir = multirun(
        tiny_project, project_env, "optim.lr=0.001,0.0003,0.0001", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"
    )
    assert forks(LOKY) == workers + 2  # joblib's two workers ran in the warm interpreter too (tests/warm.py)
    assert sorted(c.data.params["optim.lr"] for c in children) == ["0.0001", "0.0003", "0.001"]
    assert sorted(c.info.run_name for c in children) == [
        "test_resnet-tiny-lr1e-3-b8",
        "test_resnet-tiny-lr1e-4-b8",
        "test_resnet-tiny-lr3e-4-b8",
    ]
    assert {c.data.tags["imgclf.sweep"] for c in children} == {str(sweep_dir), parent.data.tags["imgclf.sweep"]}
    assert all(c.info.status == "FINISHED" for c in children) and parent.info.status == "FINISHED"
    assert parent.data.params["sweep.launcher"] == "JoblibLauncher"
    assert parent.info.run_name == "sweep-lr" and parent.data.params["sweep.space.optim.lr"] == "0.001,0.0003,0.0001"
    best = best_of(children)
    assert parent.data.tags["imgclf.best_run_id"] == best.info.run_id
    assert parent.data.metrics["kept/val/acc"] == best.data.metrics["kept/val/acc"]
    assert parent.data.tags["best.optim.lr"] == best.data.params["optim.lr"]
    assert parent.data.metrics["sweep/trials"] == 3 and parent.data.metrics["sweep/failed"] == 0
    from imgclf.metric_names import METRICS, metric_for

    assert all(metric_for(name) for name in parent.data.metrics), "the docs' metrics reference lacks one"
    assert all(m.pattern in parent.data.metrics for m in METRICS if m.stage == "sweep parent")
    for job in ("0", "1", "2"):  # each job wrote its own checkpoint; the DVC-declared paths stay untouched
        assert (sweep_dir / job / "models" / "model.pt").is_file()
    assert not (tiny_project / "models").exists()

    # the terminal compare view agrees with the store
    uri = f"sqlite:///{tiny_project}/mlflow.db"
    args = ["--uri", uri, "--experiment", "test", "--parent", parent.info.run_id, "--metric", "kept/val/acc"]
    table = console(cli.runs, [*args, "--format", "csv"], tiny_project)
    assert table.returncode == 0, table.stderr
    rows = table.stdout.strip().splitlines()
    assert len(rows) == 4 and "optim.lr" in rows[0] and "trainer.batch_size" not in rows[0]
    assert float(rows[1].split(",")[rows[0].split(",").index("kept/val/acc")]) == best.data.metrics["kept/val/acc"]
    best_cli = console(
        cli.runs,
        ["--uri", uri, "--experiment", "test", "--sweep", str(sweep_dir), "--metric", "kept/val/acc", "--best"],
        tiny_project,
    )
    assert best_cli.stdout.splitlines()[0] == best.info.run_id
    assert (
        str(sweep_dir / best.data.tags["imgclf.checkpoint"].split("/")[-3] / "models" / "model.pt") in best_cli.stdout
    )


def test_a_failing_job_is_a_failed_run_and_the_sweep_goes_on(tiny_project, project_env):
    parent, children, proc, _ = multirun(tiny_project, project_env, "finetune.strategy=partial,full")
    status = {c.data.params.get("finetune.strategy"): c.info.status for c in children}
    assert status == {"partial": "FAILED", "full": "FINISHED"}
    assert "finetune.strategy='partial' is not valid: one of: full, gradual, head" in proc.stderr
    refused = next(c for c in children if c.info.status == "FAILED")
    assert refused.data.tags["imgclf.error"] == "finetune.strategy='partial' is not valid: one of: full, gradual, head"
    assert parent.data.metrics["sweep/failed"] == 1 and parent.data.metrics["sweep/finished"] == 1


def test_a_sweep_where_every_job_fails_exits_nonzero(tiny_project, project_env):
    parent, children, proc, _ = multirun(tiny_project, project_env, "finetune.strategy=partial,frozen", returncode=1)
    assert [c.info.status for c in children] == ["FAILED", "FAILED"] and parent.info.status == "FAILED"
    assert "error: all 2 jobs of the sweep failed" in proc.stderr


def test_optuna_search_runs_three_trials_and_logs_the_best(tiny_project, project_env):
    parent, children, _, sweep_dir = multirun(
        tiny_project, project_env, "+sweep=optuna_lr_wd", "hydra.sweeper.n_trials=3"
    )
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    assert len({c.data.params["optim.lr"] for c in children}) == 3  # TPE sampled three different rates
    best = best_of(children)
    assert parent.data.metrics["kept/val/acc"] == best.data.metrics["kept/val/acc"]
    assert parent.data.params["sweep.sweeper"] == "ImgclfOptunaSweeper"
    assert parent.data.params["sweep.direction"] == "maximize" and parent.data.params["sweep.pruner"] == "median"
    assert parent.data.tags["imgclf.study"].startswith("lr_wd-")
    assert parent.data.params["sweep.space.optim.lr"] == "tag(log, interval(1e-5, 3e-3))"
    assert (sweep_dir / "optimization_results.yaml").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{tiny_project}/mlflow.db")
    logged = [a.path for a in client.list_artifacts(parent.info.run_id, "sweep")]
    assert logged == ["sweep/optimization_results.yaml", "sweep/optuna_history.png", "sweep/optuna_importance.png"]
    assert pytest.approx(float(parent.data.tags["best.optim.lr"])) == float(best.data.params["optim.lr"])

    # the winning trial as a DVC experiment, in one command, whose overrides compose
    uri = f"sqlite:///{tiny_project}/mlflow.db"
    args = ["--uri", uri, "--experiment", "test", "--parent", parent.info.run_id, "--best", "--as-overrides"]
    shown = console(cli.runs, args, ROOT).stdout.strip()  # where conf/ is, as DVC composes it
    keys = ("optim.lr", "optim.weight_decay", "trainer.label_smoothing")
    assert all(f"-S {k}={best.data.params[k]}" in shown for k in keys)
    assert console(cli.check, shlex.split(shown)[3:], ROOT).returncode == 0  # as dvc exp run -S composes them


def test_a_sweep_whose_tracking_server_is_out_of_reach_stops_in_one_line(tiny_project, monkeypatch):
    """The parent run cannot open: one line and exit 1, no job launched into the same wall (Hydra turns a
    callback's exception into a warning and goes on)."""
    from imgclf.tracking import server, store

    monkeypatch.setattr(store, "FIRST_CONTACT_S", 0.5)
    uri = f"http://127.0.0.1:{server.free_port()}"  # nothing listens there
    args = ["--config-dir", str(ROOT / "conf"), "-m", *TINY_OVERRIDES, f"tracking.uri={uri}", "optim.lr=0.1,0.01"]
    done = stage_main("train", [*args, f"hydra.sweep.dir={tiny_project / 'multirun/s'}"], tiny_project)
    assert done.returncode == 1 and done.stderr.strip().startswith("error: cannot reach the tracking server at")
    assert done.stderr.strip().count("\n") == 0 and not (tiny_project / "multirun/s/0").exists()


@pytest.fixture
def workspace_project(tiny_project):
    """tiny_project with its own conf/ and a params.yaml composed on test_resnet (what `dvc exp run -S` leaves):
    the workspace a sweep started by hand carries."""
    from imgclf.config import params_yaml

    shutil.copytree(ROOT / "conf", tiny_project / "conf")
    (tiny_project / "params.yaml").write_text(params_yaml(list(TINY_OVERRIDES), tiny_project))
    return tiny_project


def test_the_best_jobs_overrides_carry_the_workspace_and_the_swept_group(workspace_project):
    """A sweep of a config group on the workspace's model: the printed `dvc exp run -S ...` names the group's
    option and the workspace's model, and composes conf/ (as DVC does) into the best job's config exactly."""
    sweep_dir = workspace_project / "multirun" / "s1"
    args = ["-m", "optim=adamw,sgd", "trainer.epochs=1", f"hydra.sweep.dir={sweep_dir}"]
    done = stage_main("train", args, workspace_project)
    assert done.returncode == 0, done.stderr[-3000:]
    uri = f"sqlite:///{workspace_project}/mlflow.db"
    args = ["--uri", uri, "--experiment", "test", "--sweep", str(sweep_dir), "--metric", "kept/val/acc"]
    best = console(cli.runs, [*args, "--best"], workspace_project).stdout.splitlines()[0]
    shown = console(cli.runs, [*args, "--best", "--as-overrides"], workspace_project)
    assert shown.returncode == 0, shown.stderr
    words = shlex.split(shown.stdout.strip())
    assert words[:3] == ["dvc", "exp", "run"] and set(words[3::2]) == {"-S"}
    sets = words[4::2]
    client = MlflowClient(tracking_uri=uri)
    optim = "sgd" if client.get_run(best).data.params["optim._target_"] == "torch.optim.SGD" else "adamw"
    assert {f"optim={optim}", "model=timm", "model.name=test_resnet", "model.image_size=32"} <= set(sets)
    from imgclf.config import compose
    from imgclf.tracking import artifact_text

    ran = yaml.safe_load(artifact_text(uri, best, "train/config.yaml"))
    assert OmegaConf.to_container(compose(sets, workspace_project)) == ran


def test_a_sweep_files_keys_beat_the_workspaces(workspace_project):
    """`+sweep=models` on a workspace composed on timm: every job on its own model, not the workspace's. The jobs
    are refused before they train (finetune.strategy=partial): the FAILED run each records holds its config."""
    sweep_dir = workspace_project / "multirun" / "s1"
    args = ["-m", "+sweep=models", "finetune.strategy=partial", f"hydra.sweep.dir={sweep_dir}"]
    done = stage_main("train", args, workspace_project)
    assert done.returncode == 1 and "error: all 4 jobs of the sweep failed" in done.stderr, done.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace_project}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    jobs = [r for r in runs if r.data.tags.get("imgclf.role") != "sweep"]
    assert sorted(r.data.params["model.name"] for r in jobs) == ["alexnet", "alexnet", "vgg16", "vgg16"]
    assert all(r.data.params["data.name"] == "tiny" for r in jobs)  # the workspace's other keys still hold
    carried = next(line for line in done.stderr.splitlines() if line.startswith("workspace: "))
    assert "data.name='tiny'" in carried and "model" not in carried  # the line names what the jobs still carry


DEAD_CONTROLLER = """\
ClusterName=nowhere
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={port}
NodeName={node} NodeAddr=127.0.0.1 CPUs=1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES State=UP
"""


@pytest.mark.parametrize("cluster", ["no sbatch", "no controller"])
def test_a_slurm_sweep_without_a_cluster_stops_in_one_line_leaving_nothing(cluster, tiny_project, monkeypatch):
    """+launcher=slurm where SLURM's commands are missing, or where no controller answers: one line naming what is
    missing and what to do, exit 1, before the sweep's folder or its parent run exist (submitit failed with a
    traceback once both did)."""
    import shutil
    import socket

    from imgclf.tracking import server

    if cluster == "no sbatch":
        monkeypatch.setenv("PATH", str(tiny_project / "bin"))  # no such folder: nothing on PATH
        expected = "error: +launcher=slurm: sbatch, srun, scontrol not found on PATH; run the sweep on a SLURM login"
    else:  # the commands, and a slurm.conf naming a controller on a port where nothing listens
        if not all(map(shutil.which, ("sbatch", "srun", "scontrol"))):
            pytest.skip("SLURM's client commands are not installed (make slurm)")
        conf = tiny_project / "slurm.conf"
        conf.write_text(DEAD_CONTROLLER.format(node=socket.gethostname().split(".")[0], port=server.free_port()))
        monkeypatch.setenv("SLURM_CONF", str(conf))
        expected = "error: +launcher=slurm: no SLURM controller answers (scontrol ping: Slurmctld(primary) at"
    uri = f"sqlite:///{tiny_project}/mlflow.db"
    args = ["--config-dir", str(ROOT / "conf"), "-m", *TINY_OVERRIDES, f"tracking.uri={uri}", "optim.lr=0.1,0.01"]
    sweep_dir = tiny_project / "multirun" / "s"
    done = stage_main("train", [*args, "+launcher=slurm", f"hydra.sweep.dir={sweep_dir}"], tiny_project)
    assert done.returncode == 1 and done.stderr.startswith(expected), done.stderr[-3000:]
    assert done.stderr.strip().count("\n") == 0 and "hydra/launcher=joblib" in done.stderr
    assert not (tiny_project / "multirun").exists()
    client = MlflowClient(tracking_uri=uri)
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])  # no parent run left


@pytest.mark.parametrize(
    "launcher, says",
    [
        (
            ["hydra/launcher=joblb"],
            "error: unknown hydra/launcher 'joblb' (did you mean hydra/launcher=joblib?); choose one of: basic, joblib",
        ),
        (
            ["hydra/launcher=joblib", "hydra.launcher.n_jobz=2"],
            "error: unknown key 'hydra.launcher.n_jobz' (did you mean hydra.launcher.n_jobs?); hydra.launcher has: ",
        ),
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=two"], "error: hydra.launcher.n_jobs=two is not valid: "),
        (
            ["+launcher=slurm", "hydra.launcher.partitionn=gpu"],
            "error: unknown key 'hydra.launcher.partitionn' (did you mean hydra.launcher.partition?); ",
        ),
    ],
)
def test_a_launcher_setting_that_does_not_exist_is_one_line_before_the_sweep(launcher, says, tiny_project):
    """Hydra's own settings under -m (the launcher, its keys and their types) are checked with the config's: one
    line naming what is valid, exit 2, before the sweep's folder or a run exist."""
    uri = f"sqlite:///{tiny_project}/mlflow.db"
    args = ["--config-dir", str(ROOT / "conf"), "-m", *TINY_OVERRIDES, f"tracking.uri={uri}", "optim.lr=0.1,0.01"]
    done = stage_main("train", [*args, *launcher, f"hydra.sweep.dir={tiny_project / 'multirun'}"], tiny_project)
    assert done.returncode == 2 and done.stderr.startswith(says), done.stderr[-3000:]
    assert done.stderr.strip().count("\n") == 0
    assert not (tiny_project / "multirun").exists()
    client = MlflowClient(tracking_uri=uri)
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_a_sweep_of_a_stage_that_opens_no_run_succeeds_without_a_parent_run(tiny_project):
    """`split -m seed=1` split, then said `error: all 0 jobs of the sweep failed` and exited 1: the parent run waited
    for children only train makes."""
    from ..conftest import TINY_DATA

    args = ["--config-dir", str(ROOT / "conf"), *TINY_DATA, f"tracking.uri=sqlite:///{tiny_project}/mlflow.db"]
    done = stage_main("split", ["-m", *args, "seed=1", f"hydra.sweep.dir={tiny_project}/multirun/s"], tiny_project)
    assert done.returncode == 0 and "jobs of the sweep failed" not in done.stderr, done.stderr[-2000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tiny_project}/mlflow.db")
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
