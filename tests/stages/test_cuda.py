"""On a CUDA device, through the stages' real entry points: every training option and fine-tuning strategy, the
later stages, a model trained there read back on a CPU, fp16 with loss scaling where bf16 is the default, the same
config twice, and torch.compile. (DDP over NCCL needs two GPUs: one GPU cannot hold two NCCL ranks.)

Skipped where torch sees no CUDA device (CI has none). On a GPU machine: `pytest tests/stages/test_cuda.py`
(docs/benchmarks.md records the last such run).
"""

import json
import sqlite3

import pytest
import torch

from ..conftest import TINY_OVERRIDES
from .test_every_option import FOUR_STEPS, GROUPS, SHORT_RUNS, run_stage, run_train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = "trainer.device=cuda"
OPTIONS = SHORT_RUNS + [("finetune", strategy) for strategy in GROUPS["finetune"]]


def uri(project) -> str:
    return f"tracking.uri=sqlite:///{project}/mlflow.db"


def run_tag(project, key: str) -> str:
    with sqlite3.connect(project / "mlflow.db") as db:
        return db.execute("SELECT value FROM tags WHERE key = ? ORDER BY rowid DESC", (key,)).fetchone()[0]


def weights(project) -> dict:
    return torch.load(project / "models/model.pt", map_location="cpu", weights_only=True)["model"]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_training_option_runs_on_cuda(tiny_project, group, option):
    metrics = run_train(tiny_project, f"{group}={option}", *FOUR_STEPS, CUDA)
    assert metrics["epochs_run"] == 1 and metrics["val/acc"] >= 0
    assert run_tag(tiny_project, "imgclf.device").startswith("cuda")


def test_a_model_trained_on_cuda_evaluates_exports_and_optimises_on_either_device(tiny_project):
    run_train(tiny_project, "trainer.epochs=3", "augment=photos", CUDA)
    assert all(t.device.type == "cpu" for t in weights(tiny_project).values())  # model.pt opens without a GPU
    accuracy = {}
    for device in ("cuda", "cpu"):
        run_stage("evaluate", *TINY_OVERRIDES, uri(tiny_project), f"trainer.device={device}")
        accuracy[device] = json.loads((tiny_project / "reports/evaluate/metrics.json").read_text())["test/acc"]
    # bf16 autocast on the GPU, fp32 on the CPU: 12 test images, at most one may change its answer
    assert abs(accuracy["cuda"] - accuracy["cpu"]) <= 1 / 12 + 1e-9
    run_stage("export", *TINY_OVERRIDES, uri(tiny_project), "export.verify_images=4", CUDA)
    run_stage("optimise", *TINY_OVERRIDES, uri(tiny_project), "optimise=fp16", CUDA)
    run_stage("lr_find", *TINY_OVERRIDES, uri(tiny_project), "lr_find.num_batches=4", CUDA)
    assert (tiny_project / "models/export/model.onnx").is_file()
    assert "optimise/fp16/top1_agreement" in json.loads((tiny_project / "reports/optimise/metrics.json").read_text())


def test_fp16_autocast_with_loss_scaling_where_bf16_is_missing(tiny_project, monkeypatch):
    from imgclf.inference import DeviceSetup

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    setup = DeviceSetup.for_device(torch.device("cuda"))
    assert setup.amp_dtype == torch.float16 and setup.grad_scaler() is not None
    metrics = run_train(tiny_project, "trainer.epochs=2", "trainer.grad_clip=1.0", CUDA)
    assert metrics["epochs_run"] == 2
    assert all(torch.isfinite(t).all() for t in weights(tiny_project).values() if t.is_floating_point())


def test_the_same_config_twice_trains_the_same_weights_on_cuda(tiny_project):
    runs = []
    for experiment in ("first", "second"):
        run_train(tiny_project, "trainer.epochs=2", "augment=photos", f"tracking.experiment={experiment}", CUDA)
        runs.append(weights(tiny_project))
    for key, value in runs[0].items():
        assert torch.equal(value, runs[1][key]), key


def test_torch_compile_on_cuda(tiny_project):
    metrics = run_train(tiny_project, "trainer.epochs=2", "trainer.compile=true", CUDA)
    assert metrics["epochs_run"] == 2
    assert not any(key.startswith("_orig_mod.") for key in weights(tiny_project))  # the network's own names
