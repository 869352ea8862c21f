"""The whole pipeline through DVC, in a copy of the repo: outputs, metrics, MLflow, and what reruns."""

import csv
import json
import os
import shutil
import subprocess
import time

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from imgclf.data.split import data_version
from imgclf.models import build_model

from .conftest import ROOT, TINY_MODEL

STAGES = ("fetch", "split", "train", "evaluate", "export")
# the sample subset and timm's tiny test network: a smoke run of every stage in seconds
TINY = [arg for o in ("trainer.epochs=2", "data.subset=sample", *TINY_MODEL) for arg in ("-S", o)]


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
    from .conftest import BIN

    env = dict(
        os.environ,
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    sh(["git", "init", "-q"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "init"], repo, env)
    return env


@pytest.mark.slow
def test_dvc_pipeline_end_to_end(repo, env):
    out = sh(["dvc", "exp", "run", *TINY], repo, env)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["trainer"]["epochs"] == 2 and params["data"]["subset"] == "sample"

    # every declared output is there
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    for stage in STAGES:
        for entry in lock["stages"][stage].get("outs", []):
            assert (repo / entry["path"]).exists(), entry["path"]
    assert len(list((repo / "data/digits/images").rglob("*.png"))) == 1797
    assert not (repo / "outputs").exists() and not list(repo.glob("*.log"))  # Hydra left nothing behind
    assert not [line for line in sh(["git", "status", "--porcelain"], repo, env).splitlines() if line.startswith("??")]

    metrics = json.loads((repo / "reports/evaluate/metrics.json").read_text())
    rows = list(csv.DictReader(open(repo / "reports/evaluate/predictions.csv")))
    assert len(rows) == 50  # the sample subset of the test split: 5 of each digit
    assert metrics["test/acc"] == pytest.approx(sum(r["actual"] == r["predicted"] for r in rows) / len(rows))
    shown = json.loads(sh(["dvc", "metrics", "show", "--json"], repo, env))
    assert "reports/evaluate/metrics.json" in json.dumps(shown)
    plots = json.loads(sh(["dvc", "plots", "show", "--json"], repo, env))["data"]
    assert {"Loss", "Accuracy", "reports/evaluate/predictions.csv", "reports/evaluate/confusion_matrix.png"} <= set(
        plots
    )
    loss_points = plots["Loss"][0]["content"]["data"]["values"]
    assert {p["epoch"] for p in loss_points} == {"1", "2"}

    run_id = json.loads((repo / "models/run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.epochs"] == "2" and run.data.params["model.name"] == "test_resnet"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2]
    assert run.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    assert "export/onnx_max_abs_diff" in run.data.metrics
    assert run.data.tags["imgclf.export_dir"] == str(repo / "models" / "export")
    best = sh(["imgclf", "runs", "--uri", f"sqlite:///{repo}/mlflow.db", "--best"], repo, env)
    assert best.splitlines()[0] == run_id and f"export: {repo / 'models' / 'export'}" in best
    assert f"model_uri: {run.data.tags['imgclf.model_uri']}" in best and "models:/" in best
    assert run.data.tags["mlflow.source.git.commit"] == sh(["git", "rev-parse", "HEAD"], repo, env).strip()
    assert run.data.tags["imgclf.dataset"] == "digits"
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"train", "checkpoint", "evaluate", "export", "data"} <= top
    assert json.loads((repo / "reports/split/report.json").read_text())["images_per_split"]["test"] == 360

    # nothing changed: nothing reruns
    again = sh(["dvc", "repro"], repo, env)
    assert "Running stage" not in again
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], repo, env)

    # a learning-rate change reruns train and what follows, not fetch or split
    out = sh(["dvc", "exp", "run", *TINY, "-S", "optim.lr=0.001"], repo, env)
    assert "Running stage 'fetch'" not in out and "Running stage 'split'" not in out
    for stage in ("train", "evaluate", "export"):
        assert f"Running stage '{stage}'" in out
    new_id = json.loads((repo / "models/run.json").read_text())["run_id"]
    assert new_id != run_id
    assert client.get_run(new_id).data.params["optim.lr"] == "0.001"
    exps = json.loads(sh(["dvc", "exp", "show", "--json"], repo, env))
    assert "0.001" in json.dumps(exps)
    check_every_input_invalidates_its_stages(repo, env)


def changed_stages(repo, env):
    """The stages `dvc status` says are out of date (their own deps, params or outs changed); DVC's Python API
    in this process, as `dvc status --json` computes it, without a DVC start-up per check."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        return set(dvc.status())


# each kind of input, and the stages that read it: a params section, one code file per stage
INPUTS = {
    "params data.split.seed": ({"split"}, "params.yaml", ("seed: 0", "seed: 1")),
    "params optim.lr": ({"train"}, "params.yaml", ("lr: 0.001", "lr: 0.002")),
    "params trainer.batch_size": ({"train", "evaluate"}, "params.yaml", ("batch_size: 64", "batch_size: 32")),
    "params export.opset": ({"export"}, "params.yaml", ("opset: 18", "opset: 17")),
    "code data/digits.py": ({"fetch"}, "src/imgclf/data/digits.py", None),
    "code data/report.py": ({"split"}, "src/imgclf/data/report.py", None),
    "code finetune.py": ({"train", "evaluate", "export"}, "src/imgclf/finetune.py", None),  # via lifecycle
    "code evaluation.py": ({"evaluate"}, "src/imgclf/evaluation.py", None),
    "code export.py": ({"export"}, "src/imgclf/export.py", None),
    "code serving.py": ({"split", "train", "evaluate", "export"}, "src/imgclf/serving.py", None),
    "conf/no_input.md (every unset external input)": ({"fetch", "train"}, "conf/no_input.md", None),
}


def check_every_input_invalidates_its_stages(repo, env):
    """Issue 11: change one input, and `dvc status` marks exactly the stages that read it; undo it, none."""
    assert changed_stages(repo, env) == set()
    for name, (stages, rel, edit) in INPUTS.items():
        path = repo / rel
        before = path.read_text()
        path.write_text(before.replace(*edit, 1) if edit else before + "\n# an edit\n")
        assert path.read_text() != before, name
        assert changed_stages(repo, env) == stages, name
        path.write_text(before)
    assert changed_stages(repo, env) == set()


@pytest.mark.slow
def test_digits_lab_workflow_on_a_folder(repo, env, tmp_path):
    """User story 1: a folder of class sub-folders, a few epochs, through `dvc exp run -S` (the tiny network:
    AlexNet itself is trained by the recipe and weights tests)."""
    from .conftest import make_class_folders

    folder = make_class_folders(tmp_path / "train_small", {"0": 20, "1": 20, "2": 20})
    folder_data = ("data=folder", f"data.path={folder}", "data.split.sample_per_class=2")
    out = sh(["dvc", "exp", "run", *TINY, *(arg for o in folder_data for arg in ("-S", o))], repo, env)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
    assert (repo / "data/folder/split/labels.txt").read_text().split() == ["0", "1", "2"]
    metrics = json.loads((repo / "reports/evaluate/metrics.json").read_text())
    assert {"test/precision/0", "test/recall/2"} <= set(metrics)
    run = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db").get_run(
        json.loads((repo / "models/run.json").read_text())["run_id"]
    )
    assert run.data.params["data.path"] == str(folder) and run.data.tags["imgclf.dataset"] == "folder"

    # the folder is outside the repo, yet a dependency: DVC notices an image edited, added or removed there
    assert changed_stages(repo, env) == set()
    edited = folder / "1" / "000.png"
    original = edited.read_bytes()
    Image.new("RGB", (8, 8), (0, 255, 0)).save(edited)  # same name, new pixels
    assert changed_stages(repo, env) == {"fetch"}
    edited.write_bytes(original)
    assert changed_stages(repo, env) == set()
    (folder / "2" / "000.png").rename(folder / "1" / "moved.png")  # relabelled: moved between classes
    assert changed_stages(repo, env) == {"fetch"}
    out = sh(["dvc", "repro", "split"], repo, env)
    assert "Running stage 'fetch'" in out and "Running stage 'split'" in out
    assert (repo / "data/folder/images/1/moved.png").is_file() and not (repo / "data/folder/images/2/000.png").exists()
    assert data_version(repo / "data/folder/split") != run.data.tags["imgclf.data_version"]  # content, not names
    assert changed_stages(repo, env) == {"train", "evaluate", "export"}  # the next model learns the new data

    # a weights file named in the config is a dependency of train
    weights = tmp_path / "start.pt"
    torch.save(build_model("test_resnet", 3, source="timm").state_dict(), weights)
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(
        params.replace(
            "weights: null\n  inputs:\n  - conf/no_input.md", f"weights: {weights}\n  inputs:\n  - {weights}"
        )
    )
    assert changed_stages(repo, env) == {"train", "evaluate", "export"}
    sh(["dvc", "commit", "--force", "train"], repo, env)  # record train's deps as they are now, without training
    assert changed_stages(repo, env) == {"evaluate", "export"}
    torch.save({k: v + 1 for k, v in torch.load(weights).items()}, weights)  # the weights file's content changes
    assert changed_stages(repo, env) == {"train", "evaluate", "export"}


def experiments(shown):
    """(params, metrics) of every experiment in `dvc exp show --json`, whatever the nesting."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            data = node.get("data")
            if isinstance(data, dict) and data.get("params") and data.get("rev") != "workspace":
                params = data["params"].get("params.yaml", {}).get("data", {})
                metrics = {k: v for f in (data.get("metrics") or {}).values() for k, v in (f.get("data") or {}).items()}
                found.append((data.get("name") or data.get("rev"), params, metrics))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(shown)
    return found


@pytest.mark.slow
def test_dvc_queue_runs_a_pair_shown_in_exp_show_and_mlflow(repo, env):
    sh(["git", "checkout", "--", "params.yaml", "dvc.lock"], repo, env)  # the default, whatever ran before
    sh(["dvc", "exp", "run", "--queue", "-S", "optim.lr=0.002,0.0002", *TINY], repo, env)
    sh(["dvc", "queue", "start", "-j", "1"], repo, env)
    deadline = time.time() + 900
    while True:
        status = sh(["dvc", "queue", "status"], repo, env)
        if not any(word in status for word in ("Queued", "Running")):
            break
        assert time.time() < deadline, status
        time.sleep(3)
    failed = [line.split()[0] for line in status.splitlines() if "Failed" in line]
    assert not failed, status + "".join(sh(["dvc", "queue", "logs", task], repo, env) for task in failed)
    shown = experiments(json.loads(sh(["dvc", "exp", "show", "--json"], repo, env)))
    by_lr = {params["optim"]["lr"]: metrics for _, params, metrics in shown}
    assert {0.002, 0.0002} <= set(by_lr)
    # each queued experiment ran in a temporary copy, yet logged into the project's store (DVC_ROOT)
    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("imgclf").experiment_id])
    logged = {r.data.params["optim.lr"]: r for r in runs}
    for lr in ("0.002", "0.0002"):
        assert logged[lr].info.status == "FINISHED"
        assert logged[lr].data.metrics["test/acc"] == pytest.approx(by_lr[float(lr)]["test/acc"])
        assert logged[lr].data.metrics["best/val/acc"] == pytest.approx(by_lr[float(lr)]["val/acc"])
