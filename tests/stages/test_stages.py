"""train -> evaluate -> export in-process on a tiny data set: outputs, MLflow contents, determinism, failures."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from mlflow.tracking import MlflowClient

from imgclf.data.images import decode_image
from imgclf.data.transforms import center_crop
from imgclf.errors import BadInput
from imgclf.stages.evaluate import evaluate
from imgclf.stages.export import export
from imgclf.stages.train import train
from imgclf.training.engine import NonFiniteLoss

from ..conftest import ROOT, TINY_DATA, TINY_OVERRIDES, copy_of, stage_main


def artifact_paths(client, run_id, path=None):
    out = []
    for item in client.list_artifacts(run_id, path):
        out.extend(artifact_paths(client, run_id, item.path) if item.is_dir else [item.path])
    return out


def test_train_evaluate_export_in_one_mlflow_run(tiny_cfg, tiny_project):
    cfg = tiny_cfg()
    best = train(cfg)
    run_id = json.loads((tiny_project / "models/run.json").read_text())["run_id"]
    history = list(csv.DictReader(open(tiny_project / "reports/train/history.csv")))
    assert [int(h["epoch"]) for h in history] == [1, 2]
    assert best == max(float(h["val/acc"]) for h in history)
    ckpt = torch.load(tiny_project / "models/model.pt", weights_only=True)
    assert ckpt["class_names"] == ["a", "b", "c"] and ckpt["arch"] == "test_resnet" and ckpt["image_size"] == 32
    assert ckpt["config"]["trainer"]["epochs"] == 2
    assert not (tiny_project / "checkpoints").exists()  # finished: no checkpoint, and no empty folder, is left

    test_acc = evaluate(cfg)
    metrics = json.loads((tiny_project / "reports/evaluate/metrics.json").read_text())
    assert metrics["test/acc"] == test_acc
    assert {"test/macro_f1", "test/precision/a", "test/recall/c"} <= set(metrics)
    rows = list(csv.DictReader(open(tiny_project / "reports/evaluate/predictions.csv")))
    assert len(rows) == 12  # 20% of 60 images
    assert np.mean([r["actual"] == r["predicted"] for r in rows]) == pytest.approx(test_acc)
    assert metrics["test/top5_acc"] == 1.0  # k capped at the 3 classes
    analysis = json.loads((tiny_project / "reports/evaluate/analysis.json").read_text())
    losses = {r["path"]: -np.log(max(float(r[f"p_{r['actual']}"]), 1e-12)) for r in rows}
    shown = [r["path"] for r in analysis["top_losses"]]
    rest = [loss for path, loss in losses.items() if path not in shown]
    assert min(losses[p] for p in shown) >= max(rest, default=0) - 1e-5  # the highest-loss test images
    assert [losses[p] for p in shown] == pytest.approx(sorted((losses[p] for p in shown), reverse=True), abs=1e-5)
    counts = np.array(analysis["confusion_matrix"]["counts"])
    assert counts.sum() == len(rows) == 12 and np.trace(counts) == round(test_acc * 12)
    assert [metrics[f"test/support/{c}"] for c in "abc"] == list(counts.sum(1))
    n_wrong = sum(r["actual"] != r["predicted"] for r in rows)
    assert sum(p["count"] for p in analysis["most_confused"]) == n_wrong
    # the run's test/* are the last evaluation's: a tag says with which test-time views (its params hold train's)
    run = MlflowClient(tracking_uri=f"sqlite:///{tiny_project}/mlflow.db").get_run(run_id)
    assert run.data.tags["imgclf.evaluate.tta"] == ("+".join(cfg.evaluate.tta) or "none")
    evaluate(tiny_cfg("evaluate.tta=[hflip]"))
    run = MlflowClient(tracking_uri=f"sqlite:///{tiny_project}/mlflow.db").get_run(run_id)
    assert run.data.tags["imgclf.evaluate.tta"] == "hflip" and "test_tta/acc" in run.data.metrics

    export(cfg)
    report = json.loads((tiny_project / "reports/export/metrics.json").read_text())
    assert report["export/onnx_max_abs_diff"] < 1e-4 and report["export/onnx_top1_agreement"] == 1.0
    assert report["export/pt2_max_abs_diff"] < 1e-4 and report["export/pt2_top1_agreement"] == 1.0
    latency = json.loads((tiny_project / "reports/export/latency.json").read_text())
    assert set(latency) == {"pytorch", "onnxruntime", "pt2"}
    assert all(f["b1_ms"] > 0 and f["b32_images_per_sec"] > 0 for f in latency.values())
    program = torch.export.load(str(tiny_project / "models/export/model.pt2")).module()
    assert program(torch.zeros(1, 3, 32, 32)).shape == (1, 3) and program(torch.zeros(5, 3, 32, 32)).shape == (5, 3)
    assert not (tiny_project / "models/export/model.ts").exists()  # TorchScript is gone
    exported = tiny_project / "models/export"
    assert (exported / "labels.txt").read_text().split() == ["a", "b", "c"]
    spec = json.loads((exported / "preprocessing.json").read_text())
    assert spec["image_size"] == 32 and spec["mean"] == ckpt["mean"] and spec["std"] == ckpt["std"]
    session = ort.InferenceSession(str(exported / "model.onnx"))
    assert session.run(None, {"images": np.zeros((5, 3, 32, 32), np.float32)})[0].shape == (5, 3)  # dynamic batch

    # the MLflow model: registered, loads back through pyfunc, predicts what onnxruntime predicts
    import mlflow

    mlflow.set_tracking_uri(cfg.tracking.uri)
    served = mlflow.pyfunc.load_model(f"models:/{cfg.export.registered_name}/1")
    stored, size = spec["resize_size"], spec["image_size"]  # what a client does: preprocessing.json's "how"
    assert spec["resize"] == "crop" and stored > size
    images = np.stack(
        [
            center_crop(decode_image(tiny_project / "data/tiny/images" / r["path"], stored).transpose(2, 0, 1), size)
            for r in rows
        ]
    ).transpose(0, 2, 3, 1)
    out = served.predict(images)
    np.testing.assert_allclose(
        out[["a", "b", "c"]].to_numpy(), [[float(r[f"p_{c}"]) for c in "abc"] for r in rows], atol=1e-4
    )
    assert list(out["label"]) == [r["predicted"] for r in rows]
    # contract.py is pickled into the model by value: it loads and predicts the same where imgclf is not installed
    np.save(tiny_project / "images.npy", images)
    script = (
        "import sys; sys.modules['imgclf'] = None; import mlflow, numpy as np; "
        f"m = mlflow.pyfunc.load_model('models:/{cfg.export.registered_name}/1'); "
        f"print(list(m.predict(np.load('{tiny_project / 'images.npy'}'))['label']))"
    )
    alone = subprocess.run(
        [sys.executable, "-c", script],
        env=dict(os.environ, MLFLOW_TRACKING_URI=cfg.tracking.uri),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tiny_project,
    )
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert alone.stdout.strip().splitlines()[-1] == str(list(out["label"]))

    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    run = client.get_run(run_id)
    assert (
        run.info.status == "FINISHED" and run.info.run_name == "test_resnet-tiny-lr5e-4-b8"
    )  # what differs, compactly
    params = run.data.params
    assert params["optim.lr"] == str(cfg.optim.lr) and params["trainer.epochs"] == "2" and params["data.name"] == "tiny"
    assert [m.step for m in client.get_metric_history(run_id, "val/acc")] == [1, 2]
    assert run.data.metrics["test/acc"] == test_acc
    assert run.data.metrics["export/onnx_max_abs_diff"] == report["export/onnx_max_abs_diff"]
    tags = run.data.tags
    assert tags["imgclf.dataset"] == "tiny" and tags["imgclf.model"] == "test_resnet"
    assert len(tags["imgclf.data_version"]) == 16
    assert {
        "train/config.yaml",
        "train/history.csv",
        "train/curves.png",
        "train/labels.txt",
        "checkpoint/model.pt",
        "evaluate/confusion_matrix.png",
        "evaluate/predictions.csv",
        "evaluate/top_losses.png",
        "evaluate/analysis.json",
        "export/model.onnx",
        "export/labels.txt",
    } <= set(artifact_paths(client, run_id))
    # one file on disk for each model: the run's copies are read-only hard links to what the workspace holds
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    for logged, ours in (("checkpoint/model.pt", "models/model.pt"), ("export/model.onnx", "models/export/model.onnx")):
        assert os.path.samefile(artifacts / logged, tiny_project / ours), logged
        assert not (artifacts / logged).stat().st_mode & 0o222, logged
    served_copies = list(artifacts.parents[2].rglob("models/*/artifacts/artifacts/model.onnx"))  # the pyfunc's
    assert served_copies and all(os.path.samefile(c, tiny_project / "models/export/model.onnx") for c in served_copies)


def test_the_next_run_leaves_the_last_runs_logged_model_as_it_was(tiny_cfg, tiny_project):
    train(tiny_cfg("trainer.epochs=1"))
    first = json.loads((tiny_project / "models/run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=tiny_cfg().tracking.uri)
    logged = Path(client.get_run(first).info.artifact_uri.removeprefix("file://")) / "checkpoint/model.pt"
    kept = logged.read_bytes()
    assert kept == (tiny_project / "models/model.pt").read_bytes()
    train(tiny_cfg("trainer.epochs=1", "optim.lr=0.002"))  # a new model.pt: written whole, renamed into place
    assert (tiny_project / "models/model.pt").read_bytes() != kept and logged.read_bytes() == kept


def test_same_config_twice_gives_identical_metrics(tiny_cfg, tiny_project):
    cfg = tiny_cfg("trainer.epochs=1")
    train(cfg)
    first = (tiny_project / "reports/train/history.csv").read_text().splitlines()
    train(cfg)
    second = (tiny_project / "reports/train/history.csv").read_text().splitlines()
    strip = lambda rows: [
        [v for k, v in zip(rows[0].split(","), r.split(",")) if "time" not in k and "per_sec" not in k]  # noqa: E731
        for r in rows
    ]
    assert strip(first) == strip(second)


def test_failing_train_marks_run_failed(tiny_cfg, tiny_project):
    cfg = tiny_cfg("optim.lr=1e30", "trainer.epochs=1")  # diverges: a NaN/inf loss stops the run
    with pytest.raises(NonFiniteLoss, match="loss is (nan|inf) at epoch 1 step"):
        train(cfg)
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert not (tiny_project / "models/model.pt").exists()


def test_too_small_image_size_is_refused(tiny_project, compose_cfg):
    with pytest.raises(BadInput, match="model.image_size=32 is too small for alexnet: it needs at least 63 px"):
        train(compose_cfg(*TINY_DATA, "model=alexnet", "model.image_size=32"))


def test_an_evaluate_that_fails_half_way_leaves_the_last_report_as_it_was(trained_project, tmp_path, monkeypatch):
    import imgclf.stages.evaluate as stage

    project = copy_of(trained_project, tmp_path / "project")
    report = project / "reports/evaluate"
    (report / "metrics.json").write_text('{"test/acc": -1}\n')  # what no evaluate of this model writes
    before = {p.name: p.read_bytes() for p in report.iterdir()}

    def fails(*args, **kwargs):
        raise RuntimeError("Grad-CAM failed")

    monkeypatch.setattr(stage, "grad_cam", fails)  # after the metrics and plots, before the Grad-CAM plot
    argv = ["--config-dir", str(ROOT / "conf"), *TINY_OVERRIDES, f"tracking.uri=sqlite:///{project}/mlflow.db"]
    done = stage_main("evaluate", argv, project)
    assert done.returncode != 0 and "Grad-CAM failed" in done.stderr
    assert {p.name: p.read_bytes() for p in report.iterdir()} == before
    assert not list(project.glob("reports/.*"))  # no temporary folder left


@pytest.mark.parametrize(
    "stage,override,said",
    [
        ("evaluate", "model.name=resnet18", "model.name=resnet18, but models/model.pt was trained with "
         "model.name=test_resnet: train it first (dvc repro), or drop the override"),
        ("export", "model.image_size=48", "model.image_size=48, but models/model.pt was trained with "
         "model.image_size=32"),
        ("label_issues", "model.mean=[0.5,0.5,0.5]", "model.mean=[0.5, 0.5, 0.5], but models/model.pt was trained "
         "with model.mean=null"),
    ],
)  # fmt: skip
def test_a_stage_after_train_given_another_network_refuses_it_in_one_line(
    trained_project, tmp_path, stage, override, said
):
    """`python -m imgclf.stages.evaluate model.name=resnet18` evaluated the checkpoint's test_resnet and logged it as
    a second value of every test/* metric of its run: an override the stage could not apply, silently dropped."""
    project = copy_of(trained_project, tmp_path / "project")
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    argv = ["--config-dir", str(ROOT / "conf"), *TINY_OVERRIDES, f"tracking.uri=sqlite:///{project}/mlflow.db"]
    done = stage_main(stage, [*argv, override], project)
    assert done.returncode == 1 and done.stderr.startswith(f"error: {said}") and done.stderr.count("\n") == 1
    assert {p: p.read_bytes() for p in project.rglob("*") if p.is_file()} == before  # no outputs/DATE/TIME left
    assert not (project / "outputs").exists()


def test_a_refused_run_in_a_run_folder_given_takes_back_only_what_hydra_made(trained_project, tmp_path):
    """`evaluate hydra.run.dir=.` refused left ./.hydra/ and ./evaluate.log in the project; a folder given that was
    there before keeps what it held."""
    project = copy_of(trained_project, tmp_path / "project")
    (project / "mine").mkdir()
    (project / "mine" / "notes.txt").write_text("mine\n")
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    argv = ["--config-dir", str(ROOT / "conf"), *TINY_OVERRIDES, f"tracking.uri=sqlite:///{project}/mlflow.db"]
    for run_dir in (".", "mine", "runs/x"):
        done = stage_main("evaluate", [*argv, "model.name=resnet18", f"hydra.run.dir={run_dir}"], project)
        assert done.returncode == 1 and "was trained with model.name=test_resnet" in done.stderr, done.stderr
        assert {p: p.read_bytes() for p in project.rglob("*") if p.is_file()} == before, run_dir
        assert not (project / ".hydra").exists() and not (project / "runs").exists(), run_dir


def test_an_image_edited_after_its_pack_was_made_is_refused_by_a_stage_run_by_hand(trained_project, tmp_path):
    """`python -m imgclf.stages.evaluate` after a test image was edited (no split since): the pack made before the
    edit was evaluated as it was, with the old pixels, and nothing said."""
    from PIL import Image

    from imgclf.data.split import read_index

    project = copy_of(trained_project, tmp_path / "project")
    assert list((project / "data/tiny/cache").glob("full-test-*.npy"))  # evaluate's pack, made before
    rel = read_index(project / "data/tiny/split/test.csv")[0][0]
    Image.new("RGB", (8, 8), (7, 7, 7)).save(project / "data/tiny/images" / rel)
    argv = ["--config-dir", str(ROOT / "conf"), *TINY_OVERRIDES, f"tracking.uri=sqlite:///{project}/mlflow.db"]
    done = stage_main("evaluate", argv, project)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert done.stderr == (
        f"error: data/tiny/images/{rel} changed since the split stage ran (its sha256 differs from manifest.csv); "
        "rerun split (dvc repro) so the data version follows the images\n"
    )


def test_a_split_with_more_classes_than_a_classifier_has_is_refused_before_training(tiny_project):
    """The split's labels.txt sizes the head train builds: past MAX_CLASSES, one line before any data is read."""
    from imgclf.contract import MAX_CLASSES

    labels = tiny_project / "data/tiny/split/labels.txt"
    labels.write_text(labels.read_text() + "".join(f"extra{i}\n" for i in range(MAX_CLASSES)))
    argv = ["--config-dir", str(ROOT / "conf"), *TINY_OVERRIDES, f"tracking.uri=sqlite:///{tiny_project}/mlflow.db"]
    done = stage_main("train", argv, tiny_project)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert f"{MAX_CLASSES + 3:,} class names; a classifier has 2 to {MAX_CLASSES:,}" in done.stderr
    assert not (tiny_project / "models").exists()
