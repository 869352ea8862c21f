"""The whole pipeline through DVC on the embedded digits: outputs, metrics, MLflow, and what each input reruns."""

import csv
import json
import os
import subprocess
import time
from pathlib import Path
from subprocess import PIPE, STDOUT

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ..warm import fresh
from .conftest import STAGES, TINY, changed_stages, sh
from .pages import run_page


@pytest.mark.slow
def test_dvc_pipeline_end_to_end(repo, env):
    # every stage in a fresh interpreter, as a user's run (later commands run them warm: tests/warm.py)
    first = subprocess.Popen(
        ["dvc", "exp", "run", *TINY], cwd=repo, env=fresh(env), stdout=PIPE, stderr=STDOUT, text=True
    )
    while not (repo / "data" / "digits" / "images").is_dir():  # the first is well under way, holding DVC's lock
        assert first.poll() is None, first.communicate()[0][-3000:]
        time.sleep(0.1)
    second = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    # DVC's own lock messages: the repo lock, or the read/write lock on the outputs the first is writing
    assert second.returncode != 0 and ("Unable to acquire lock" in second.stderr or "is busy" in second.stderr)
    out = first.communicate(timeout=900)[0]
    assert first.returncode == 0, out[-3000:]  # unharmed: it goes on to the end
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
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))  # one file each: DVC's cache, workspace, run
    for logged, ours in (("checkpoint/model.pt", "models/model.pt"), ("export/model.pt2", "models/export/model.pt2")):
        assert os.path.samefile(artifacts / logged, repo / ours), logged
    assert {"train", "checkpoint", "evaluate", "export", "data"} <= top
    assert json.loads((repo / "reports/split/report.json").read_text())["images_per_split"]["test"] == 360
    gate = json.loads((repo / "models/optimised/gate.json").read_text())  # optimise's verdict, promoted or not
    assert run.data.metrics["optimise/int8_onnx/promoted"] == float(gate["promoted"])

    # `make exps`: dvc exp show narrowed to what tells experiments apart, whole at a terminal's 200 columns
    shown = sh(["make", "-s", "exps"], repo, dict(env, COLUMNS="200")).splitlines()
    header = next(line for line in shown if "Experiment" in line).split()
    assert {"test/acc", "val/acc", "data.name", "model.name", "optim.lr", "trainer.epochs"} <= set(header)
    assert max(map(len, shown)) <= 200 and "…" not in "".join(shown)

    # nothing changed: nothing reruns
    again = sh(["dvc", "repro"], repo, env)
    assert "Running stage" not in again
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], repo, env)

    check_every_input_invalidates_its_stages(repo, env)
    check_the_getting_started_page(repo, env)


def check_the_getting_started_page(repo, env):
    """docs/tutorials/getting-started.md's commands, as the page lists them, after the pipeline above."""
    done = "the pipeline above is its dvc repro, on the tiny network"
    out = run_page(
        "tutorials/getting-started.md",
        repo,
        env,
        paths={},
        skip={
            "make pipeline": done,
            "source .venv/bin/activate": "this test runs in the environment",
            "make serve": "a server until stopped: tests/e2e/test_serve.py drives it in Chromium",
        },
    )
    one = out["imgclf predict data/digits/images/3/0045.png"]
    assert one.splitlines()[0].endswith("0045.png") and len(one.splitlines()) == 6  # the path, then the top 5
    assert "test/acc" in out["imgclf runs --metric test/acc"]
    assert "ok: optim.lr=0.001" in out["imgclf check -S optim.lr=0.001"]
    run = out["dvc exp run -S optim.lr=0.001"]
    assert "Running stage 'train'" in run and "Running stage 'fetch'" not in run  # only what the rate changes
    assert yaml.safe_load((repo / "params.yaml").read_text())["optim"]["lr"] == 0.001
    assert "0.001" in out["make exps"]


# each kind of input, and the stages that read it: a params section, one code file per stage
INPUTS = {
    "params data.fetch": ({"fetch"}, "params.yaml", ("fetch_digits", "fetch_digits_v2")),
    "params data.split.seed": ({"split"}, "params.yaml", ("seed: 0", "seed: 1")),
    "params optim.lr": ({"train"}, "params.yaml", ("lr: 0.0005", "lr: 0.002")),
    "params trainer.batch_size": (
        {"train", "evaluate", "label_issues"},
        "params.yaml",
        ("batch_size: 64", "batch_size: 32"),
    ),
    "params export.opset": ({"export"}, "params.yaml", ("opset: 18", "opset: 17")),
    # optimise registers its model as <name>-<method>
    "params export.registered_name": ({"export", "optimise"}, "params.yaml", ("imgclf-digits", "imgclf-lab")),
    "params optimise.significance": ({"optimise"}, "params.yaml", ("significance: 0.05", "significance: 0.01")),
    "code data/digits.py": ({"fetch"}, "src/imgclf/data/digits.py", None),
    "code data/report.py": ({"split", "train"}, "src/imgclf/data/report.py", None),  # train: augment=auto
    # a training-only edit reruns train alone (and, through model.pt, what reads it): no stage after imports training
    "code training/finetune.py": ({"train"}, "src/imgclf/training/finetune.py", None),
    "code analysis.py": ({"evaluate"}, "src/imgclf/analysis.py", None),
    "code deploy/export.py": ({"export"}, "src/imgclf/deploy/export.py", None),
    "code deploy/program.py": ({"export", "optimise"}, "src/imgclf/deploy/program.py", None),  # optimise loads .pt2
    "code data/images.py": (
        {"fetch", "split", "train", "evaluate", "label_issues", "export", "optimise"},  # fetch: folder.py
        "src/imgclf/data/images.py",
        None,
    ),
    "code contract.py": (
        {"split", "train", "evaluate", "label_issues", "export", "optimise"},
        "src/imgclf/contract.py",
        None,
    ),
    "code label_issues.py": ({"label_issues"}, "src/imgclf/label_issues.py", None),
    "relabel/ (labels fixed after the fact)": ({"split"}, "relabel/README.md", None),
    "code deploy/quantize.py": ({"optimise"}, "src/imgclf/deploy/quantize.py", None),
    "conf/no_input.md (every unset external input)": ({"fetch", "train"}, "conf/no_input.md", None),
}


def check_every_input_invalidates_its_stages(repo, env):
    """Change one input, and `dvc status` marks exactly the stages that read it; undo it, none."""
    assert changed_stages(repo, env) == set()
    for name, (stages, rel, edit) in INPUTS.items():
        path = repo / rel
        before = path.read_text()
        path.write_text(before.replace(*edit, 1) if edit else before + "\n# an edit\n")
        assert path.read_text() != before, name
        assert changed_stages(repo, env) == stages, name
        path.write_text(before)
    assert changed_stages(repo, env) == set()
