"""`imgclf reproduce RUN_ID`: the run again from its record, identical on this machine; refused when code or data
differ, naming the difference."""

import json
import tempfile

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from imgclf.cli import reproduce
from imgclf.stages.evaluate import evaluate
from imgclf.stages.train import train


@pytest.fixture
def recorded(tiny_cfg, tiny_project):
    cfg = tiny_cfg()
    train(cfg)
    evaluate(cfg)
    return cfg, json.loads((tiny_project / "models/run.json").read_text())["run_id"]


def test_reproduces_the_run_with_identical_metrics_into_a_new_tagged_run(
    recorded, tiny_project, capsys, tmp_path, monkeypatch
):
    cfg, run_id = recorded
    (tmp := tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    assert reproduce([run_id, "--uri", cfg.tracking.uri]) == 0
    assert not list(tmp.iterdir())  # the record it read was downloaded into a temporary folder, now gone
    out = capsys.readouterr().out
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    again = [
        r
        for r in client.search_runs([client.get_experiment_by_name("test").experiment_id])
        if r.data.tags.get("imgclf.reproduces") == run_id
    ]
    assert len(again) == 1 and again[0].info.status == "FINISHED"
    original = client.get_run(run_id).data.metrics
    for key in ("best/val/acc", "test/acc", "test/macro_f1", "test/loss"):
        assert again[0].data.metrics[key] == original[key], key  # bit for bit: same machine, code and data
        assert key in out
    assert "identical expected" in out and "reproduced" in out
    assert (tiny_project / "reproduce" / run_id / "models" / "model.pt").is_file()  # not over the DVC outputs


def test_refuses_when_the_data_changed(recorded, tiny_project, capsys):
    from imgclf.data.folder import scan_image_folder
    from imgclf.data.split import read_index, write_split

    cfg, run_id = recorded
    image = tiny_project / "data/tiny/images" / read_index("data/tiny/split/train.csv")[0][0]
    Image.new("RGB", (8, 8), (1, 2, 3)).save(image)  # one image edited in place, and split rerun
    scan = scan_image_folder(tiny_project / "data/tiny/images")
    splits = {s: read_index(f"data/tiny/split/{s}.csv") for s in ("train", "val", "test")}
    write_split(
        tiny_project / "data/tiny/split", splits, scan.class_names, 4, 0, {p: i.sha256 for p, i in scan.info.items()}
    )
    assert reproduce([run_id, "--uri", cfg.tracking.uri]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot reproduce run {run_id}: the data differs: the run trained on data version")
    assert "\n" not in err


def test_refuses_when_the_code_changed(recorded, monkeypatch, capsys):
    cfg, run_id = recorded
    monkeypatch.setattr("imgclf.reproduce.code_version", lambda: "0000000000000000")
    assert reproduce([run_id, "--uri", cfg.tracking.uri]) == 1
    err = capsys.readouterr().err
    assert "the code differs: the run was made by code version" in err and "this checkout has 0000000000000000" in err


def test_sigterm_ends_reproduce_as_it_ends_a_stage(project_env):
    """`imgclf reproduce` trains in its own process: SIGTERM there must end the work as in a stage (a
    KeyboardInterrupt the run marks KILLED), not kill the process with the run left RUNNING."""
    import subprocess
    import sys

    script = (
        "import os, signal, sys, time\nimport imgclf.cli as cli\n"
        "def training(argv):\n    os.kill(os.getpid(), signal.SIGTERM)\n    time.sleep(60)\n"
        "cli.reproduce = training\nsys.argv = ['imgclf', 'reproduce', '0' * 32]\ncli.main()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=project_env)
    assert done.returncode == 143 and done.stderr == "stopped by SIGTERM\n", done.stderr[-2000:]


def test_an_out_dir_already_in_use_is_refused_before_anything_is_read(tmp_path, capsys):
    used = tmp_path / "models"
    (used / "export").mkdir(parents=True)
    for out_dir, says in ((used, "is already there: give a new or empty folder"), (tmp_path / "x.txt", "(a file)")):
        (tmp_path / "x.txt").write_text("x")
        assert reproduce(["0123", "--uri", f"sqlite:///{tmp_path}/none.db", "--out-dir", str(out_dir)]) == 1
        assert says in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "x.txt"]  # no store made, nothing written


def test_a_tolerance_below_0_or_not_a_number_is_one_line_before_anything_is_read(capsys):
    import pytest

    for value in ("-1", "nan", "inf", "x"):
        with pytest.raises(SystemExit) as exit_:
            reproduce(["0123", "--tolerance", value])
        assert exit_.value.code == 2
        assert f"argument --tolerance: '{value}' is not valid: a number >= 0" in capsys.readouterr().err


def test_a_run_that_is_no_training_is_named_as_such(tmp_path, capsys):
    """A sweep's parent run, or a run without train/config.yaml (lr-find, one that failed before training, another
    tool's): one line saying what to give, not MLflow's 'Failed to download artifacts'."""
    from .conftest import empty_mlflow_store

    store = empty_mlflow_store(tmp_path / "mlflow.db")
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment, tags={"imgclf.role": "sweep"}).info.run_id
    other = client.create_run(experiment, run_name="lr-find").info.run_id
    out = str(tmp_path / "out")
    capsys.readouterr()  # what making the store logged
    assert reproduce([parent, "--uri", f"sqlite:///{store}", "--out-dir", out]) == 1
    said = capsys.readouterr().err
    assert said == f"error: run {parent} is a sweep's parent run, not a training: give one of its jobs (imgclf runs " \
        f"--sweep {parent})\n"  # fmt: skip
    assert reproduce([other, "--uri", f"sqlite:///{store}", "--out-dir", out]) == 1
    said = capsys.readouterr().err
    assert said == f"error: run {other} (lr-find) is no training imgclf recorded (no train/config.yaml): give a " \
        "train run's id (imgclf runs lists them)\n"  # fmt: skip
    assert not (tmp_path / "out").exists()
    uri = f"sqlite:///{store}"
    for run_id, says in (
        ("nosuchrun", "'nosuchrun' is not an MLflow run id (32 hex digits)"),  # was MLflow's 'Run ... not found'
        ("", "'' is not an MLflow run id (32 hex digits)"),  # was 'Invalid value "" for parameter'
        ("0" * 32, f"no run {'0' * 32} in {uri}"),
    ):
        assert reproduce([run_id, "--uri", uri, "--out-dir", out]) == 1
        assert capsys.readouterr().err == f"error: {says}: `imgclf runs --uri {uri}` lists the runs there\n"
    assert not (tmp_path / "out").exists()


def test_refuses_when_the_cached_imagenet_weights_changed(tiny_cfg, tiny_project, monkeypatch, tmp_path, capsys):
    """model.pretrained reads a file in Hugging Face's cache, which no DVC dependency follows: a new snapshot there
    (`hf download` moves refs/main) trained another model under the same params. The run records the file's
    sha256, a resume and `imgclf reproduce` compare it."""
    import hashlib

    import timm
    import torch
    from safetensors.torch import save_file

    repo = tmp_path / "hub" / "models--timm--test_resnet.r160_in1k"
    digests = {}
    for seed, revision in ((1, "a" * 40), (2, "b" * 40)):
        torch.manual_seed(seed)
        (folder := repo / "snapshots" / revision).mkdir(parents=True)
        save_file(timm.create_model("test_resnet").state_dict(), folder / "model.safetensors")
        digests[revision] = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = tiny_cfg("model.pretrained=true", "model.download=false")
    train(cfg)
    run_id = json.loads((tiny_project / "models/run.json").read_text())["run_id"]
    tags = MlflowClient(tracking_uri=cfg.tracking.uri).get_run(run_id).data.tags
    assert tags["imgclf.pretrained_sha256"] == digests["a" * 40]
    assert tags["imgclf.pretrained_file"].endswith(f"snapshots/{'a' * 40}/model.safetensors")
    (repo / "refs" / "main").write_text("b" * 40)  # a new snapshot of the same weights' name
    assert reproduce([run_id, "--uri", cfg.tracking.uri]) == 1
    err = capsys.readouterr().err
    assert f"its ImageNet weights differ (sha256 {digests['a' * 40][:12]} then, sha256 {digests['b' * 40][:12]}" in err
