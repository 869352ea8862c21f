"""What the end-to-end tests share: a fresh git repo holding exactly what a clone holds, its environment, DVC
status as a set of stage names, and the tiny overrides. Each test module gets its own repo (module fixtures), so
pytest-xdist can run the modules side by side."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from imgclf.errors import MissingInput
from imgclf.tracking.server import Postgres, free_port, pg_bin

from ..conftest import BIN, ROOT, TINY_MODEL
from ..warm import shim

STAGES = ("fetch", "split", "train", "evaluate", "label_issues", "export", "optimise")
# the sample subset and timm's tiny test network: a smoke run of every stage in seconds (optimise's default gate:
# an INT8 twin that flips one of the sample's 50 test images, 2 points, is within noise)
TINY_RUN = ("trainer.epochs=2", "data.subset=sample", *TINY_MODEL)
TINY = [arg for o in TINY_RUN for arg in ("-S", o)]


def sh(args, cwd, env, timeout=600):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A fresh git repo holding exactly what a clone of this project holds."""
    dest = tmp_path_factory.mktemp("e2e") / "repo"
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


@pytest.fixture(scope="module")
def env(repo):
    env = dict(
        os.environ,
        PATH=os.pathsep.join([str(shim()), str(BIN), os.environ["PATH"]]),  # DVC's `python -m imgclf.stages.*`: warm
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    sh(["git", "init", "-q"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "init"], repo, env)
    return env


def changed_stages(repo, env):
    """The stages `dvc status` says are out of date (their own deps, params or outs changed); DVC's Python API
    in this process, as `dvc status --json` computes it, without a DVC start-up per check."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        return {name.rsplit(":", 1)[-1] for name in dvc.status()}  # "path/to/dvc.yaml:train" from another cwd


def require(missing: str) -> None:
    """A server the test needs is not installed: fails under `make test` (IMGCLF_REQUIRE_SERVERS=1), else skips."""
    if os.environ.get("IMGCLF_REQUIRE_SERVERS") == "1":
        pytest.fail(missing)
    pytest.skip(missing)


@pytest.fixture(scope="module")
def postgres():
    """The test suite's own PostgreSQL cluster (mlflow and optuna databases) on a loopback port."""
    try:
        pg_bin("initdb")
    except MissingInput as exc:
        require(str(exc))
    home = Path(tempfile.mkdtemp(prefix="imgclf-pg-"))
    home.chmod(0o755)  # as root the cluster belongs to the postgres user, who must reach it
    pg = Postgres(home / "pg", free_port()).start()
    yield pg
    pg.stop()
    shutil.rmtree(home, ignore_errors=True)
