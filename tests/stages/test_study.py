"""Optuna sweeps whose study lives in a database (hydra/sweeper=imgclf_optuna): a killed sweep resumes, several
workers share one study, a trial that falls behind is pruned. Real processes, the project's SQLite study file."""

import contextlib
import shutil
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.trial import TrialState

from hydra_plugins.imgclf_optuna_sweeper import sweeper as plugin
from imgclf.training import pruning

from ..conftest import ROOT, TINY_OVERRIDES, stage_main
from ..warm import kill, python


def command(project, n_trials, *overrides, space=("+sweep=optuna_lr_wd",)):
    """A sweep's command line, in the warm interpreter (tests/warm.py; a test SIGKILLs it with `kill`)."""
    return [
        python(),
        "-m",
        "imgclf.stages.train",
        "--config-dir",
        str(ROOT / "conf"),
        "-m",
        *TINY_OVERRIDES,
        "trainer.epochs=1",
        f"tracking.uri=sqlite:///{project}/mlflow.db",
        *space,
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.heartbeat_s=1",
        *overrides,
    ]


def the_study(project):
    storage = f"sqlite:///{project}/optuna.db"
    [summary] = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def states(study):
    return [t.state for t in study.get_trials(deepcopy=False)]


def sweep_runs(project):
    client = MlflowClient(tracking_uri=f"sqlite:///{project}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    parents = [r for r in runs if r.data.tags.get("imgclf.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    return parents, children


def run(cmd, project):
    """A sweep through the train stage's main in this process (Hydra's basic launcher runs the trials in it): the
    sweeps killed or run side by side above and below are real processes."""
    done = stage_main("train", cmd[3:], project)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def running_fourth(db):
    """Whether trial 4 runs, read from the study's file without writing to it (Optuna's own reader would create the
    schema the sweep is creating: two writers)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return con.execute("SELECT state FROM trials WHERE number = 3").fetchall() == [("RUNNING",)]
    except sqlite3.OperationalError:  # not there yet, no tables yet, or locked for a moment
        return False


def test_a_killed_sweep_resumes_where_it_stopped(tiny_project, project_env):
    cmd = command(tiny_project, 6, "hydra.sweeper.pruner=none", f"hydra.sweep.dir={tiny_project}/multirun/first")
    first = subprocess.Popen(cmd, cwd=tiny_project, env=project_env)
    deadline = time.time() + 300
    while True:  # SIGKILL once trial 3 has finished and trial 4 runs
        assert first.poll() is None and time.time() < deadline, "the sweep ended before it could be killed"
        if running_fourth(tiny_project / "optuna.db"):
            break
        time.sleep(0.2)
    kill(first)
    _, children = sweep_runs(tiny_project)
    before = {r.info.run_id for r in children if r.info.status == "FINISHED"}
    assert len(before) == 3

    cmd[-1] = f"hydra.sweep.dir={tiny_project}/multirun/again"  # the same sweep, rerun later
    run(cmd, tiny_project)
    study = the_study(tiny_project)
    assert states(study)[:3] == [TrialState.COMPLETE] * 3  # not rerun
    assert states(study)[3] == TrialState.FAIL  # the killed trial: failed by its missing heartbeat
    assert states(study).count(TrialState.COMPLETE) == 6  # its budget asked again
    parents, children = sweep_runs(tiny_project)
    finished = {r.info.run_id for r in children if r.info.status == "FINISHED"}
    assert before <= finished and len(finished) == 6  # trials 1-3 kept their runs
    assert len(parents) == 1 and {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert parents[0].info.status == "FINISHED" and parents[0].data.metrics["sweep/finished"] == 6


def two_workers(project, env, n_trials):
    """The same sweep started twice at once, as two shells or two machines would; returns what each printed."""
    workers = [
        subprocess.Popen(
            command(project, n_trials, "hydra.sweeper.pruner=none", f"hydra.sweep.dir={project}/multirun/w{i}"),
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in (1, 2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    return outputs


def test_two_workers_share_one_study_without_duplicates(tiny_project, project_env):
    outputs = two_workers(tiny_project, project_env, 8)
    study = the_study(tiny_project)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 8  # n_trials is the study's, not each worker's
    surplus = [t for t in study.trials if t.state != TrialState.COMPLETE]
    assert all(plugin.SURPLUS in t.user_attrs for t in surplus)  # at most a trial asked as the last slot went
    assert all(len(o.split("Launching 1 jobs locally")) > 1 for o in outputs)  # both workers ran trials
    parents, children = sweep_runs(tiny_project)
    assert len(parents) == 1 and len(children) == 8 and all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    params = {(r.data.params["optim.lr"], r.data.params["optim.weight_decay"]) for r in children}
    assert len(params) == 8  # no trial run twice


def test_trials_behind_the_median_are_pruned(tiny_project, project_env):
    # a rate of 1e-9 never learns: after the two trials the median pruner always lets finish, such trials stop at
    # their first epoch; a rate that learns goes on to the last
    cmd = command(
        tiny_project,
        6,
        "trainer.epochs=3",
        "hydra.sweeper.pruner=median",
        "hydra.sweeper.sampler.name=random",
        "hydra.sweeper.sampler.seed=0",
        f"hydra.sweep.dir={tiny_project}/multirun/p",
        space=("hydra/sweeper=imgclf_optuna", "optim.lr=choice(1e-9,0.003)"),
    )
    run(cmd, tiny_project)
    study = the_study(tiny_project)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.params["optim.lr"] == 1e-9 for t in pruned)
    assert all(t.user_attrs[plugin.PRUNED_AT] < 3 for t in pruned)
    parents, children = sweep_runs(tiny_project)
    tagged = [r for r in children if "imgclf.pruned" in r.data.tags]
    assert len(tagged) == len(pruned) and all(r.info.status == "FINISHED" for r in tagged)
    assert all(r.data.metrics["epochs_run"] < 3 if "epochs_run" in r.data.metrics else True for r in tagged)
    assert parents[0].data.metrics["sweep/pruned"] == len(pruned)


def test_the_plugin_and_the_train_stage_name_the_same_variables():
    for name in ("STORAGE_ENV", "STUDY_ENV", "TRIAL_ENV", "PRUNER_ENV", "PRUNED_AT"):
        assert getattr(plugin, name) == getattr(pruning, name), name


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.lr=tag(log, interval(1e-5, 3e-3))", optuna.distributions.FloatDistribution(1e-5, 3e-3, log=True)),
        ("trainer.batch_size=range(16,80,16)", optuna.distributions.IntDistribution(16, 64, step=16)),
        ("finetune=head,full", optuna.distributions.CategoricalDistribution(["head", "full"])),
        ("trainer.epochs=tag(int, interval(2, 8))", optuna.distributions.IntDistribution(2, 8)),
        ("optim.momentum=interval(0.8, 0.99)", optuna.distributions.FloatDistribution(0.8, 0.99)),
    ],
)
def test_hydra_sweep_syntax_becomes_optuna_distributions(override, expected):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    [parsed] = OverridesParser.create().parse_overrides([override])
    assert plugin.distribution(parsed) == expected


def test_the_study_name_follows_the_sweep_not_its_size_or_folder():
    conf = plugin.ImgclfOptunaSweeperConf()
    key = plugin.study_key(["optim.lr=interval(0.1,1)"], ["model=timm"], conf)
    assert key == plugin.study_key(
        ["optim.lr=interval(0.1,1)"], ["model=timm"], plugin.ImgclfOptunaSweeperConf(n_trials=50)
    )
    assert key != plugin.study_key(["optim.lr=interval(0.1,2)"], ["model=timm"], conf)
    assert key != plugin.study_key(["optim.lr=interval(0.1,1)"], ["model=vgg16"], conf)
    assert key != plugin.study_key(["optim.lr=interval(0.1,1)"], ["model=timm"], conf, {"data": "1", "code": "2"})


def test_a_study_resumed_on_other_data_is_a_new_study(tiny_project):
    """After the split changed (a label fixed), the same sweep command resumed the old study: trials of two data
    sets in one study, and the best chosen across them."""
    run(command(tiny_project, 1), tiny_project)
    train = tiny_project / "data/tiny/split/train.csv"
    path, label = train.read_text().splitlines()[1].split(",")  # under the header
    fixed = {"a": "b", "b": "c", "c": "a"}[label]
    train.write_text(train.read_text().replace(f"{path},{label}\n", f"{path},{fixed}\n", 1))  # what split writes
    run(command(tiny_project, 1), tiny_project)
    studies = optuna.get_all_study_summaries(f"sqlite:///{tiny_project}/optuna.db")
    assert [s.n_trials for s in studies] == [1, 1], [(s.study_name, s.n_trials) for s in studies]
    # and after an edit to conf/ (another default, here grad_clip): it resumed the study, trials of two configs
    conf = tiny_project / "conf"
    shutil.copytree(ROOT / "conf", conf)
    default = conf / "trainer" / "default.yaml"
    default.write_text(default.read_text().replace("grad_clip: null", "grad_clip: 0.5", 1))
    edited = command(tiny_project, 1)
    edited[edited.index(str(ROOT / "conf"))] = str(conf)
    run(edited, tiny_project)
    studies = optuna.get_all_study_summaries(f"sqlite:///{tiny_project}/optuna.db")
    assert [s.n_trials for s in studies] == [1, 1, 1], [(s.study_name, s.n_trials) for s in studies]


def test_a_study_extended_in_the_same_sweep_folder_leaves_the_finished_trials_outputs_alone(tiny_project):
    """The jobs were numbered from 0 at every run: raising n_trials with the same hydra.sweep.dir (a worker's fixed
    folder) replaced the first trials' models, reports and logs with the new trials'."""
    where = f"hydra.sweep.dir={tiny_project}/multirun/w0"
    run(command(tiny_project, 1, where), tiny_project)
    first = (tiny_project / "multirun/w0/0/models/model.pt").read_bytes()
    run(command(tiny_project, 2, where), tiny_project)
    assert (tiny_project / "multirun/w0/0/models/model.pt").read_bytes() == first
    assert (tiny_project / "multirun/w0/1/models/model.pt").is_file()


def test_a_storage_url_is_shown_without_its_secrets_and_one_in_its_query_is_refused(tiny_project, capsys):
    """The sweeper masked user:pw@ by a regex of its own: a raw @ in the password left the rest shown, and a
    ?password= in the storage URL was taken and logged."""
    from imgclf.credentials import hide

    assert hide("postgresql://me:p@ss!s3cret@db:5432/optuna") == "postgresql://***@db:5432/optuna"
    assert hide("sqlite:///st.db?password=s3cret") == "sqlite:///st.db?password=***"
    storage = f"hydra.sweeper.storage='sqlite:///{tiny_project}/st.db?password=s3cret'"
    done = stage_main("train", command(tiny_project, 1, storage)[3:], tiny_project)
    assert done.returncode == 2 and done.stderr.startswith("error: hydra.sweeper.storage: a secret is not taken")
    assert "s3cret" not in done.stdout + done.stderr and not (tiny_project / "st.db").exists()


def test_a_trial_asked_by_a_worker_killed_before_its_job_started_is_failed(tmp_path):
    """Between asking a trial and starting its job's heartbeat thread a worker can die: the trial has a heartbeat
    from the moment it is asked, so it goes stale and its budget comes back."""
    sweeper = plugin.ImgclfOptunaSweeper(
        storage=f"sqlite:///{tmp_path}/optuna.db",
        n_trials=2,
        heartbeat_s=1,
        params={"optim.lr": "interval(1e-4, 1e-2)"},
    )
    sweeper.config = OmegaConf.create({"paths": {"data": str(tmp_path / "data")}, "data": {"name": "tiny"}})  # setup's
    study, *_ = sweeper._study([])
    orphan = sweeper._next_trial(study)  # asked, and the worker dies here: no job, no heartbeat thread
    assert sweeper._counted(study) == (1, 1)
    unbeaten = study.ask()  # another worker asked it and died before even its first heartbeat
    assert sweeper._counted(study) == (2, 2)
    deadline = time.monotonic() + 30  # the grace period: 3 heartbeats missed (SQLite keeps whole seconds)
    while sweeper._counted(study) != (0, 0):  # both stale, each one's budget back (waited out once, not twice)
        assert time.monotonic() < deadline, f"trials never went stale: {sweeper._counted(study)}"
        time.sleep(0.2)
    assert [study.trials[t.number].state for t in (orphan, unbeaten)] == [TrialState.FAIL, TrialState.FAIL]


@pytest.mark.parametrize(
    "setting, valid",
    [
        ({"pruner": "bogus"}, "one of median, hyperband, none"),
        ({"n_trials": 0}, "an integer >= 1"),
        ({"sampler": {"name": "grid"}}, "one of tpe, random"),
        ({"heartbeat_s": 0}, "an integer >= 1"),
        ({"sampler": {"seed": -1}}, "null or an integer from 0 to 2**31 - 1"),  # NumPy's seeds: from 0 to 2**32 - 1
        ({"sampler": {"seed": 2**31}}, "null or an integer from 0 to 2**31 - 1"),
        ({"sampler": {"n_startup_trials": -1}}, "an integer >= 0"),
    ],
)
def test_a_bad_sweeper_setting_is_refused_in_one_line(setting, valid, capsys):
    with pytest.raises(SystemExit) as refused:
        plugin.ImgclfOptunaSweeper(**setting)
    assert refused.value.code == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: hydra.sweeper.") and line.endswith(valid)


def test_a_bad_pruner_from_the_command_line_is_one_line_and_leaves_nothing(tmp_path, project_env):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "imgclf.stages.train",
            "--config-dir",
            str(ROOT / "conf"),
            "-m",
            "+sweep=optuna_lr_wd",
            "hydra.sweeper.pruner=bogus",
        ],
        cwd=tmp_path,
        env=project_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: hydra.sweeper.pruner=bogus is not valid: one of median, hyperband, none"
    ]
    assert list(tmp_path.iterdir()) == []


def test_a_bad_direction_or_storage_is_one_line_and_leaves_nothing(tiny_project):
    from ..conftest import TINY_OVERRIDES, stage_main

    before = sorted(p.name for p in tiny_project.iterdir())
    sweep = ["--config-dir", str(ROOT / "conf"), "-m", "+sweep=optuna_lr_wd", *TINY_OVERRIDES]
    for extra, says in (
        ("hydra.sweeper.direction=up", "error: hydra.sweeper.direction=up is not valid: one of maximize, minimize"),
        ("hydra.sweeper.storage=bogus://x", "error: cannot open the Optuna storage at bogus://x (Can't load plugin: "),
        (
            f"hydra.sweeper.storage=sqlite:///{tiny_project / 'data/tiny/split/report.json'}",
            f"error: the Optuna storage sqlite:///{tiny_project / 'data/tiny/split/report.json'}: "
            f"{tiny_project / 'data/tiny/split/report.json'} is not an SQLite database; it is left as it is",
        ),
        (  # someone's own database: Optuna added its tables to it
            f"hydra.sweeper.storage=sqlite+pysqlite:///{tiny_project / 'mlflow.db'}",
            f"error: the Optuna storage sqlite+pysqlite:///{tiny_project / 'mlflow.db'}: {tiny_project / 'mlflow.db'} "
            "is an SQLite database of something else; it is left as it is",
        ),
    ):
        done = stage_main("train", [*sweep, extra, f"tracking.uri=sqlite:///{tiny_project}/mlflow.db"], tiny_project)
        assert done.returncode == 1 and done.stderr.count("\n") == 1 and done.stderr.startswith(says), (extra, done)
    assert sorted(p.name for p in tiny_project.iterdir()) == before  # no multirun/, no optuna.db
    with sqlite3.connect(tiny_project / "mlflow.db") as db:
        assert "studies" not in {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
