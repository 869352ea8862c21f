"""tests/warm.py, the warm interpreter the tests' stage processes run in: what it runs is what the real interpreter
runs, it is used where the caller's environment allows, and the real interpreter runs the rest."""

import os
import signal
import subprocess
import sys
import time

import pytest

from imgclf.files import pid_alive

from .warm import forks, kill, python, record_of

pytestmark = pytest.mark.slow


def served(argv: list[str], env: dict) -> tuple[subprocess.CompletedProcess, bool]:
    """Run `argv` through the warm `python`; its result, and whether the warm process forked it."""
    before = forks()
    done = subprocess.run([python(), *argv], env=env, capture_output=True, text=True, timeout=120)
    return done, forks() > before


@pytest.mark.parametrize("argv", [["--help"], ["trainer.epochs=x"]], ids=["help", "refused"])
def test_a_stage_runs_warm_with_the_real_interpreters_output_and_exit(argv, project_env):
    real = subprocess.run(
        [sys.executable, "-m", "imgclf.stages.train", *argv], env=project_env, capture_output=True, text=True
    )
    warm, forked = served(["-m", "imgclf.stages.train", *argv], project_env)
    assert forked
    assert (warm.returncode, warm.stdout, warm.stderr) == (real.returncode, real.stdout, real.stderr)
    assert real.returncode == (0 if argv == ["--help"] else 1)


def test_another_environment_or_command_runs_in_the_real_interpreter(project_env):
    threads = str(int(os.environ.get("OMP_NUM_THREADS", "1")) + 1)  # read when torch was imported
    other, forked = served(["-m", "imgclf.stages.train", "--help"], dict(project_env, OMP_NUM_THREADS=threads))
    assert other.returncode == 0 and "train" in other.stdout and not forked
    done, forked = served(["-c", "import sys; print(sys.executable)"], project_env)
    assert done.stdout.strip() == sys.executable and not forked


def test_kill_ends_the_warm_stage_with_its_caller(project_env):
    """A SIGKILL through kill() ends the stage itself, not a moment after: the next command finds nothing held."""
    proc = subprocess.Popen([python(), "-m", "imgclf.stages.train", "trainer.epochs=x"], env=project_env)
    record = record_of(proc.pid)
    while not record.is_file():  # the child records its pid before the stage's first line
        assert proc.poll() is None
        time.sleep(0.001)
    child = int(record.read_text())
    kill(proc)
    assert proc.returncode == -signal.SIGKILL and not pid_alive(child)
