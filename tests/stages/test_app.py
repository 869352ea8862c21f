"""Stage errors: a UserError is one line and exit 1; anything else is a bug and keeps its traceback."""

import pytest

from imgclf.data.download import ChecksumError, DownloadError
from imgclf.errors import AccessDenied, BadInput, MissingInput, UserError
from imgclf.models.weights import WeightsNotFound
from imgclf.stages._app import one_line_errors
from imgclf.training.engine import NonFiniteLoss


def failing(exc):
    def task(cfg):
        raise exc

    return one_line_errors(task)


@pytest.mark.parametrize(
    "exc",
    [
        BadInput("trainer.epochs must be a positive integer; got 0"),
        MissingInput("models/model.pt not found"),
        AccessDenied("Kaggle refused (403)"),
        WeightsNotFound("no weights"),
        DownloadError("no mirror"),
        ChecksumError("md5 differs"),
        NonFiniteLoss("loss is nan"),
    ],
)
def test_user_errors_are_one_line_and_exit_1(exc, capsys, monkeypatch):
    monkeypatch.delenv("IMGCLF_DEBUG", raising=False)
    assert isinstance(exc, UserError)
    with pytest.raises(SystemExit) as exit_:
        failing(exc)(None)
    assert exit_.value.code == 1
    assert capsys.readouterr().err == f"error: {exc}\n"


@pytest.mark.parametrize("exc", [ValueError("a library bug"), KeyError("label_names"), RuntimeError("boom")])
def test_other_errors_keep_their_traceback(exc, monkeypatch):
    monkeypatch.delenv("IMGCLF_DEBUG", raising=False)
    with pytest.raises(type(exc)):
        failing(exc)(None)


def test_debug_keeps_the_traceback_of_user_errors_too(monkeypatch):
    monkeypatch.setenv("IMGCLF_DEBUG", "1")
    with pytest.raises(BadInput):
        failing(BadInput("bad"))(None)


HOOK = """import atexit, gc, sys
seen = []
sys.addaudithook(lambda ev, args: ev == "import" and args[0] == "torch" and not seen and seen.append(gc.isenabled()))
atexit.register(lambda: print(f"gc: {seen} {gc.isenabled()} {gc.get_freeze_count()}", file=sys.stderr))
"""


def test_a_stage_process_imports_with_the_collector_off_then_runs_with_it_on(tmp_path, project_env):
    """`python -m imgclf.stages.<stage>`, as DVC starts it: torch is imported with the collector off, the stage's main
    turns it back on with the imports frozen (seconds of every stage: benchmarks/stage_start.py)."""
    import subprocess
    import sys

    (tmp_path / "sitecustomize.py").write_text(HOOK)  # Python imports it at start-up, before anything of ours
    env = dict(project_env, PYTHONPATH=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "imgclf.stages.train", "--help"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen, enabled, frozen = done.stderr.strip().splitlines()[-1].removeprefix("gc: ").rsplit(" ", 2)
    assert seen == "[False]" and enabled == "True" and int(frozen) > 100_000


def test_imported_as_a_library_the_collector_is_left_as_it_was():
    import gc

    from imgclf.stages import settle_imports

    frozen = gc.get_freeze_count()
    settle_imports()  # in this process imgclf is a library: nothing to settle
    assert gc.isenabled() and gc.get_freeze_count() == frozen
