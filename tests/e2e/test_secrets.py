"""`dvc exp run -S` writes its composition into params.yaml before any stage starts: a value reading a secret's
variable is refused while DVC composes it (conf/'s resolvers in src/hydra_plugins), so the secret is never written."""

import subprocess

from ..stages.test_secrets import READS_SECRET, REFUSED, SECRET, nowhere


def test_dvc_exp_run_refuses_a_value_reading_a_secrets_variable(repo, env):
    before = (repo / "params.yaml").read_text()
    done = subprocess.run(
        ["dvc", "exp", "run", "-S", READS_SECRET, "fetch"],
        cwd=repo,
        env={**env, "MLFLOW_TRACKING_PASSWORD": SECRET},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert f"ERROR: unexpected error - {REFUSED}\n" in done.stderr, done.stdout[-2000:] + done.stderr[-2000:]
    assert (repo / "params.yaml").read_text() == before
    nowhere(done, repo)
