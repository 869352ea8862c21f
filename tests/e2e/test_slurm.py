"""Sweeps and training on a real SLURM cluster (tests/e2e/slurm.py: slurmctld, slurmd and munge of the suite's own):

- Optuna workers as the tasks of one SLURM job array join one study in the test PostgreSQL;
- `+launcher=slurm` (Hydra's submitit launcher, conf/launcher/slurm.yaml) runs one training as a 2-task SLURM job
  under DistributedDataParallel, the rendezvous taken from SLURM's variables (no torchrun), and reaches the weights
  one process reaches.

`make test` installs Debian's slurmctld, slurmd, slurm-client and munge (`make slurm`) and requires them.
"""

import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from imgclf.cli import runs

from ..conftest import console
from ..stages.test_finetune import history, train_cmd
from ..stages.test_study import command, sweep_runs
from .conftest import require
from .slurm import SlurmCluster, missing

pytestmark = pytest.mark.slow

# a slot of the test cluster: no GPU, one CPU; the job runs this interpreter (submitit's default), no venv to source
ON_TEST_CLUSTER = (
    "+launcher=slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
    "hydra.launcher.setup=[]",
)


@pytest.fixture(scope="module")
def slurm():
    if absent := missing():
        require(f"SLURM is not installed ({', '.join(absent)}): make slurm installs it")
    home = Path(tempfile.mkdtemp(prefix="imgclf-slurm-"))  # short: munge's socket path has a length limit
    home.chmod(0o755)  # munged: every user reaches its socket
    cluster = SlurmCluster(home).start()
    yield cluster
    cluster.stop()
    shutil.rmtree(home, ignore_errors=True)


def sbatch(args, project, env, slurm, timeout=600):
    """sbatch --wait: returns once every task of the job (or array) has ended, non-zero if one failed."""
    done = subprocess.run(
        ["sbatch", "--wait", "--parsable", *args], cwd=project, env=env, capture_output=True, text=True, timeout=timeout
    )
    outputs = "\n".join(f"== {p.name}\n{p.read_text()[-2500:]}" for p in sorted(project.glob("slurm-*.out")))
    assert done.returncode == 0, f"{done.stderr}\n{outputs}\n{slurm.logs()}"
    return done.stdout.strip().split(";")[0]


def test_sweep_workers_as_a_slurm_job_array_share_one_study_in_postgresql(tiny_project, project_env, postgres, slurm):
    env = dict(project_env, **slurm.env, IMGCLF_OPTUNA_STORAGE=postgres.optuna_uri)
    worker = shlex.join(command(tiny_project, 4, "hydra.sweeper.pruner=none"))
    worker += " hydra.sweep.dir=multirun/worker-$SLURM_ARRAY_TASK_ID"  # the shell of each array task expands it
    job = sbatch(
        ["--array=0-1", "--cpus-per-task=1", "--output=slurm-%A_%a.out", "--wrap", worker], tiny_project, env, slurm
    )
    [summary] = optuna.get_all_study_summaries(postgres.optuna_uri)
    study = optuna.load_study(study_name=summary.study_name, storage=postgres.optuna_uri)
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 4  # the study's total, not each worker's
    for task in (0, 1):  # both array tasks joined the study and ran trials
        assert "Launching 1 jobs locally" in (tiny_project / f"slurm-{job}_{task}.out").read_text()
    parents, children = sweep_runs(tiny_project)
    assert len(parents) == 1 and len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.data.tags["imgclf.slurm_job"] for r in children} == {f"{job}_0", f"{job}_1"}
    assert len({(r.data.params["optim.lr"], r.data.params["optim.weight_decay"]) for r in children}) == 4
    listed = console(
        runs,
        ["--uri", f"sqlite:///{tiny_project}/mlflow.db", "--experiment", "test", "--sweep", summary.study_name],
        tiny_project,
    )  # the study, whichever worker ran each trial
    assert listed.returncode == 0 and listed.stdout.splitlines()[-1].startswith("4 jobs: 4 finished; best so far")


def test_a_two_task_slurm_job_trains_what_one_process_trains(tiny_project, project_env, slurm):
    uri = f"sqlite:///{tiny_project}/mlflow.db"
    # as the torchrun test: no dropout or augmentation draws, LayerNorm (no per-rank batch statistics), 2 epochs
    exact = ("model.name=test_convnext", "model.dropout=0", "augment=none")
    exact += ("trainer.epochs=auto", "trainer.min_epochs=2", "trainer.min_steps=0")
    single = subprocess.run(
        train_cmd(uri, "tracking.experiment=single", *exact), cwd=tiny_project, env=project_env, capture_output=True
    )
    assert single.returncode == 0, single.stderr[-3000:]
    one, one_model = history(tiny_project), torch.load(tiny_project / "models/model.pt", weights_only=True)["model"]
    sweep_dir = tiny_project / "multirun" / "ddp"
    cmd = train_cmd(uri, "tracking.experiment=ddp", *exact)
    cmd.insert(cmd.index("--config-dir") + 2, "-m")  # a multirun of one job, launched by submitit
    ddp = subprocess.run(
        [
            *cmd,
            *ON_TEST_CLUSTER,
            "hydra.launcher.tasks_per_node=2",  # two processes in one job step: srun starts them, SLURM numbers them
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tiny_project,
        env=dict(project_env, **slurm.env),
        capture_output=True,
        text=True,
        timeout=600,
    )
    logs = "\n".join(
        p.read_text()[-2000:] for p in sorted(sweep_dir.glob(".submitit/*/*")) if p.suffix in (".out", ".err")
    )
    assert ddp.returncode == 0, f"{ddp.stderr[-3000:]}\n{logs}\n{slurm.logs()}"
    assert "rank 1 of 2 (gloo)" in logs  # the second task joined through SLURM_PROCID and SLURM_STEP_NUM_TASKS
    two = history(sweep_dir / "0")
    two_model = torch.load(sweep_dir / "0" / "models/model.pt", weights_only=True)["model"]
    for a, b in zip(one, two, strict=True):
        assert a == pytest.approx(b, rel=1e-3, abs=1e-4)
    for key in one_model:
        torch.testing.assert_close(one_model[key], two_model[key], rtol=1e-3, atol=1e-3)  # float sum order
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    [job] = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert job.data.tags["imgclf.world_size"] == "2" and job.info.status == "FINISHED"
    assert job.data.tags["imgclf.slurm_job"].isdigit()
