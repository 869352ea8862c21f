"""Secrets reach no log line, MLflow param or file, and each refusal is one line, through the entry points users
type: a config value reading a secret's variable, a URL's password in the workspace line and in a mirror's error, a
tracking database that does not answer. Each test then looks for the secret's value in everything written."""

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from imgclf import cli
from imgclf.config import params_yaml

from ..conftest import BIN, ROOT, TINY_OVERRIDES, console, stage_main

SECRET = f"pw-{uuid.uuid4().hex[:12]}"  # made at run time: in no file of the project, this one included
READS_SECRET = "tracking.experiment=${oc.env:MLFLOW_TRACKING_PASSWORD}"
REFUSED = (
    "tracking.experiment=${oc.env:MLFLOW_TRACKING_PASSWORD} would write a secret into the config (run name, MLflow "
    "params, params.yaml, outputs/): no config key takes one; leave it in MLFLOW_TRACKING_PASSWORD, where the tool "
    "that needs it reads it"
)
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist", "http://yann.lecun.com/exdb/mnist")  # conf/data/mnist
DVC_ARGS = ["--config-name", "params", "hydra.run.dir=.", "hydra.output_subdir=null"]  # dvc.yaml's, from --config-dir


def nowhere(done: subprocess.CompletedProcess, *roots: Path) -> None:
    """The secret in no output and in no file under `roots` (outputs/, params.yaml, the MLflow store, the outbox)."""
    assert SECRET not in done.stdout + done.stderr
    for root in roots:
        for path in (p for p in root.rglob("*") if p.is_file()):
            try:
                assert SECRET.encode() not in path.read_bytes(), path
            except FileNotFoundError:  # another worker's outbox, sent and removed meanwhile
                continue


def one_line(done: subprocess.CompletedProcess, code: int) -> str:
    assert done.returncode == code and done.stderr.count("\n") == 1, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stderr.strip()


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)


def params_with(project: Path, overrides: list[str], edits: dict[str, str]) -> None:
    """params.yaml as `dvc exp run -S` composes it from conf/, then edited by hand (`edits`: old text -> new, every
    occurrence: data.fetch.mirrors repeats data.mirrors)."""
    text = params_yaml(overrides, ROOT)
    for old, new in edits.items():
        assert old in text
        text = text.replace(old, new)
    (project / "params.yaml").write_text(text)


def test_a_value_reading_a_secrets_variable_is_refused_as_an_override(tiny_project, secret_env, own_cache):
    uri = f"tracking.uri=sqlite:///{tiny_project}/mlflow.db"
    argv = ["--config-dir", str(ROOT / "conf"), *TINY_OVERRIDES, uri, READS_SECRET]
    trained = stage_main("train", argv, tiny_project)
    assert one_line(trained, 2) == f"error: {REFUSED}"
    checked = console(cli.check, ["-S", READS_SECRET], ROOT)
    assert one_line(checked, 2) == f"error: {REFUSED}"
    nowhere(checked)
    inner = console(cli.check, ["-S", "tracking.run_name='run-${oc.env:KAGGLE_KEY,none}'"], ROOT)
    assert one_line(inner, 2).startswith("error: tracking.run_name=${oc.env:KAGGLE_KEY} would write a secret")
    for name in ("MYSQL_PWD", "DB_PASS"):  # a password under its abbreviation (MySQL's own variable)
        short = console(cli.check, ["-S", f"tracking.run_name=${{oc.env:{name},none}}"], ROOT)
        assert one_line(short, 2).startswith(f"error: tracking.run_name=${{oc.env:{name}}} would write a secret")
    assert console(cli.check, ["-S", "tracking.run_name=${oc.env:PWD}"], ROOT).returncode == 0  # the working folder
    nowhere(trained, tiny_project, own_cache)


def test_a_value_reading_a_secrets_variable_in_params_yaml_is_refused(tiny_project, secret_env, own_cache):
    shutil.copytree(ROOT / "conf", tiny_project / "conf")
    uri = f"tracking.uri=sqlite:///{tiny_project}/mlflow.db"
    params_with(
        tiny_project,
        [*TINY_OVERRIDES, uri],
        {"  experiment: test\n": "  experiment: ${oc.env:MLFLOW_TRACKING_PASSWORD}\n"},
    )
    by_hand = stage_main("train", [], tiny_project)  # the workspace's experiment, under conf/
    assert one_line(by_hand, 2) == f"error: params.yaml: {REFUSED}"
    under_dvc = stage_main("train", ["--config-dir", str(tiny_project), *DVC_ARGS], tiny_project)
    assert one_line(under_dvc, 1) == f"error: {REFUSED}"
    nowhere(by_hand, tiny_project, own_cache)
    nowhere(under_dvc)
    assert not (tiny_project / "checkpoints").exists()


def test_the_workspace_line_shows_no_password(tmp_path):
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    edits = {
        MIRRORS[0]: f"https://alice:{SECRET}@mirror.example/mnist",
        "  uri: sqlite:///mlflow.db\n": f"  uri: postgresql://alice:{SECRET}@127.0.0.1:1/mlflow\n",
    }
    params_with(tmp_path, ["data=mnist"], edits)
    done = stage_main("fetch", [], tmp_path)
    shown, refused = done.stderr.splitlines()
    assert shown.startswith(
        "workspace: params.yaml is conf/ plus data=mnist data.mirrors=['https://***@mirror.example/"
    )
    assert "tracking.uri='postgresql://***@127.0.0.1:1/mlflow'" in shown
    assert done.returncode == 2 and refused.startswith("error: data.mirrors: a secret is not taken as an override")
    nowhere(done, tmp_path / "conf", tmp_path / "outputs")


def test_a_mirror_url_urllib_cannot_parse_is_one_line_without_its_password(tmp_path):
    """`https://user:pw@host/` reads `pw@host` as a port: http.client.InvalidURL quoted it, with a traceback."""
    bad = (f"https://alice:{SECRET}@127.0.0.1/mnist", f"https://alice:{SECRET}@127.0.0.1:port/mnist")
    params_with(tmp_path, ["data=mnist"], dict(zip(MIRRORS, bad)))
    done = stage_main("fetch", ["--config-dir", str(tmp_path), *DVC_ARGS], tmp_path)
    assert one_line(done, 1) == (
        "error: could not download train-images-idx3-ubyte.gz from any mirror: "
        "https://***@127.0.0.1/mnist/train-images-idx3-ubyte.gz: nonnumeric port: '***@127.0.0.1' (not a valid URL); "
        "https://***@127.0.0.1:port/mnist/train-images-idx3-ubyte.gz: nonnumeric port: 'port' (not a valid URL)"
    )
    assert "Traceback" not in done.stdout + done.stderr
    (tmp_path / "params.yaml").unlink()  # it holds the secret: the test wrote it there
    nowhere(done, tmp_path)


def test_a_mirror_token_in_the_query_is_shown_as_stars(tmp_path):
    """A signed mirror URL (`?token=...`) that failed was quoted whole in the error line and the log."""
    mirrors = (f"http://127.0.0.1:1/mnist?token={SECRET}", f"http://127.0.0.1:1/m?X-Amz-Signature={SECRET}&d=1")
    params_with(tmp_path, ["data=mnist"], dict(zip(MIRRORS, mirrors)))
    done = stage_main("fetch", ["--config-dir", str(tmp_path), *DVC_ARGS], tmp_path)
    said = one_line(done, 1)
    assert said.startswith("error: could not download train-images-idx3-ubyte.gz from any mirror: ") and "=***" in said
    (tmp_path / "params.yaml").unlink()  # it holds the secret: the test wrote it there
    nowhere(done, tmp_path)


def run(argv: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """A command in its own process: without the refusal, MLflow's retries would outlast the timeout."""
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=90)


def test_a_tracking_database_that_does_not_answer_is_one_line_before_training(tiny_project, project_env):
    database = f"postgresql://alice:{SECRET}@127.0.0.1:1/mlflow"  # a port nothing listens on
    params_with(tiny_project, [*TINY_OVERRIDES], {"  uri: sqlite:///mlflow.db\n": f"  uri: {database}\n"})
    own_cache = (
        tiny_project.parent / f"{tiny_project.name}-cache"
    )  # its own: other tests' runs come and go in the session's
    argv = [sys.executable, "-m", "imgclf.stages.train", "--config-dir", str(tiny_project), *DVC_ARGS]
    done = run(argv, tiny_project, dict(project_env, XDG_CACHE_HOME=str(own_cache)))
    assert one_line(done, 1).startswith(
        "error: cannot reach the tracking database at postgresql://alice:***@127.0.0.1:1/mlflow (connection failed: "
    )
    assert done.stderr.strip().endswith("; start it or set tracking.uri")
    assert not list((own_cache / "imgclf" / "outbox").glob("*"))  # no run opened, nothing waiting to send
    assert not (tiny_project / "checkpoints").exists()
    (tiny_project / "params.yaml").unlink()
    nowhere(done, tiny_project)


def test_sync_to_a_database_that_does_not_answer_is_one_line(tmp_path, project_env):
    database = f"postgresql://alice:{SECRET}@127.0.0.1:1/mlflow"
    done = run(
        [str(BIN / "imgclf"), "sync", "--uri", database, "--outbox", str(tmp_path / "outbox")], tmp_path, project_env
    )
    assert one_line(done, 1).startswith(
        "error: cannot reach the tracking database at postgresql://alice:***@127.0.0.1:1/"
    )
    assert done.stderr.strip().endswith("; start it or give another --uri") and done.stdout == ""
    nowhere(done, tmp_path)


def test_a_variable_holding_a_url_with_a_password_is_refused_where_it_is_read(monkeypatch, own_cache):
    """DATABASE_URL=postgresql://u:pw@host/db is no secret by its name, but `tracking.uri=${oc.env:DATABASE_URL}`
    wrote the password into the composition `make params` writes, and `imgclf check -S` said ok."""
    from imgclf import config

    monkeypatch.setenv("DATABASE_URL", f"postgresql://u:{SECRET}@127.0.0.1:1/db")
    said = "tracking.uri: ${oc.env:DATABASE_URL} holds a URL with a password, which would be logged and written"
    for done in (
        console(cli.check, ["-S", "tracking.uri=${oc.env:DATABASE_URL}"], ROOT),
        console(config.main, ["tracking.uri=${oc.env:DATABASE_URL}"], ROOT),  # make params
    ):
        assert one_line(done, 2).startswith(f"error: bad interpolation: {said}"), done.stderr
        nowhere(done)
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@127.0.0.1:1/db")  # the password in PGPASSWORD: taken
    assert console(cli.check, ["-S", "tracking.uri=${oc.env:DATABASE_URL}"], ROOT).returncode == 0
