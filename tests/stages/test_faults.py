"""Faults injected for real, on real processes: SIGKILL at random points of checkpoint writing, a disk that fills
(a file-size rlimit) under a checkpoint and under a pack, and a process killed while it holds the SQLite store."""

import json
import random
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from subprocess import PIPE

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from imgclf import tracking

from ..conftest import BIN, ROOT, TINY_OVERRIDES, empty_mlflow_store, stage_main
from ..warm import kill, python
from .test_finetune import train_cmd, wait_for


def test_sigkill_at_random_points_never_leaves_a_checkpoint_read_as_valid(tiny_project, project_env):
    uri = f"sqlite:///{tiny_project}/mlflow.db"
    epochs = 6  # three kills at random points, then the rest: each kill costs a process start
    cmd = train_cmd(uri, f"trainer.epochs={epochs}")
    last = tiny_project / "checkpoints" / "last.pt"
    rng = random.Random(0)
    seen = 0
    for _ in range(3):
        proc = subprocess.Popen(
            cmd, cwd=tiny_project, env=project_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        before = last.stat().st_mtime_ns if last.exists() else 0
        wait_for(last, proc)
        while last.stat().st_mtime_ns == before:  # one more checkpoint written by this process
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.3))  # somewhere in the next epoch, or in the middle of writing its checkpoint
        kill(proc)
        if not last.exists():  # it reached its end first (a fast machine): run.json written, then checkpoints removed
            assert (tiny_project / "models" / "run.json").is_file(), proc.stderr.read()[-2000:]
            break
        state = torch.load(last, weights_only=True)  # whatever the moment, last.pt is a whole checkpoint
        assert state["epoch"] >= seen
        seen = state["epoch"]
        if seen >= epochs - 1:
            break
    done = stage_main("train", cmd[3:], tiny_project)  # the rest: its main, in this process
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = json.loads((tiny_project / "models/run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert {m.step for m in client.get_metric_history(run_id, "val/acc")} == set(range(1, epochs + 1))
    assert not list((tiny_project / "checkpoints").glob(".*tmp*"))  # the killed writers' halves are gone


def _limit_file_size(limit):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_disk_full_under_a_checkpoint_is_one_line_and_keeps_the_previous_one(tiny_project, project_env):
    uri = f"sqlite:///{tiny_project}/mlflow.db"
    cmd = train_cmd(uri, "trainer.epochs=20")
    proc = subprocess.Popen(cmd, cwd=tiny_project, env=project_env, stdout=subprocess.DEVNULL, stderr=PIPE)
    last = tiny_project / "checkpoints" / "last.pt"
    wait_for(last, proc)
    kill(proc)
    kept = last.read_bytes()
    epoch = torch.load(last, weights_only=True)["epoch"]
    # the next checkpoint cannot be written whole: as if the disk filled up
    full = subprocess.run(
        cmd,
        cwd=tiny_project,
        env=project_env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_limit_file_size(len(kept) * 3 // 4),
    )
    assert full.returncode == 1
    error = full.stderr.strip().splitlines()[-1]
    assert error.startswith("error: could not write checkpoints/last.pt (")
    assert "the disk is full or a file-size limit was reached; checkpoints/last.pt as it was is kept" in error
    assert last.read_bytes() == kept and torch.load(last, weights_only=True)["epoch"] == epoch
    assert not list((tiny_project / "checkpoints").glob(".last.pt.tmp*"))  # the failed write left no half


def test_disk_full_under_a_pack_is_one_line_and_leaves_no_pack(tmp_path):
    from PIL import Image

    images = []
    for i in range(8):
        images.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((40, 40, 3), i * 30, np.uint8)).save(images[-1])
    script = (
        "import resource, sys; from pathlib import Path\n"
        "from imgclf.data.datasets import write_pack\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"  # the pack needs 8 x 3 x 32 x 32 + header
        f"paths = [Path(p) for p in {[str(p) for p in images]!r}]\n"
        f"write_pack(Path({str(tmp_path / 'pack.npy')!r}), paths, 32, 'bilinear', 'squash')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "DiskFull: could not write" in done.stderr and "File too large" in done.stderr
    assert "nothing was written" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".png")) == []


def test_a_process_killed_holding_the_sqlite_store_leaves_it_usable(tmp_path, project_env):
    uri = f"sqlite:///{empty_mlflow_store(tmp_path / 'mlflow.db')}"
    with tracking.run(uri, "exp") as first:
        tracking.log_metrics({"m": 1.0}, step=1)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            f"con = sqlite3.connect({str(tmp_path / 'mlflow.db')!r}, isolation_level=None)\n"
            "con.execute('BEGIN EXCLUSIVE')\n"
            "con.execute(\"UPDATE runs SET status = 'FAILED'\")\n"  # a write in flight, never committed
            "print('holding', flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "holding"
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        sqlite3.connect(tmp_path / "mlflow.db", timeout=0.1).execute("SELECT count(*) FROM runs").fetchall()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    # the lock died with the process; the uncommitted write is rolled back from SQLite's journal
    assert sqlite3.connect(tmp_path / "mlflow.db").execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with tracking.run(uri, "exp") as second:
        tracking.log_metrics({"m": 2.0}, step=1)
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(first).info.status == "FINISHED" and client.get_run(second).info.status == "FINISHED"


def test_runs_started_together_on_a_new_store_all_finish(tiny_project, project_env):
    """What `dvc queue start -j 3` does on a fresh clone: three trainings create the SQLite store at once."""
    uri = f"sqlite:///{tiny_project}/fresh/mlflow.db"
    procs = [
        subprocess.Popen(
            train_cmd(uri, "trainer.epochs=1", f"paths.models=models{i}", f"paths.checkpoints=checkpoints{i}"),
            cwd=tiny_project,
            env=project_env,
            stdout=subprocess.DEVNULL,
            stderr=PIPE,
            text=True,
        )
        for i in range(3)
    ]
    errors = [proc.communicate(timeout=600)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], [e[-2000:] for e in errors]
    runs = MlflowClient(tracking_uri=uri).search_runs([MlflowClient(tracking_uri=uri).get_experiment_by_name("test")
                                                       .experiment_id])  # fmt: skip
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3


def test_a_run_killed_before_its_first_checkpoint_is_marked_killed_at_the_next_start(tiny_project, project_env):
    uri = f"sqlite:///{tiny_project}/mlflow.db"
    proc = subprocess.Popen(
        train_cmd(uri, "trainer.epochs=50"),
        cwd=tiny_project,
        env=project_env,
        stdout=subprocess.DEVNULL,
        stderr=PIPE,
    )
    client, deadline = MlflowClient(tracking_uri=uri), time.time() + 300
    while True:  # killed as soon as its MLflow run exists: before the first epoch's checkpoint, as a rule
        assert proc.poll() is None and time.time() < deadline
        experiment = tiny_project.joinpath("mlflow.db").is_file() and client.get_experiment_by_name("test")
        if experiment and client.search_runs([experiment.experiment_id]):
            break
        time.sleep(0.05)
    kill(proc)
    (killed,) = client.search_runs([experiment.experiment_id])
    assert killed.info.status == "RUNNING"  # what MLflow is left with
    with tracking.run(uri, "test") as later:  # the next start, of any run, in the same store
        pass
    assert client.get_run(killed.info.run_id).info.status == "KILLED"
    assert client.get_run(killed.info.run_id).data.tags["imgclf.ended"].startswith("process killed")
    assert client.get_run(later).info.status == "FINISHED"


def test_imgclf_sync_marks_runs_of_killed_processes(tmp_path, project_env):
    uri = f"sqlite:///{empty_mlflow_store(tmp_path / 'mlflow.db')}"
    script = (
        "import os, signal\nfrom imgclf import tracking\n"
        f"with tracking.run({uri!r}, 'exp') as run_id:\n"
        "    print(run_id, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=project_env)
    run_id = out.stdout.strip()
    assert out.returncode == -signal.SIGKILL and MlflowClient(tracking_uri=uri).get_run(run_id).info.status == "RUNNING"
    done = subprocess.run(
        [str(BIN / "imgclf"), "sync", "--uri", uri, "--outbox", str(tmp_path / "outbox"), "--wait", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env=project_env,
    )
    assert done.returncode == 0 and f"{run_id}: its process was killed; marked KILLED" in done.stdout
    assert MlflowClient(tracking_uri=uri).get_run(run_id).info.status == "KILLED"


def test_a_corrupt_last_checkpoint_is_moved_aside_and_training_starts_afresh(tiny_project, project_env):
    uri = f"sqlite:///{tiny_project}/mlflow.db"
    checkpoints = tiny_project / "checkpoints"
    checkpoints.mkdir()
    for content in (b"", b"PK\x03\x04 not a whole checkpoint"):
        (checkpoints / "last.pt").write_bytes(content)
        done = stage_main("train", train_cmd(uri, "trainer.epochs=1")[3:], tiny_project)  # its main, in this process
        assert done.returncode == 0, done.stderr[-3000:]
        said = done.stdout + done.stderr  # Hydra's logging goes to stdout
        assert "Traceback" not in said and "moved aside to last.pt.unreadable-" in said
        aside = sorted(checkpoints.glob("last.pt.unreadable-*"))
        assert aside and aside[-1].read_bytes() == content  # kept, never read again
        for path in aside:
            path.unlink()
    # named explicitly, a file that is no checkpoint is one line and exit 1 (through `python -m`, then its main)
    for bad in ("/etc/passwd", str(tiny_project / "data/tiny/split/labels.txt")):
        cmd = train_cmd(uri, f"trainer.resume={bad}")
        if bad == "/etc/passwd":
            done = subprocess.run(cmd, cwd=tiny_project, env=project_env, capture_output=True, text=True, timeout=600)
        else:
            done = stage_main("train", cmd[3:], tiny_project)
        assert done.returncode == 1 and done.stderr.strip().splitlines() == [
            f"error: {bad}: not a readable checkpoint" + done.stderr.strip().split("not a readable checkpoint")[1]
        ]


def test_export_under_a_file_size_limit_is_one_line_not_an_abort(trained_project, tmp_path, project_env):
    import shutil

    project = tmp_path / "project"
    shutil.copytree(trained_project, project, ignore=shutil.ignore_patterns("mlruns", "cache"))
    export = project / "models/export"
    onnx_size, program_size = (export / "model.onnx").stat().st_size, (export / "model.pt2").stat().st_size
    assert onnx_size < program_size  # a limit between the two: the ONNX model is written, the program is not
    before = {p.name: p.read_bytes() for p in export.iterdir()}
    done = subprocess.run(
        [
            python(), "-m", "imgclf.stages.export", "--config-dir", str(ROOT / "conf"), *TINY_OVERRIDES,
            f"tracking.uri=sqlite:///{project}/mlflow.db",
        ],
        cwd=project, env=project_env, capture_output=True, text=True, timeout=600,
        preexec_fn=_limit_file_size((onnx_size + program_size) // 2),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "error: could not write models/export (File too large): the disk is full or a file-size limit was reached; "
        "models/export as it was is kept"
    )
    assert {p.name: p.read_bytes() for p in export.iterdir()} == before
