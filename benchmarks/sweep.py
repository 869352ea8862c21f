"""The same Optuna search two ways, side by side: (a) one worker, every trial trained to its last epoch (no pruning),
and (b) two workers on one study with median pruning. Reports each one's total epochs trained, wall time and the best
kept/val/acc found.

Each trial trains timm's test_resnet at 32 px on the embedded digits (the split `make pipeline` wrote), with the
lr_wd search space (conf/sweep/optuna_lr_wd.yaml); the study and the MLflow store live in a temporary directory.

    python benchmarks/sweep.py [--trials 16] [--epochs 6] [--data data] [--pruner median|hyperband]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=timm", "model.name=test_resnet", "model.image_size=32"]


def search(work: Path, args, name: str, workers: int, pruner: str) -> dict:
    uri = f"sqlite:///{work / name}.db"
    cmd = [sys.executable, "-m", "imgclf.stages.train", "-m", "--config-dir", str(ROOT / "conf"), *TINY]
    cmd += [f"paths.data={args.data.resolve()}", f"trainer.epochs={args.epochs}", f"tracking.uri={uri}"]
    cmd += ["+sweep=optuna_lr_wd", f"hydra.sweeper.n_trials={args.trials}", f"hydra.sweeper.pruner={pruner}"]
    cmd += [f"hydra.sweeper.storage=sqlite:///{work / name}-optuna.db", "tracking.experiment=bench"]
    started = time.monotonic()
    procs = [
        subprocess.Popen([*cmd, f"hydra.sweep.dir={work / name}-{i}"], cwd=work, stdout=subprocess.DEVNULL)
        for i in range(workers)
    ]
    codes = [p.wait() for p in procs]
    wall = time.monotonic() - started
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("bench").experiment_id], max_results=1000)
    jobs = [r for r in runs if r.data.tags.get("imgclf.role") != "sweep"]
    epochs = sum(len(client.get_metric_history(r.info.run_id, "val/acc")) for r in jobs)
    kept = [r for r in jobs if r.info.status == "FINISHED" and "imgclf.pruned" not in r.data.tags]
    return {
        "exit codes": codes,
        "trials": len(jobs),
        "pruned": sum("imgclf.pruned" in r.data.tags for r in jobs),
        "epochs trained": epochs,
        "wall s": round(wall, 1),
        "best kept/val/acc": max(r.data.metrics["kept/val/acc"] for r in kept),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--data", type=Path, default=ROOT / "data", help="where make pipeline put data/digits")
    parser.add_argument("--pruner", default="median", help="(b)'s pruner: median or hyperband")
    args = parser.parse_args()
    if not (args.data / "digits" / "split" / "train.csv").is_file():
        sys.exit(f"error: no digits split under {args.data}: run make pipeline first")
    with tempfile.TemporaryDirectory(prefix="imgclf-sweep-") as tmp:
        a = search(Path(tmp), args, "a", workers=1, pruner="none")
        b = search(Path(tmp), args, "b", workers=2, pruner=args.pruner)
    print(f"{'':28} {'(a) 1 worker, no pruning':>26} {'(b) 2 workers, ' + args.pruner + ' pruning':>30}")
    for key in a:
        print(f"{key:28} {a[key]!s:>26} {b[key]!s:>30}")
    print(f"epochs (b) / (a): {b['epochs trained'] / a['epochs trained']:.2f} (target <= 0.60)")
    print(f"best (a) - best (b): {a['best kept/val/acc'] - b['best kept/val/acc']:+.4f} (target <= 0.005)")
    print(f"wall (b) / (a): {b['wall s'] / a['wall s']:.2f}")


if __name__ == "__main__":
    main()
