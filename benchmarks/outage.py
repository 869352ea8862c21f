"""A long tracking-server outage in the middle of a training run, with MLflow's default HTTP retries.

Starts PostgreSQL and `mlflow server` (imgclf.tracking.server, as `make mlflow-server` does) in a temporary
directory, trains
timm's test_resnet on the embedded digits (its split from `make pipeline`) against it, kills the server's whole
process group (SIGKILL) after epoch 2, starts it again `--outage-s` later, and reports: epochs trained while the
server was away, how long the stage waited for it, how long the backlog took to drain, the run's final status and
whether every epoch's metrics arrived.

    python benchmarks/outage.py [--outage-s 600] [--epochs 150] [--data data]
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
TINY = ["model=timm", "model.name=test_resnet", "model.image_size=32", "trainer.log_every=1000"]


def epochs_logged(client: MlflowClient, experiment: str) -> tuple[str | None, int]:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    if not runs:
        return None, 0
    return runs[0].info.run_id, len(client.get_metric_history(runs[0].info.run_id, "val/acc"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage-s", type=float, default=600.0)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--data", type=Path, default=ROOT / "data", help="where `make pipeline` put digits")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="imgclf-outage-"))
    home.chmod(0o755)
    pg = Postgres(home / "pg", free_port()).start()
    server = MlflowServer(pg.uri, home / "artifacts", free_port(), log=home / "server.log").start()
    work = home / "work"
    work.mkdir()
    cmd = [sys.executable, "-m", "imgclf.stages.train", "--config-dir", str(ROOT / "conf"), *TINY]
    cmd += [f"paths.data={args.data.resolve()}", f"trainer.epochs={args.epochs}", f"tracking.uri={server.uri}"]
    cmd += ["tracking.experiment=outage", f"tracking.outbox={home / 'outbox'}", "tracking.outage_wait_s=3600"]
    log = (home / "train.log").open("w")
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT)
    client = MlflowClient(tracking_uri=server.uri)
    while epochs_logged(client, "outage")[1] < 2:
        assert proc.poll() is None, (home / "train.log").read_text()[-3000:]
        time.sleep(0.5)
    run_id, before = epochs_logged(client, "outage")
    server.kill()
    killed = time.monotonic()
    print(f"server killed after epoch {before} ({killed - started:.0f} s into the run); down for {args.outage_s:.0f} s")
    finished_at = None
    while time.monotonic() - killed < args.outage_s:
        if finished_at is None and (work / "models" / "run.json").is_file():
            finished_at = time.monotonic()
            print(f"training finished all {args.epochs} epochs {finished_at - killed:.0f} s into the outage")
        assert proc.poll() is None, "the stage exited while the server was down: " + (home / "train.log").read_text()
        time.sleep(1.0)
    server.start()
    back = time.monotonic()
    code = proc.wait()
    drained = time.monotonic() - back
    run = client.get_run(run_id)
    steps = sorted(m.step for m in client.get_metric_history(run_id, "val/acc"))
    result = {
        "outage_s": round(back - killed),
        "epochs_before_outage": before,
        "epochs_during_outage": args.epochs - before if finished_at else None,
        "exit_code": code,
        "drain_s_after_restart": round(drained, 1),
        "status": run.info.status,
        "val_acc_steps": len(steps),
        "every_epoch": steps == list(range(1, args.epochs + 1)),
        "artifacts": sorted(a.path for a in client.list_artifacts(run_id, "train")),
    }
    print(json.dumps(result, indent=2))
    server.kill()
    pg.stop()


if __name__ == "__main__":
    main()
