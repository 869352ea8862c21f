"""A soak of the PostgreSQL-backed tracking server: many short training runs in a row, then several at once.

Starts PostgreSQL and `mlflow server` (imgclf.tracking.server) in a temporary directory, then
1. `--serial` runs in a row in one process (a Hydra multirun, basic launcher: jobs run inside the driver), sampling
   the driver's resident memory after each run finishes;
2. `--parallel` runs, `--jobs` at a time (joblib launcher, a process per job).
Each run trains timm's test_resnet on the sample subset of the embedded digits (the split `make pipeline` wrote).
Reports: runs found, runs FINISHED, runs left RUNNING, runs missing any epoch's metrics, and the driver's RSS.

    python benchmarks/soak.py [--serial 20] [--parallel 8] [--jobs 4] [--epochs 2] [--data data]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from imgclf.tracking.server import MlflowServer, Postgres, free_port

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=timm", "model.name=test_resnet", "model.image_size=32", "data.subset=sample"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    return [r for r in runs if r.data.tags.get("imgclf.role") != "sweep"]


def sweep(server: MlflowServer, work: Path, args, experiment: str, n: int, launcher: list[str]) -> dict:
    cmd = [sys.executable, "-m", "imgclf.stages.train", "-m", "--config-dir", str(ROOT / "conf"), *TINY]
    cmd += [f"paths.data={args.data.resolve()}", f"trainer.epochs={args.epochs}", f"tracking.uri={server.uri}"]
    cmd += [f"tracking.experiment={experiment}", f"seed=range(0,{n})", f"hydra.sweep.dir={work / experiment}"]
    client = MlflowClient(tracking_uri=server.uri)
    started = time.monotonic()
    proc = subprocess.Popen([*cmd, *launcher], cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rss, finished = [], 0
    while proc.poll() is None:
        done = sum(r.info.status == "FINISHED" for r in children(client, experiment))
        if done > finished:
            finished = done
            rss.append(round(rss_mb(proc.pid), 1))
        time.sleep(0.5)
    err = proc.stderr.read()
    runs = children(client, experiment)
    steps = {r.info.run_id: len(client.get_metric_history(r.info.run_id, "val/acc")) for r in runs}
    return {
        "exit_code": proc.returncode,
        "seconds": round(time.monotonic() - started, 1),
        "runs": len(runs),
        "finished": sum(r.info.status == "FINISHED" for r in runs),
        "left_running": sum(r.info.status == "RUNNING" for r in runs),
        "missing_epochs": sum(s != args.epochs for s in steps.values()),
        "driver_rss_mb_after_each_run": rss,
        "database_is_locked": "database is locked" in err,
        "stderr_tail": err.strip().splitlines()[-1:] if proc.returncode else [],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serial", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data", type=Path, default=ROOT / "data", help="where `make pipeline` put digits")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="imgclf-soak-"))
    home.chmod(0o755)
    pg = Postgres(home / "pg", free_port()).start()
    server = MlflowServer(pg.uri, home / "artifacts", free_port(), log=home / "server.log").start()
    work = home / "work"
    work.mkdir()
    try:
        serial = sweep(server, work, args, "soak-serial", args.serial, [])
        print("in a row:", json.dumps(serial), flush=True)
        joblib = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}"]
        parallel = sweep(server, work, args, "soak-parallel", args.parallel, joblib)
        print(f"{args.jobs} at a time:", json.dumps(parallel), flush=True)
    finally:
        server.kill()
        pg.stop()


if __name__ == "__main__":
    main()
