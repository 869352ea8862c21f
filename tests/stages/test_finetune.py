"""Fine-tuning strategies, resume after SIGKILL, SIGTERM and NaN handling, DDP with gloo, and the recipes."""

import csv
import json
import logging
import signal
import subprocess
import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from imgclf.models.build import build_model, head
from imgclf.stages.train import train
from imgclf.training import engine

from ..conftest import BIN, ROOT, TINY_DATA, TINY_OVERRIDES, stage_main
from ..models.test_models import torchvision_cache
from ..warm import kill, python

TIMING = ("train/epoch_time_s", "train/images_per_sec")


def history(project):
    rows = list(csv.DictReader(open(project / "reports/train/history.csv")))
    return [{k: float(v) for k, v in r.items() if k not in TIMING} for r in rows]


def start_weights(tmp_path, name="test_resnet"):
    """Random weights of the tiny test model, saved as a local weights file; and the names of its head's tensors."""
    torch.manual_seed(123)
    model = build_model(name, 3, source="timm")
    path = tmp_path / f"{name}-start.pt"
    torch.save(model.state_dict(), path)
    head_params = {id(p) for p in head(model).parameters()}
    return path, {n for n, p in model.named_parameters() if id(p) in head_params}


def test_head_only_trains_the_head_and_cached_features_change_nothing(tiny_cfg, tiny_project, tmp_path, caplog):
    caplog.set_level("INFO", logger="imgclf")
    start, head_keys = start_weights(tmp_path)
    assert head_keys == {"fc.weight", "fc.bias"}
    runs = {}
    for cache in ("true", "false"):
        caplog.clear()
        train(
            tiny_cfg(
                "finetune=head",
                f"finetune.cache_features={cache}",
                f"model.weights={start}",
                "augment=none",
            )
        )
        assert ("head only on cached features" in caplog.text) == (cache == "true")
        runs[cache] = history(tiny_project)
        trained = torch.load(tiny_project / "models/model.pt", weights_only=True)["model"]
        initial = torch.load(start, weights_only=True)
        assert all(torch.equal(trained[k], initial[k]) for k in initial if k not in head_keys)  # BN stats too
        assert not torch.equal(trained["fc.weight"], initial["fc.weight"])
    for cached, direct in zip(runs["true"], runs["false"]):
        assert cached == pytest.approx(direct, rel=1e-4, abs=1e-6)


def test_gradual_keeps_backbone_frozen_for_freeze_epochs_then_trains_it(
    tiny_cfg, tiny_project, tmp_path, caplog, monkeypatch
):
    caplog.set_level("INFO", logger="imgclf")
    # each epoch's val/acc beats the last: the best epoch is the last too, whatever trainer.keep says
    real_evaluate, epochs_seen = engine.evaluate, iter(range(1, 1000))

    def rising(*args, **kwargs):
        return {**real_evaluate(*args, **kwargs), "val/acc": next(epochs_seen) / 1000}

    monkeypatch.setattr(engine, "evaluate", rising)
    start, _ = start_weights(tmp_path)
    initial = torch.load(start, weights_only=True)
    for epochs, backbone_moved in ((1, False), (2, True)):
        train(
            tiny_cfg(
                "finetune=gradual",
                "finetune.freeze_epochs=1",
                f"trainer.epochs={epochs}",
                f"model.weights={start}",
                "trainer.compile=true",
            )
        )
        assert "trainer.compile=true: compiling only on CUDA; running eagerly on cpu" in caplog.text
        trained = torch.load(tiny_project / "models/model.pt", weights_only=True)["model"]
        assert (not torch.equal(trained["conv1.0.weight"], initial["conv1.0.weight"])) == backbone_moved


def test_nan_loss_fails_the_run_names_the_step_and_keeps_the_last_good_checkpoint(tiny_cfg, tiny_project, monkeypatch):
    from torch import nn

    from imgclf.training.engine import NonFiniteLoss

    calls = {"n": 0}

    class NaNOnSeventhStep(nn.CrossEntropyLoss):  # 5 steps per epoch: the 7th is epoch 2, step 2
        def forward(self, logits, target):
            calls["n"] += 1
            loss = super().forward(logits, target)
            return loss * float("nan") if calls["n"] == 7 else loss

    monkeypatch.setattr("imgclf.stages._build.nn.CrossEntropyLoss", NaNOnSeventhStep)
    with pytest.raises(
        NonFiniteLoss, match=r"loss is nan at epoch 2 step 2.*last good checkpoint is checkpoints/last.pt"
    ):
        train(tiny_cfg("trainer.epochs=3"))
    ckpt = torch.load(tiny_project / "checkpoints/last.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    run = MlflowClient(tracking_uri=f"sqlite:///{tiny_project}/mlflow.db").get_run(ckpt["run_id"])
    assert run.info.status == "FAILED"


def train_cmd(uri, *overrides):
    """The train stage's command line, in the warm interpreter (tests/warm.py; a test SIGKILLs it with `kill`)."""
    return [
        python(),
        "-m",
        "imgclf.stages.train",
        "--config-dir",
        str(ROOT / "conf"),
        *TINY_OVERRIDES,
        f"tracking.uri={uri}",
        *overrides,
    ]


def wait_for(path, proc, timeout=300):
    deadline = time.time() + timeout
    while not path.is_file():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.02)


def test_sigkill_then_resume_equals_an_uninterrupted_run_in_the_same_mlflow_run(tiny_project, project_env):
    uri = f"sqlite:///{tiny_project}/mlflow.db"
    cmd = train_cmd(uri, "trainer.epochs=4")  # the tiny model trains an epoch in well under a second
    done = stage_main("train", cmd[3:], tiny_project)  # uninterrupted: its main, in this process
    assert done.returncode == 0, done.stderr[-3000:]
    uninterrupted = history(tiny_project)

    proc = subprocess.Popen(
        cmd, cwd=tiny_project, env=project_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    last = tiny_project / "checkpoints" / "last.pt"
    wait_for(last, proc)
    kill(proc)  # no handler, no cleanup: as if the machine died
    proc.communicate()
    ckpt = torch.load(last, weights_only=True)
    assert 1 <= ckpt["epoch"] < 4
    resumed = stage_main("train", cmd[3:], tiny_project)  # resumed by its main, in this process
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from checkpoints/last.pt after epoch {ckpt['epoch']}" in resumed.stdout + resumed.stderr
    assert history(tiny_project) == uninterrupted  # bit for bit on CPU: RNG, optimizer and schedule restored
    run_id = json.loads((tiny_project / "models/run.json").read_text())["run_id"]
    assert run_id == ckpt["run_id"]
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = sorted({m.step for m in client.get_metric_history(run_id, "val/acc")})
    assert steps == [1, 2, 3, 4]
    assert not last.exists()  # finished: nothing left to resume


def test_sigterm_marks_the_run_killed_and_leaves_a_checkpoint(tiny_project, project_env):
    uri = f"sqlite:///{tiny_project}/mlflow.db"
    proc = subprocess.Popen(
        train_cmd(uri, "trainer.epochs=20"),
        cwd=tiny_project,
        env=project_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = tiny_project / "checkpoints" / "last.pt"
    wait_for(last, proc)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM  # a shell's status for SIGTERM, and one line, no traceback
    assert err.splitlines()[-1] == "stopped by SIGTERM" and "Traceback" not in err, err[-3000:]
    ckpt = torch.load(last, weights_only=True)
    assert MlflowClient(tracking_uri=uri).get_run(ckpt["run_id"]).info.status == "KILLED"
    assert ckpt["network"] == "timm/test_resnet, 3 classes"  # named when a resume's weights do not fit
    best = last.with_name("best.pt").is_file()  # a SIGTERM right after last.pt comes before best.pt
    never = stage_main("train", train_cmd(uri, "trainer.epochs=1", "trainer.resume=never")[3:], tiny_project)
    assert never.returncode == 0 and " after epoch " not in never.stdout + never.stderr  # not resumed
    assert json.loads((tiny_project / "models/run.json").read_text())["run_id"] != ckpt["run_id"]
    # the interrupted run is set aside, not overwritten then removed by the new one: it can still be resumed
    (aside,) = tiny_project.glob("checkpoints/set-aside-*/last.pt")
    assert (
        torch.load(aside, weights_only=True)["run_id"] == ckpt["run_id"]
        and aside.with_name("best.pt").is_file() == best
    )
    said = f"checkpoints/last.pt: trainer.resume=never; moved aside to {aside.relative_to(tiny_project)}, starting"
    assert f"not resuming from {said} a new run" in never.stdout + never.stderr


def test_torchrun_two_gloo_processes_train_what_one_process_trains(tiny_project, project_env):
    uri = f"sqlite:///{tiny_project}/mlflow.db"
    # each rank draws its own dropout masks and shifts: without them the math must match one process
    # BatchNorm normalises over each rank's share of a batch (no SyncBatchNorm): a network with LayerNorm
    exact = ("model.name=test_convnext", "model.dropout=0", "augment=none")
    exact += ("trainer.epochs=auto", "trainer.min_epochs=2", "trainer.min_steps=0")  # 2 epochs, told on rank 0 only
    single = stage_main("train", train_cmd(uri, "tracking.experiment=single", *exact)[3:], tiny_project)
    assert single.returncode == 0, single.stderr[-3000:]
    one, one_model = history(tiny_project), torch.load(tiny_project / "models/model.pt", weights_only=True)["model"]
    ddp = subprocess.run(
        [
            str(BIN / "torchrun"),
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "imgclf.stages.train",
            *train_cmd(uri, "tracking.experiment=ddp", *exact)[3:],
        ],
        cwd=tiny_project,
        env=project_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    two, two_model = history(tiny_project), torch.load(tiny_project / "models/model.pt", weights_only=True)["model"]
    for a, b in zip(one, two):
        assert a == pytest.approx(b, rel=1e-3, abs=1e-4)
    for key in one_model:
        torch.testing.assert_close(one_model[key], two_model[key], rtol=1e-3, atol=1e-3)  # float sum order
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["imgclf.world_size"] == "2"
    assert runs[0].info.status == "FINISHED"


RECIPES = {
    "mnist_alexnet": {"data.name": "mnist", "model.name": "alexnet", "model.pretrained": False, "trainer.epochs": 5},
    "cifar10_vgg16": {
        "data.name": "cifar10",
        "model.name": "vgg16",
        "model.pretrained": True,
        "finetune.strategy": "full",
        "finetune.backbone_lr_divisor": 10,
        "model.crop_pct": None,
    },
    "dogs_vs_cats_vgg16": {
        "data.name": "dogs_vs_cats",
        "model.name": "vgg16",
        "model.pretrained": True,
        "model.image_size": None,  # the weights' 224 px, stored at their 256 px
        "model.crop_pct": None,
        "finetune.strategy": "gradual",
        "trainer.epochs": 3,
    },
}


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """ImageNet-shaped weights for VGG16 in a TORCH_HOME cache, written once for the recipe tests."""
    home = tmp_path_factory.mktemp("torch_home")
    torchvision_cache(home, "vgg16")
    return home


def test_every_recipe_is_listed():
    assert sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")) == sorted(RECIPES)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_composes_and_runs_one_tiny_step(recipe, tiny_project, compose_cfg, torch_home, monkeypatch):
    cfg = compose_cfg(f"+experiment={recipe}")
    for key, value in RECIPES[recipe].items():
        section, name = key.split(".")
        assert cfg[section][name] == value, key
    photos = cfg.data.name != "mnist"  # the photo recipes take the photo preset, mnist the digit one
    assert list(cfg.augment.ops)[0] == ("crop" if photos else "affine")
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    size = 64 if cfg.model.name == "alexnet" else 32
    best = train(
        compose_cfg(
            *TINY_DATA,
            f"tracking.uri=sqlite:///{tiny_project}/mlflow.db",
            f"+experiment={recipe}",
            "data.name=tiny",
            "data.subset=full",
            "trainer.epochs=1",
            "trainer.batch_size=36",  # the 36 training images: one step an epoch
            f"model.image_size={size}",
            "model.download=false",
            # the recipe's SGD without its momentum keeps no state: VGG16's checkpoint is its weights alone (0.5 GB
            # less to write; memory a test first touches is slow on a virtual machine that hands freed pages back)
            "optim.momentum=0",
            "optim.nesterov=false",
        )
    )
    assert best == history(tiny_project)[0]["val/acc"]  # what train returns is the epoch's val/acc
    ckpt = torch.load(tiny_project / "models/model.pt", weights_only=True)
    assert ckpt["arch"] == cfg.model.name and ckpt["image_size"] == size


def test_model_pt_holds_the_last_epoch_or_the_best_as_trainer_keep_says(tiny_cfg, tiny_project, monkeypatch):
    real_evaluate, calls = engine.evaluate, iter(range(1000))

    def peak_at_epoch_2(*args, **kwargs):  # val/acc of epochs 1..4: 0.5, 0.9, 0.5, 0.5
        return {**real_evaluate(*args, **kwargs), "val/acc": 0.9 if next(calls) % 4 == 1 else 0.5}

    monkeypatch.setattr(engine, "evaluate", peak_at_epoch_2)
    weights = {}
    for keep, epoch, acc in (("last", 4, 0.5), ("best", 2, 0.9)):
        assert train(tiny_cfg("trainer.epochs=4", f"trainer.keep={keep}", "trainer.resume=never")) == acc
        ckpt = torch.load(tiny_project / "models/model.pt", weights_only=True)
        summary = json.loads((tiny_project / "reports/train/metrics.json").read_text())
        assert ckpt["epoch"] == summary["kept_epoch"] == epoch and summary["kept/val/acc"] == acc
        assert summary["best_epoch"] == 2 and summary["val/acc"] == 0.9
        run_id = json.loads((tiny_project / "models/run.json").read_text())["run_id"]
        run = MlflowClient(tracking_uri=f"sqlite:///{tiny_project}/mlflow.db").get_run(run_id)
        assert run.data.tags["imgclf.kept"] == f"{keep} (epoch {epoch})"
        assert run.data.metrics["kept/val/acc"] == acc and run.data.metrics["best/val/acc"] == 0.9
        weights[keep] = ckpt["model"]
    assert not all(torch.equal(weights["last"][k], weights["best"][k]) for k in weights["last"])


def test_a_resume_follows_the_content_of_the_weights_file_it_started_from(tiny_cfg, tiny_project):
    """model.weights names a file: the same name with other bytes (retrained, downloaded again) is another start,
    so last.pt trained from the old bytes is not continued (DVC reruns train for it; the checkpoint must agree)."""
    from omegaconf import OmegaConf

    from imgclf.paths import Paths
    from imgclf.training.lifecycle import TrainingRun

    weights = tiny_project / "start.pt"
    torch.save(build_model("test_resnet", 3, source="timm").state_dict(), weights)
    cfg = tiny_cfg(f"model.weights={weights}")
    config, paths = OmegaConf.to_container(cfg, resolve=True), Paths.from_config(cfg.paths)
    before = TrainingRun.plan(paths, "auto", config, dataset="tiny").fingerprint
    assert TrainingRun.plan(paths, "auto", config, dataset="tiny").fingerprint == before  # same bytes: resumable
    torch.save({k: v + 1 for k, v in torch.load(weights).items()}, weights)
    assert TrainingRun.plan(paths, "auto", config, dataset="tiny").fingerprint["config"] != before["config"]


def test_a_forced_resume_sets_aside_the_interrupted_run_in_checkpoints_first(tiny_cfg, tiny_project, caplog):
    """Run A set aside by run B (another lr), B interrupted in checkpoints/; resuming A's set-aside last.pt must not
    overwrite, then remove, B's last.pt and best.pt: they go into a set-aside folder of their own."""
    from omegaconf import OmegaConf

    from imgclf.paths import Paths
    from imgclf.training.lifecycle import TrainingRun

    cfg = tiny_cfg()
    config, paths = OmegaConf.to_container(cfg, resolve=True), Paths.from_config(cfg.paths)
    state = {"optimizer": {}, "epoch": 1, "history": [], "best_epoch": 1, "best_metrics": {}, "rng": {}}
    model = build_model("test_resnet", 3, source="timm").state_dict()
    a, b = paths.checkpoints / "set-aside-a", paths.checkpoints
    a.mkdir(parents=True)
    for folder, run_id in ((a, "run-a"), (b, "run-b")):
        torch.save({**state, "model": model, "run_id": run_id, "fingerprint": run_id}, folder / "last.pt")
        torch.save({"model": model, "epoch": 1}, folder / "best.pt")
    caplog.set_level(logging.WARNING, logger="imgclf")
    run = TrainingRun.plan(paths, str(a / "last.pt"), config, dataset="tiny")
    assert run.resume.state["run_id"] == "run-a" and (a / "last.pt").is_file()  # A stays where it was
    assert not (b / "last.pt").exists() and not (b / "best.pt").exists()  # nothing left for A's run to overwrite
    (aside,) = [p for p in paths.checkpoints.glob("set-aside-*/last.pt") if p.parent != a]
    assert torch.load(aside)["run_id"] == "run-b" and aside.with_name("best.pt").is_file()
    said = f"trainer.resume={a / 'last.pt'}; moved aside to {aside}, resuming {a / 'last.pt'} instead"
    assert f"not resuming from {b / 'last.pt'}: {said}" in caplog.text


def test_a_forced_resume_of_another_network_is_one_line_before_its_mlflow_run_is_reopened(tiny_project, project_env):
    """trainer.resume=PATH of a test_resnet checkpoint with model.name=test_vit: one line naming both networks, and
    the interrupted run it names keeps its status (KILLED), instead of a load_state_dict traceback and a FAILED run."""
    uri = f"sqlite:///{tiny_project}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    killed = client.create_run(client.create_experiment("test")).info.run_id
    client.set_terminated(killed, "KILLED")
    state = {"optimizer": {}, "epoch": 1, "history": [], "best_epoch": 1, "best_metrics": {}, "rng": {}}
    model = build_model("test_resnet", 3, source="timm").state_dict()
    last = tiny_project / "checkpoints/set-aside-a/last.pt"
    last.parent.mkdir(parents=True)
    torch.save({**state, "model": model, "run_id": killed, "fingerprint": {}, "network": "timm/test_resnet"}, last)
    done = stage_main("train", train_cmd(uri, f"trainer.resume={last}", "model.name=test_vit")[3:], tiny_project)
    err = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode != 0 and "Traceback" not in done.stderr and "state_dict" not in done.stderr, err[-5:]
    said = f"error: trainer.resume={last}: the checkpoint's network (timm/test_resnet) does not match the config's "
    assert err[-1].startswith(said + "(timm/test_vit, 3 classes): ") and "trainer.resume=never" in err[-1]
    assert client.get_run(killed).info.status == "KILLED"
    assert [r.info.run_id for r in client.search_runs(client.get_experiment_by_name("test").experiment_id)] == [killed]
