"""Every finetune strategy and every schedule through the train stage's real entry point (the Hydra app users run as
`python -m imgclf.stages.train` and `dvc repro`: override check, composition, validation, training), on the shortest
runs a user tries first: one epoch of a few steps."""

import json
import sys

import pytest
from hydra.core.global_hydra import GlobalHydra

from ..conftest import ROOT, TINY_OVERRIDES

STRATEGIES = sorted(p.stem for p in (ROOT / "conf/finetune").glob("*.yaml"))
SCHEDULES = sorted(p.stem for p in (ROOT / "conf/schedule").glob("*.yaml"))


def run_train(monkeypatch, *overrides):
    """The stage's `main`, in this process, as the command line reaches it."""
    from imgclf.stages import train

    args = ["--config-dir", str(ROOT / "conf"), *TINY_OVERRIDES, *overrides]
    monkeypatch.setattr(sys, "argv", ["imgclf.stages.train", *args])
    GlobalHydra.instance().clear()
    try:
        train.main()
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_trains_from_the_command_line(tiny_project, monkeypatch, strategy):
    uri = f"sqlite:///{tiny_project}/mlflow.db"
    run_train(monkeypatch, f"finetune={strategy}", "trainer.epochs=2", f"tracking.uri={uri}")
    metrics = json.loads((tiny_project / "reports/train/metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and (tiny_project / "models/model.pt").is_file()


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_survives_a_run_of_four_steps(tiny_project, monkeypatch, schedule):
    uri = f"sqlite:///{tiny_project}/mlflow.db"
    # 36 training images in batches of 9: 4 steps, where one_cycle's 25% warm-up is a single step
    run_train(monkeypatch, f"schedule={schedule}", "trainer.epochs=1", "trainer.batch_size=9", f"tracking.uri={uri}")
    assert json.loads((tiny_project / "reports/train/metrics.json").read_text())["epochs_run"] == 1
