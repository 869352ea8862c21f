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

from .test_finetune import train_cmd, wait_for


def test_sigkill_at_random_points_never_leaves_a_checkpoint_read_as_valid(tiny_project, project_env):
    uri = f"sqlite:///{tiny_project}/mlflow.db"
    epochs = 12
    cmd = train_cmd(uri, f"trainer.epochs={epochs}")
    last = tiny_project / "checkpoints" / "last.pt"
    rng = random.Random(0)
    seen = 0
    for _ in range(5):
        proc = subprocess.Popen(
            cmd, cwd=tiny_project, env=project_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        before = last.stat().st_mtime_ns if last.exists() else 0
        wait_for(last, proc)
        while last.stat().st_mtime_ns == before:  # one more checkpoint written by this process
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.3))  # somewhere in the next epoch, or in the middle of writing its checkpoint
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = torch.load(last, weights_only=True)  # whatever the moment, last.pt is a whole checkpoint
        assert state["epoch"] >= seen
        seen = state["epoch"]
        if seen >= epochs - 1:
            break
    done = subprocess.run(cmd, cwd=tiny_project, env=project_env, capture_output=True, text=True, timeout=600)
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
    proc.send_signal(signal.SIGKILL)
    proc.wait()
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
    uri = f"sqlite:///{tmp_path}/mlflow.db"
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
