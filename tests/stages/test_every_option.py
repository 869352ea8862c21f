"""Every option of conf/ through the routes users take: each composes and validates the way `dvc repro` and
`python -m imgclf.stages.<stage>` compose it, and each training option runs the train stage's real entry point (the
Hydra app: override check, composition, typed options, training) on the shortest runs a user tries first."""

import json
from pathlib import Path

import pytest

from imgclf.config import check_overrides, compose, config_groups, missing_for_dvc
from imgclf.options import Options

from ..conftest import ROOT, TINY_DATA, TINY_OVERRIDES, stage_main

GROUPS = config_groups(ROOT)
ADDED = ("experiment", "sweep", "launcher")  # optional groups, added with +
EVERY_OPTION = [(group, option) for group, options in GROUPS.items() for option in options]


def test_every_group_is_in_the_defaults_list_or_added_with_plus():
    import yaml

    defaults = yaml.safe_load((ROOT / "conf/config.yaml").read_text())["defaults"]
    named = {next(iter(d)) for d in defaults if isinstance(d, dict)}
    assert set(GROUPS) == named | {"augment"} | set(ADDED)  # augment: each data set picks its preset


@pytest.mark.parametrize(("group", "option"), EVERY_OPTION, ids=[f"{g}={o}" for g, o in EVERY_OPTION])
def test_every_option_composes_and_validates(group, option):
    override = f"{'+' if group in ADDED else ''}{group}={option}"
    assert check_overrides([override], root=ROOT) is None  # what the command line and dvc exp run -S pass first
    folder = [f"data.path={ROOT / 'tests'}"] * (group == "data" and option in ("folder", "caltech101"))  # required
    cfg = compose([override, *folder], root=ROOT)
    opts = Options.from_config(cfg)
    assert opts.config["data"]["name"] == opts.data.name
    assert missing_for_dvc(cfg, ROOT) is None  # every key dvc.yaml reads is set
    if group == "sweep":  # every swept key exists, and a value of each is valid
        from hydra import compose as hydra_compose
        from hydra import initialize_config_dir

        with initialize_config_dir(str(ROOT / "conf"), version_base=None):
            params = hydra_compose("config", [override], return_hydra_config=True).hydra.sweeper.params
        assert params
        for key, values in params.items():
            assert check_overrides(["-m", override, f"{key}={values}"], root=ROOT) is None, key  # with its sweeper


def run_stage(stage, *overrides):
    """A stage's `main`, in this process, as the command line reaches it."""
    done = stage_main(stage, ["--config-dir", str(ROOT / "conf"), *overrides], Path.cwd())
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def run_train(project, *overrides):
    run_stage("train", *TINY_OVERRIDES, f"tracking.uri=sqlite:///{project}/mlflow.db", *overrides)
    return json.loads((project / "reports/train/metrics.json").read_text())


@pytest.mark.parametrize("strategy", GROUPS["finetune"])
def test_every_strategy_trains_from_the_command_line(tiny_project, strategy):
    metrics = run_train(tiny_project, f"finetune={strategy}", "trainer.epochs=2")
    assert metrics["epochs_run"] == 2 and (tiny_project / "models/model.pt").is_file()


# 36 training images in batches of 9: 4 steps, where one_cycle's 25% warm-up is a single step
FOUR_STEPS = ("trainer.epochs=1", "trainer.batch_size=9")
SHORT_RUNS = [("schedule", s) for s in GROUPS["schedule"]] + [
    (group, option) for group in ("optim", "augment", "trainer") for option in GROUPS[group]
]


@pytest.mark.parametrize(("group", "option"), SHORT_RUNS, ids=[f"{g}={o}" for g, o in SHORT_RUNS])
def test_every_training_option_survives_a_run_of_four_steps(tiny_project, group, option):
    metrics = run_train(tiny_project, f"{group}={option}", *FOUR_STEPS)
    assert metrics["epochs_run"] == 1 and metrics["val/acc"] >= 0


def test_a_last_batch_of_one_image_trains_and_batches_of_one_are_refused_for_batch_norm(tiny_project):
    # 36 training images in batches of 5: the last, of one, would stop batch norm (test_resnet's) mid-epoch
    metrics = run_train(tiny_project, "trainer.epochs=1", "trainer.batch_size=5")
    assert metrics["epochs_run"] == 1
    uri = f"tracking.uri=sqlite:///{tiny_project}/mlflow.db"
    done = stage_main("train", ["--config-dir", str(ROOT / "conf"), *TINY_OVERRIDES, uri, "trainer.batch_size=1"],
                      tiny_project)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    says = "trainer.batch_size=1 gives each of 1 process(es) batches of one image, and test_resnet has batch norm"
    assert says in done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("model", [m for m in GROUPS["model"] if m != "timm"])  # timm: every other test's model
def test_every_network_trains_a_step_from_the_command_line(tiny_project, model):
    size = "model.image_size=64" if model == "alexnet" else "model.image_size=32"
    overrides = (*TINY_DATA, f"tracking.uri=sqlite:///{tiny_project}/mlflow.db", f"model={model}", size)
    # SGD without momentum keeps no state: VGG16's checkpoint is its 0.5 GB of weights, not 1.6 GB with AdamW's
    # moments (the optimisers are every_training_option's, on the tiny network); memory a test first touches is slow
    # on a virtual machine that hands freed pages back to its host
    plain_sgd = ("optim=sgd", "optim.momentum=0", "optim.nesterov=false")
    run_stage("train", *overrides, *plain_sgd, "trainer.epochs=1", "trainer.batch_size=36", "data.subset=sample")
    metrics = json.loads((tiny_project / "reports/train/metrics.json").read_text())
    assert metrics["epochs_run"] == 1


def test_the_later_stages_and_lr_find_run_from_the_command_line(tiny_project):
    uri = f"tracking.uri=sqlite:///{tiny_project}/mlflow.db"
    run_train(tiny_project, *FOUR_STEPS)
    for stage, extra in (
        ("evaluate", ()),
        ("label_issues", ("label_issues.folds=21",)),  # more folds than the smallest class (20) has images
        ("export", ("export.verify_images=4",)),
        ("optimise", ("optimise=fp16",)),
        ("lr_find", ("lr_find.num_batches=4",)),
    ):
        done = run_stage(stage, *TINY_OVERRIDES, uri, *extra)
        if stage == "label_issues":  # it was taken down to 20 without a word
            said = "label_issues.folds=21: the smallest class has 20 labelled images, so 20 folds"
            assert said in done.stdout + done.stderr
    assert json.loads((tiny_project / "reports/evaluate/metrics.json").read_text())["test/acc"] >= 0
    assert (tiny_project / "models/export/model.onnx").is_file()
    assert "optimise/fp16/top1_agreement" in json.loads((tiny_project / "reports/optimise/metrics.json").read_text())
    assert json.loads((tiny_project / "reports/lr_find/suggestion.json").read_text())["batches"] == 4
    assert (tiny_project / "reports/label_issues/label_issues.csv").is_file()
    check_the_metrics_reference(tiny_project, {"train", "evaluate", "label_issues", "export", "optimise", "lr_find"})


def check_the_metrics_reference(project, stages):
    """Every metric the stages logged to MLflow or wrote to reports/*/metrics.json is in imgclf.metric_names (the
    docs' metrics reference), and every entry of those stages was logged: a metric added, renamed or dropped without
    its line there fails here."""
    import sqlite3

    from imgclf.metric_names import METRICS, metric_for

    with sqlite3.connect(project / "mlflow.db") as db:
        logged = {key for (key,) in db.execute("SELECT DISTINCT key FROM metrics")}
    for path in (project / "reports").glob("*/metrics.json"):
        logged |= set(json.loads(path.read_text()))
    assert not {name for name in logged if metric_for(name) is None}, "logged, but not in imgclf.metric_names"
    unseen = [m.pattern for m in METRICS if m.stage in stages and not any(m.matches(name) for name in logged)]
    assert not unseen, "in imgclf.metric_names, but not logged"
