"""A Hydra multirun of the train stage: one MLflow run per job, grouped by a sweep tag, outputs kept apart."""
import subprocess
import sys

from mlflow.tracking import MlflowClient

from ..conftest import ROOT, TINY_OVERRIDES


def test_multirun_jobs_are_separate_runs_with_one_sweep_tag(tiny_project, project_env):
    uri = f"sqlite:///{tiny_project}/mlflow.db"
    sweep_dir = tiny_project / "multirun" / "s1"
    proc = subprocess.run(
        [sys.executable, "-m", "imgclf.stages.train", "--config-dir", str(ROOT / "conf"), "-m", *TINY_OVERRIDES,
         "trainer.epochs=1", "optim.lr=0.001,0.0003", f"tracking.uri={uri}", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tiny_project, env=project_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert sorted(r.data.params["optim.lr"] for r in runs) == ["0.0003", "0.001"]
    assert {r.data.tags["imgclf.sweep"] for r in runs} == {str(sweep_dir)}
    for run in runs:
        assert f"optim.lr={run.data.params['optim.lr']}" in run.data.tags["imgclf.overrides"].split()
    for job in ("0", "1"):  # each job wrote its own checkpoint; the DVC-declared paths stay untouched
        assert (sweep_dir / job / "models" / "model.pt").is_file()
    assert not (tiny_project / "models").exists()
