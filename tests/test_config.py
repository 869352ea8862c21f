"""Config: params.yaml is the composition of conf/, every option composes, bad choices fail in one line."""

import subprocess
import sys

import pytest
import yaml

from imgclf import config
from imgclf.config import check_overrides, config_groups, params_yaml

from .conftest import BIN, ROOT, TINY_MODEL, console, make_class_folders, stage_main


def test_params_yaml_is_the_composition_of_conf():
    committed = (ROOT / "params.yaml").read_text()
    assert committed == params_yaml(root=ROOT), "params.yaml is stale: run `make params` after editing conf/"


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in config_groups(ROOT).items() for o in opts])
def test_every_option_composes(compose_cfg, group, option):
    if group in ("experiment", "sweep", "launcher"):  # not in the defaults list: added with +group=option
        cfg = compose_cfg(f"+{group}={option}")
        assert group != "experiment" or cfg != compose_cfg()  # a recipe overrides something
    else:
        assert compose_cfg(f"{group}={option}")[group] is not None


def test_help_offers_exactly_the_options_a_group_takes():
    """`--help` lists each group's options as `group=option` takes them: the keys every model shares
    (conf/model_base.yaml) sit outside conf/model/, so Hydra does not offer them as a model."""
    done = stage_main("train", ["--help"], ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    listed = done.stdout.split("== Configuration groups ==\n")[1].split("\n\n== Config ==")[0]
    offered = dict(line.split(": ", 1) for line in listed.splitlines() if ": " in line)
    assert offered == {group: ", ".join(options) for group, options in config_groups(ROOT).items()}
    assert offered["model"] == "alexnet, timm, vgg16, vgg16_bn"


@pytest.mark.parametrize("model", config_groups(ROOT)["model"])
def test_every_model_option_is_the_shared_keys_then_its_own(model):
    from omegaconf import OmegaConf

    from imgclf.config import compose

    own = OmegaConf.load(ROOT / "conf" / "model" / f"{model}.yaml")
    assert own.pop("defaults") == ["/model_base@_here_", "_self_"]
    expected = OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "model_base.yaml"), own)
    composed = compose([f"model={model}"], ROOT, resolve=False).model
    assert OmegaConf.to_yaml(composed) == OmegaConf.to_yaml(expected)  # keys in the same order: params.yaml's


def test_interface_keys_exist(compose_cfg):
    cfg = compose_cfg()
    for key in (
        "data.name",
        "model.name",
        "trainer.epochs",
        "trainer.batch_size",
        "trainer.device",
        "optim.lr",
        "seed",
        "tracking.uri",
        "tracking.experiment",
    ):
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node is not None, key


def test_unknown_choice_is_one_line_listing_options(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert check_overrides(["model=vgg61"]) == (
        "unknown model 'vgg61' (did you mean model=vgg16?); choose one of: alexnet, timm, vgg16, vgg16_bn"
    )
    assert check_overrides(["-m", "model=alexnet,vgg61"]).startswith("unknown model 'vgg61'")
    assert check_overrides(["model=alexnet", "optim.lr=0.1"]) is None
    assert check_overrides(["optim=sgd", "optim.momentum=0.8"]) is None  # key of the chosen option
    assert check_overrides(["optim.momentum=0.8"]) == (
        "unknown key 'optim.momentum'; optim has: _target_, _partial_, lr, weight_decay, fused "
        "(use +optim.momentum=... to add a new key)"
    )
    assert check_overrides(["+optim.momentum=0.8"]) is None
    for key in ("nokey", "trainer.nokey", "model.nokey"):  # typed options take no new key: `+` was said, then refused
        assert check_overrides([f"{key}=1"]).startswith(f"unknown key '{key}'") and "+" not in check_overrides(
            [f"{key}=1"]
        )
    assert check_overrides(["augment.ops.jitter._target_=kornia.augmentation.ColorJitter"]).endswith(
        "(use +augment.ops.jitter._target_=... to add a new key)"
    )  # fmt: skip
    assert check_overrides(["+experiment=cifar10_vgg16"]) is None
    assert check_overrides(["+experiment=imagenet_vgg16"]) == (
        "unknown experiment 'imagenet_vgg16'; choose one of: cifar10_vgg16, dogs_vs_cats_vgg16, mnist_alexnet"
    )
    assert check_overrides(["trainer.epoch=3"]).startswith(
        "unknown key 'trainer.epoch' (did you mean trainer.epochs?); trainer has: epochs,"
    )
    assert check_overrides(["optim.lrr=0.1"]).startswith("unknown key 'optim.lrr' (did you mean optim.lr?)")


@pytest.mark.parametrize(
    "args,expected",
    [
        (
            ["data=imagenet"],
            "unknown data 'imagenet'; choose one of: caltech101, cifar10, digits, dogs_vs_cats, folder, mnist",
        ),
        (
            ["model=vgg61"],
            "unknown model 'vgg61' (did you mean model=vgg16?); choose one of: alexnet, timm, vgg16, vgg16_bn",
        ),
        (
            ["trainer.epoch=3"],
            "unknown key 'trainer.epoch' (did you mean trainer.epochs?); trainer has: epochs, min_epochs, min_steps, "
            "batch_size, device, deterministic, log_every, amp, channels_last, compile, label_smoothing, grad_clip, "
            "early_stopping, keep, resume",
        ),
        (["finetune=partial"], "unknown finetune 'partial'; choose one of: full, gradual, head"),
        (  # Hydra would save it under outputs/, DVC's -S writes it into params.yaml
            ["+data.kaggle_key=fake-key-51c2"],
            "data.kaggle_key: a secret is not taken as an override (Hydra and DVC write overrides down); put it in "
            "KAGGLE_USERNAME and KAGGLE_KEY (or ~/.kaggle/kaggle.json)",
        ),
        (
            ["+tracking.password=fake-pw-3e"],
            "tracking.password: a secret is not taken as an override (Hydra and DVC write overrides down); put it in "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)",
        ),
        (
            ["-m", "+sweep=optuna_lr_wd", "hydra.sweeper.storage=postgresql+psycopg://optuna:fake-pw-7a@db/optuna"],
            "hydra.sweeper.storage: a secret is not taken as an override (Hydra and DVC write overrides down); put it "
            "in IMGCLF_OPTUNA_STORAGE",
        ),
        (  # a secret-looking key inside a mapping given as the value
            ["+data.creds={api_token: fake-tok-9d}"],
            "data.creds.api_token: a secret is not taken as an override (Hydra and DVC write overrides down); put it "
            "in the environment variable the tool that reads it takes",
        ),
        (  # an http(s) URI's user:password moves into MLflow's variables; a database URI's cannot
            ["tracking.uri=postgresql://u:fake-pw-55@127.0.0.1:1/db"],
            "tracking.uri: a database password is not taken in the URI (Hydra and DVC write overrides down); give it "
            "to the database's driver: PGPASSWORD or ~/.pgpass for PostgreSQL",
        ),
    ],
)
def test_stage_exits_nonzero_with_one_line(project_env, args, expected):
    if args == ["data=imagenet"]:  # one through `python -m`, the rest through the same main in this process
        proc = subprocess.run(
            [sys.executable, "-m", "imgclf.stages.train", *args],
            cwd=ROOT,
            env=project_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    else:
        proc = stage_main("train", args, ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {expected}"


def test_console_script_rejects_unknown_command(project_env):
    proc = subprocess.run(
        [str(BIN / "imgclf"), "trian"], cwd=ROOT, env=project_env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    commands = "fetch, split, train, evaluate, export, optimise, label-issues, relabel, predict, runs, reproduce, "
    commands += "lr-find, sync, serve, check"
    assert proc.stderr.strip() == f"error: unknown command 'trian'; choose one of: {commands}"


@pytest.mark.parametrize(
    "overrides, says",
    [
        (
            ("model=vgg16", "model.pretrained=true", "model.download=false"),
            "error: pretrained weights for vgg16 not found at {home}/hub/checkpoints/vgg16-397923af.pth; download https://",
        ),
        ((*TINY_MODEL, "model.weights={text}"), "error: {text}: not a readable checkpoint ("),
        (
            (*TINY_MODEL, "trainer.batch_size=1"),
            "error: trainer.batch_size=1 gives each of 1 process(es) batches of one image, and test_resnet has batch "
            "norm",
        ),
        (  # a model no later stage would accept: refused before training, not by evaluate with a traceback
            (*TINY_MODEL, "model.mean=[5,-1,0.5]"),
            "error: model.mean=[5, -1, 0.5] is not valid: 3 numbers from 0 to 1 (of pixel / 255)",
        ),
        (
            (*TINY_MODEL, "model.image_size=110", "model.crop_pct=0.1"),
            "error: model.image_size=110 with crop_pct=0.1 resizes to 1100 px: at most 1024 (image_size / crop_pct)",
        ),
        (  # the size the weights give (test_resnet's 160 px), known only once the network is looked up
            ("model=timm", "model.name=test_resnet", "model.crop_pct=0.1"),
            "error: model (image_size / crop_pct is resize_size): resize_size=1600 is not valid: null or an integer "
            "from image_size (160) to 1024",
        ),
    ],
)
def test_a_network_that_cannot_train_is_one_line_and_no_run(tiny_project, monkeypatch, tmp_path, overrides, says):
    """Refused when the network is built, before the MLflow run opens: nothing in the store to clean up."""
    from mlflow.tracking import MlflowClient

    from .conftest import TINY_DATA

    home, text = tmp_path / "empty_torch_home", tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")  # any file that is not a checkpoint
    monkeypatch.setenv("TORCH_HOME", str(home))
    uri = f"sqlite:///{tiny_project}/mlflow.db"
    args = ["--config-dir", str(ROOT / "conf"), *TINY_DATA, f"tracking.uri={uri}"]
    proc = stage_main("train", [*args, *(o.format(text=text) for o in overrides)], tiny_project)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(says.format(home=home, text=text))
    assert "Traceback" not in proc.stderr
    client = MlflowClient(tracking_uri=uri)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_a_second_training_in_a_checkpoints_folder_in_use_is_one_line_and_no_run(tiny_project):
    """Another process training in the project holds checkpoints/: a second training would resume its checkpoint
    as its own and log into its MLflow run. Refused before anything is read there; once it ends, training runs."""
    from mlflow.tracking import MlflowClient

    from imgclf.training.checkpoint import hold

    from .conftest import TINY_OVERRIDES

    uri = f"sqlite:///{tiny_project}/mlflow.db"
    args = ["--config-dir", str(ROOT / "conf"), *TINY_OVERRIDES, "trainer.epochs=1", f"tracking.uri={uri}"]
    release = hold(tiny_project / "checkpoints")  # what the training running elsewhere holds
    try:
        proc = stage_main("train", args, tiny_project)
    finally:
        release()
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: checkpoints is in use by another training (it holds the folder's lock)")
    client = MlflowClient(tracking_uri=uri)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
    assert stage_main("train", args, tiny_project).returncode == 0
    assert not (tiny_project / "checkpoints").exists()  # removed when the run finished, as before


@pytest.mark.parametrize("resume", ["auto", "never"])
def test_a_checkpoint_name_taken_by_a_folder_or_pipe_is_one_line_before_training(tiny_project, resume):
    """checkpoints/last.pt a folder (or best.pt a pipe): the run trained its epochs, then failed to write there."""
    import os

    from mlflow.tracking import MlflowClient

    from .conftest import TINY_OVERRIDES

    uri = f"sqlite:///{tiny_project}/mlflow.db"
    args = ["--config-dir", str(ROOT / "conf"), *TINY_OVERRIDES, "trainer.epochs=1", f"tracking.uri={uri}"]
    (tiny_project / "checkpoints" / "last.pt").mkdir(parents=True)
    proc = stage_main("train", [*args, f"trainer.resume={resume}"], tiny_project)
    assert proc.returncode == 1 and proc.stderr == (
        "error: checkpoints/last.pt is a folder: the run writes its checkpoint there; move it away\n"
    )
    (tiny_project / "checkpoints" / "last.pt").rmdir()
    os.mkfifo(tiny_project / "checkpoints" / "best.pt")
    proc = stage_main("train", [*args, f"trainer.resume={resume}"], tiny_project)
    assert proc.returncode == 1 and "checkpoints/best.pt is no regular file" in proc.stderr, proc.stderr[-2000:]
    client = MlflowClient(tracking_uri=uri)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
    assert sorted(p.name for p in (tiny_project / "checkpoints").iterdir()) == ["best.pt"]  # left as it was


def test_check_says_in_one_line_what_dvc_exp_run_would_refuse(capsys, monkeypatch, tmp_path):
    from imgclf.cli import check

    monkeypatch.chdir(ROOT)
    cases = [
        (["-S", "model=vgg61"], 2, "error: unknown model 'vgg61' (did you mean model=vgg16?); choose one of: "),
        (["-S", "data=folder", "-S", f"data.path={tmp_path / 'missing'}"], 1, "error: data.path="),
        (["-S", "data=folder"], 1, "error: data=folder needs data.path=/path/to/folder (one sub-folder per class)"),
        (["-S", f"model.weights={tmp_path / 'w.pth'}"], 1, f"error: model.weights={tmp_path / 'w.pth'} does not exist"),
        (["-S", "trainer.epochs=0"], 1, "error: trainer.epochs=0 is not valid: auto or an integer >= 1"),
        (["-S", "trainer.min_steps=null"], 1, "error: trainer.min_steps=null is not valid: an integer >= 0"),
        (
            ["-S", "tracking.experiment=2024"],
            1,
            "error: tracking.experiment=2024 is not valid: a non-blank name of at most 500 characters, no '/', "
            "not only dots; quoted, it is text: tracking.experiment='2024'",
        ),
        (["-S", "optim.lr=0.001", "-S", "model=vgg16"], 0, "ok: optim.lr=0.001 model=vgg16"),
        # the queue's grid (DVC queues one experiment per combination): each is checked
        (["-S", "optim.lr=0.001,0.0003", "-S", "model=alexnet,vgg16"], 0, "ok: optim.lr=0.001,0.0003 model=alexnet,"),
        (["-S", "optim.lr=0.001,-1"], 1, "error: optim.lr=-1: optim.lr=-1 is not valid: a number > 0"),
        # a word without `=`, an empty -S: Hydra's grammar error was a traceback here, four lines in a stage
        (["-S", "optim.lr=0.001", "-S", ""], 2, "error: bad override '': give KEY=VALUE (trainer.epochs=5), +KEY="),
        (["epochs"], 2, "error: bad override 'epochs': give KEY=VALUE"),
        # a value Hydra's grammar reads: which override, and how to quote it (was Hydra's lexer, naming neither)
        (
            ["-S", "optim.lr=0.1", "-S", "data.path=~/x"],
            2,
            "error: bad override 'data.path=~/x' (a character Hydra's grammar does not take): a value holding ~ = , "
            "[ ] { } ( ) or spaces goes in quotes, data.path='~/x'",
        ),
        (["-S", "data.path=/a=b"], 2, "error: bad override 'data.path=/a=b' (mismatched input '='): a value holding"),
        (["~trainer.epochs"], 1, "error: trainer.epochs is missing"),
    ]
    for argv, code, said in cases:
        assert check(argv) == code
        out = capsys.readouterr()
        lines = (out.err or out.out).strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(said), lines


def test_a_deletion_is_checked_like_any_override(capsys, monkeypatch):
    """`~KEY` (no `=`) was never checked: a traceback in `imgclf check`, Hydra's lines or a traceback in a stage."""
    from imgclf.cli import check

    monkeypatch.chdir(ROOT)
    dropped = "error: bad interpolation: Interpolation key 'augment.tta' not found (~augment drops a key the config"
    unknown = "error: unknown key 'trainer.epochz' (did you mean trainer.epochs?); trainer has: epochs, min_epochs,"
    for argv, said in ((["~augment"], dropped), (["~trainer.epochz"], unknown)):
        assert check(argv) == 2
        out = capsys.readouterr()
        assert out.err.startswith(said) and out.err.count("\n") == 1, out.err
        done = stage_main("train", argv, ROOT)
        assert done.returncode == 2 and done.stderr.startswith(said) and done.stderr.count("\n") == 1, done.stderr


def test_check_refuses_a_sweep_dvc_cannot_queue_in_one_line(capsys, monkeypatch):
    """interval(), tag() and glob() were Hydra's traceback in `imgclf check` (it enumerated them as DVC's grid)."""
    from imgclf.cli import check

    monkeypatch.chdir(ROOT)
    grid = "takes a list (a,b) or range(start,stop,step) only; interval() and tag() are for an Optuna sweep"
    for value in ("optim.lr=interval(0,1)", "optim.lr=tag(log,interval(0.01,1))", "optim.lr=glob(*)", "model=glob(*)"):
        assert check(["-S", value]) == 2
        out = capsys.readouterr()
        assert out.err.startswith(f"error: {value}: dvc exp run -S (and its queue's grid) {grid}"), out.err
        assert out.err.count("\n") == 1
    assert check(["-S", "model=interval(0,1)"]) == 2
    said = "error: bad override 'model=interval(0,1)': a group takes its options as a list (a,b) or glob(*)"
    assert capsys.readouterr().err.startswith(said)
    assert check_overrides(["-m", "model=glob(vgg*)"]) is None  # Hydra's -m takes a glob over a group's options
    assert check_overrides(["-m", "model=glob(zz*)"]).startswith("unknown model 'glob(zz*)'; choose one of: alexnet")


def test_a_stage_or_check_typed_outside_the_project_is_one_line(tmp_path):
    """`imgclf train` in a folder without conf/ was Hydra's seven lines on its search path; `imgclf check` a
    traceback. A bare word is one line too, in the stage as in `imgclf check`."""
    from imgclf.cli import check

    said = f"error: no conf/ in {tmp_path}: run imgclf from the project's root (the folder holding dvc.yaml and conf/)"
    for done in (stage_main("train", ["trainer.epochs=1"], tmp_path), console(check, ["-S", "optim.lr=0.1"], tmp_path)):
        assert done.returncode == 2 and done.stderr.startswith(said) and done.stderr.count("\n") == 1, done.stderr
    assert not list(tmp_path.iterdir())  # no outputs/ or log left by Hydra
    done = stage_main("train", ["--config-dir", str(ROOT / "conf"), "trainer.epochs=1", "epochs"], tmp_path)
    assert (done.returncode, done.stderr) == (
        2,
        "error: bad override 'epochs': give KEY=VALUE (trainer.epochs=5), +KEY=VALUE to add a key, ~KEY to drop one\n",
    )


def test_a_model_file_written_for_the_old_base_is_told_where_the_base_went(tmp_path):
    import shutil

    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    (tmp_path / "conf/model/mynet.yaml").write_text("defaults:\n  - _base\n  - _self_\nname: resnet18\nsource: timm\n")
    for done in (
        console(config.main, ["model=mynet"], tmp_path),  # make params
        stage_main("train", ["model=mynet"], tmp_path),  # python -m imgclf.stages.train
    ):
        assert done.returncode == 2 and not done.stdout
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "`- /model_base@_here_`" in lines[0], done.stderr
    done = console(config.main, ["optim.lrr=1"], ROOT)  # a typo: one line too, not Hydra's traceback
    assert done.returncode == 2 and "unknown key 'optim.lrr'" in done.stderr and not done.stdout
    assert console(config.main, [], ROOT).stdout == (ROOT / "params.yaml").read_text()


def test_a_conf_file_that_is_not_yaml_or_holds_a_bad_value_is_one_line_everywhere(tmp_path):
    import shutil

    from imgclf import cli

    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    shutil.copy(ROOT / "params.yaml", tmp_path)
    adamw = tmp_path / "conf/optim/adamw.yaml"
    good = adamw.read_text()
    adamw.write_text(good.replace("\nlr: ", "\nlr: 5.0e-4: ", 1))  # a stray colon
    for done in (
        console(config.main, [], tmp_path),  # make params
        console(cli.check, [], tmp_path),
        stage_main("train", ["trainer.epochs=1"], tmp_path),
    ):
        assert done.returncode == 2 and not done.stdout, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "adamw.yaml line " in lines[0] and "not valid YAML" in lines[0], done.stderr
    adamw.write_bytes(good.encode() + b"# caf\xe9, in Latin-1\n")  # a byte that is no UTF-8: was a traceback
    commands = (console(config.main, [], tmp_path), console(cli.check, [], tmp_path), stage_main("train", [], tmp_path))
    for done in commands:
        assert done.returncode == 2 and done.stderr == f"error: {adamw} is not valid YAML: unacceptable character " \
            "#x00e9: not UTF-8 text (invalid continuation byte)\n", done.stderr  # fmt: skip
    adamw.write_text(good.replace("\nweight_decay: ", "\nweight_decay: -1 #", 1))  # what every stage refuses
    before = (tmp_path / "params.yaml").read_bytes()
    make = ["make", "-s", "-f", str(ROOT / "Makefile"), "-o", "venv", f"VENV={BIN.parent}", "params"]
    done = subprocess.run(make, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and done.stderr.splitlines()[0] == (
        "error: optim.weight_decay=-1 is not valid: a number >= 0"
    ), done.stderr
    assert (tmp_path / "params.yaml").read_bytes() == before and not list(tmp_path.glob("params.yaml.*"))
    adamw.write_text(good)
    (tmp_path / "params.yaml").write_text("stale\n")
    done = subprocess.run(make, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and (tmp_path / "params.yaml").read_bytes() == (ROOT / "params.yaml").read_bytes()


def test_a_new_model_file_without_the_base_is_refused_before_dvc_cannot_parse_dvc_yaml(tmp_path):
    import shutil

    from imgclf import cli

    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    (tmp_path / "conf/model/mynew.yaml").write_text("name: resnet18\nsource: timm\nimage_size: 32\n")
    for done in (console(cli.check, ["-S", "model=mynew"], tmp_path), console(config.main, ["model=mynew"], tmp_path)):
        assert done.returncode == 1 and not done.stdout
        assert done.stderr.strip() == (
            "error: dvc.yaml reads ${model.inputs[0]}, which this config does not set (a conf/ file missing its "
            "defaults?)"
        )


def test_a_refused_value_or_hydra_folder_leaves_every_file_as_it_was(tmp_path):
    """A value the typed options refuse left outputs/DATE/TIME/ with an empty log; hydra.output_subdir=conf replaced
    conf/config.yaml with the composition; a run folder under a file was Hydra's traceback; a sweep of range(0,1e8)
    took gigabytes before a word. Each is one line before Hydra writes anything."""
    import shutil

    from imgclf import cli

    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    (tmp_path / "notes.txt").write_text("mine\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    cases = [
        (["trainer.batch_size=0"], 1, "trainer.batch_size=0 is not valid: an integer >= 1"),
        ([f"+data.{'k' * 260}=1"], 2, f"an override's key of 265 characters (data.{'k' * 35}...): at most 250"),
        (["trainer.batch_size=0", "--cfg", "job"], 1, "trainer.batch_size=0 is not valid"),
        (
            ["hydra.run.dir=.", "hydra.output_subdir=conf"],
            2,
            "hydra.output_subdir=conf: conf holds files Hydra did not write (augment, data, experiment), and Hydra "
            "would replace its config.yaml, hydra.yaml, overrides.yaml there: give a new folder (default .hydra), "
            "or hydra.output_subdir=null for none",
        ),
        ([f"hydra.output_subdir={tmp_path / 'conf'}"], 2, f"hydra.output_subdir={tmp_path / 'conf'}: {tmp_path}/conf"),
        (
            ["hydra.output_subdir=../../../notes.txt"],
            2,
            "hydra.output_subdir=../../../notes.txt: notes.txt is not a folder",
        ),
        # Hydra's flags: its usage, many lines or a traceback (--experimental-rerun unpickles the file it is given)
        (["--config-name=nope"], 2, "--config-name nope: no such config in"),
        (["-cn", "nope.yaml", "seed=1"], 2, "-cn nope.yaml: no such config in"),
        (["-"], 2, "unknown flag '-': an override is KEY=VALUE"),
        (["--multi", "seed=1,2"], 2, "unknown flag '--multi'"),
        (["--experimental-rerun", "notes.txt"], 2, "--experimental-rerun is not supported: it unpickles a file"),
        (["-cp", "elsewhere"], 2, "-cp is not supported: the stages read conf/"),
        (
            ["hydra.run.dir=notes.txt/run"],
            2,
            f"hydra.run.dir=notes.txt/run: notes.txt/run cannot be made: {tmp_path}/notes.txt is a file; "
            "give a folder that can be made",
        ),
        (
            ["-m", "hydra.sweep.dir=notes.txt", "seed=1,2"],
            2,
            "hydra.sweep.dir=notes.txt: notes.txt is a file, not a folder",
        ),
        (
            ["-m", "seed=range(0,100000000)"],
            2,
            "seed=range(0,100000000) lists 100000000 jobs: a sweep lists at most 1000; for a larger space, let an "
            "Optuna sweep sample an interval()",
        ),
        (
            ["-m", "seed=range(0,100)", "optim.lr=0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1"],
            2,
            "seed=range(0,100) optim.lr",
        ),
        (["-m", "hydra.output_subdir=../../../../conf", "seed=1"], 2, "hydra.output_subdir=../../../../conf: conf "),
        (["-m", "hydra.sweep.dir=.", "hydra.sweep.subdir=conf", "hydra.output_subdir=."], 2, "hydra.output_subdir=.: "),
        (["hydra.job.chdir=true"], 2, "hydra.job.chdir=true: stages read and write paths from the project's root"),
        (["-m", "+sweep=lr_wd", "seed=range(0,170)"], 2, "seed=range(0,170) optim.lr=1e-3,5e-4,2e-4 "
         "optim.weight_decay=0.0,0.05 lists 1020 jobs"),  # the sweep file's grid counts too
        (["-m", "seed=range(0,10,0)"], 2, "seed=range(0,10,0): a range's step is not 0"),
        (["-m", "seed=interval(0,1)"], 2, "seed=interval(0,1): interval() is sampled by an Optuna sweep"),
        (["seed=1,2"], 2, "seed=1,2 lists values: add -m to run a job for each, or quote a value holding a comma"),
        (["-m", "--cfg", "job", "seed=1"], 2, "-m and --cfg: give one of -m, --run, --cfg, --info"),
        (["hydra.sweeper.params.seed=x"], 2, "hydra.sweeper.params.seed=x: Hydra's config has no such key here"),
        (["-m", "seed=range(5,1)"], 2, "seed=range(5,1) lists no value; give range(start,stop) with start < stop"),
        (["trainer.epoch=1", "trainer.batch=3"], 2, "unknown key 'trainer.epoch' (did you mean trainer.epochs?)"),
        # a log file of Hydra's moved onto a file of the user's (it was truncated, or appended to, then deleted)
        (["hydra.job_logging.handlers.file.filename=notes.txt"], 2, "hydra.job_logging.handlers.file.filename="
         "notes.txt: a stage logs to its run folder's <stage>.log"),
        (["+hydra.job_logging.handlers.file.mode=w"], 2, "+hydra.job_logging.handlers.file.mode=w: a stage logs"),
        # a config named (-cn, or --config-dir elsewhere) skipped every check: Hydra's folders are checked still
        (["-cn", "config", "hydra.run.dir=.", "hydra.output_subdir=conf"], 2, "hydra.output_subdir=conf: conf holds"),
        (["--config-dir", "/tmp", "hydra.run.dir=.", "hydra.output_subdir=conf"], 2, "hydra.output_subdir=conf: conf"),
    ]  # fmt: skip
    for args, code, said in cases:
        done = stage_main("train", args, tmp_path)
        assert done.returncode == code and done.stderr.startswith(f"error: {said}"), (args, done.stderr)
        assert done.stderr.count("\n") == 1, done.stderr
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before, args
        assert sorted(tmp_path.iterdir()) == [tmp_path / "conf", tmp_path / "notes.txt"], args
    done = console(cli.check, ["-S", "seed=range(0,100000000)"], tmp_path)  # dvc exp run -S's queue
    assert done.returncode == 2 and "lists 100000000 jobs" in done.stderr
    done = console(cli.check, ["-S", "seed=range(0,10,0)"], tmp_path)  # was a traceback
    assert done.returncode == 2 and "a range's step is not 0" in done.stderr and "Traceback" not in done.stderr
    # what Hydra wrote itself is Hydra's to replace; a sweep of 1000 jobs is taken
    (tmp_path / "old" / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (tmp_path / "old" / ".hydra" / name).write_text("{}\n")
    assert check_overrides(["hydra.run.dir=old"], tmp_path) is None
    assert check_overrides(["-m", "seed=range(0,1000)"], tmp_path) is None


def test_a_tracking_store_that_is_no_file_or_an_experiment_mlflow_refuses_is_one_line(tiny_project):
    """A FIFO as the SQLite store hung train for ever (opened for appending, no reader); a deleted experiment and a
    name over MLflow's 500 characters were MLflow's tracebacks."""
    import os

    from mlflow.tracking import MlflowClient

    from .conftest import TINY_OVERRIDES

    os.mkfifo(tiny_project / "pipe.db")
    uri = f"sqlite:///{tiny_project}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    client.delete_experiment(client.create_experiment("gone"))
    args = ["--config-dir", str(ROOT / "conf"), *TINY_OVERRIDES, "trainer.epochs=1"]
    cases = [
        (
            [f"tracking.uri=sqlite:///{tiny_project}/pipe.db"],
            f"error: tracking store {tiny_project}/pipe.db is not a file (a folder, pipe or device); give an MLflow "
            "store file, e.g. sqlite:///mlflow.db",
        ),
        (
            [f"tracking.uri={uri}", "tracking.experiment=gone"],
            f"error: tracking.experiment=gone is deleted in {uri}: restore it (mlflow experiments restore "
            "--experiment-id 1) or give another name",
        ),
        (
            [f"tracking.uri={uri}", f"tracking.experiment={'x' * 501}"],
            f"error: tracking.experiment='{'x' * 501}' is not valid: a non-blank name of at most 500 characters, "
            "no '/', not only dots",
        ),
    ]
    import sqlite3

    with sqlite3.connect(tiny_project / "other.db") as db:  # someone's own database: MLflow would add its tables
        db.execute("CREATE TABLE mine (x)")
    cases.append(
        (
            [f"tracking.uri=sqlite+pysqlite:///{tiny_project}/other.db"],
            f"error: {tiny_project}/other.db is an SQLite database of something else, not an MLflow store; it is left "
            "as it is",
        )
    )
    for extra, said in cases:
        done = stage_main("train", [*args, *extra], tiny_project)
        assert done.returncode == 1 and done.stderr.splitlines()[-1] == said, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
    with sqlite3.connect(tiny_project / "other.db") as db:
        assert [row[0] for row in db.execute("SELECT name FROM sqlite_master")] == ["mine"]
    assert client.search_runs([e.experiment_id for e in client.search_experiments(view_type=3)]) == []
    assert not (tiny_project / "outputs").exists() and not (tiny_project / "checkpoints").exists()


def test_flags_after_overrides_and_hydras_own_interpolations_are_taken(tmp_path):
    """`imgclf train trainer.epochs=1 -m seed=1,2` was argparse's usage text (Hydra's parser takes no override after
    a flag that follows one); `tracking.run_name=${hydra:job.name}` was refused by the override check, which
    resolves the config without the running app Hydra's own interpolations read."""
    import shutil

    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    done = stage_main("train", ["trainer.epochs=1", "--cfg", "job", "seed=7", "tracking.run_name=${hydra:job.name}"],
                      tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)
    assert (shown["trainer"]["epochs"], shown["seed"], shown["tracking"]["run_name"]) == (1, 7, "${hydra:job.name}")
    assert [p.name for p in tmp_path.iterdir()] == ["conf"]


def test_a_run_folder_only_the_running_app_names_is_checked_by_its_fixed_part(tmp_path, project_env):
    """`hydra.run.dir=/etc/passwd/${hydra:job.name}` was Hydra's traceback: what only the running app resolves is left
    to it, and the folders before it are checked first. A new process: a test's own Hydra state would resolve it."""
    import shutil
    import subprocess

    from .warm import python

    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    (tmp_path / "notes.txt").write_text("mine\n")
    for flag in ([], ["-m", "seed=1,2"]):
        key = "hydra.sweep.dir" if flag else "hydra.run.dir"
        done = subprocess.run(
            [python(), "-m", "imgclf.stages.split", *flag, f"{key}=notes.txt/${{hydra:job.name}}"],
            cwd=tmp_path,
            env=project_env,
            capture_output=True,
            text=True,
        )
        assert (done.returncode, done.stderr) == (
            2,
            f"error: {key}=notes.txt/${{hydra:job.name}}: notes.txt is a file, not a folder; give a folder that can "
            "be made (default outputs/DATE/TIME)\n",
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf", "notes.txt"]


def test_a_refused_run_in_a_run_dir_named_with_dots_keeps_what_an_earlier_run_left(tmp_path):
    """`hydra.run.dir=keep/../keep`: what was there was noted under the name as typed, Hydra's folder under its
    normalised name, and a refused run took an earlier run's keep/.hydra/ back as its own."""
    import shutil

    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    (tmp_path / "keep" / ".hydra").mkdir(parents=True)
    earlier = {tmp_path / "keep" / ".hydra" / n: f"{n}: an earlier run's\n" for n in ("config.yaml", "hydra.yaml")}
    for path, text in earlier.items():
        path.write_text(text)
    done = stage_main("evaluate", ["hydra.run.dir=keep/../keep"], tmp_path)  # refused inside: no model to evaluate
    assert done.returncode == 1 and done.stderr.startswith("error: "), done.stderr
    # Hydra's own files are Hydra's to replace; none of those there before is taken back, and nothing new stays
    assert sorted(p for p in (tmp_path / "keep").rglob("*") if p.is_file()) == sorted(earlier)


def test_info_after_the_overrides_or_short_shows_hydras_info(tmp_path):
    """Flags go before the overrides for Hydra's parser: a bare --info moved there took the first override as the
    part to show (argparse's usage, exit 2), and `-i config` was read as an override."""
    import shutil

    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    for args, shows in ((["seed=1", "--info"], "Installed Hydra Plugins"), (["-i", "config", "seed=1"], "Config")):
        done = stage_main("split", args, tmp_path)
        assert done.returncode == 0 and shows in done.stdout, (args, done.stderr[-500:])


def test_a_sweep_over_a_group_is_checked_with_each_of_its_options(tmp_path, capsys, monkeypatch):
    """A key that only some options of a swept group have: one line before the first job (it was job 0 run, then
    Hydra's lines), from the stage's command line and from `imgclf check` (DVC's grid)."""
    from imgclf.cli import check

    folder = make_class_folders(tmp_path / "images", {"a": 2, "b": 2})
    args = ["--config-dir", str(ROOT / "conf"), "-m", "data=folder,digits", f"data.path={folder}", "trainer.epochs=1"]
    done = stage_main("train", args, tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: data=digits: unknown key 'data.path'; data has: name,"), done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]  # no sweep folder, no run
    monkeypatch.chdir(ROOT)
    assert check(["-S", "optim=sgd,adamw", "-S", "optim.momentum=0.5"]) == 2
    assert capsys.readouterr().err.startswith("error: optim=adamw: unknown key 'optim.momentum'; optim has: ")
    assert check_overrides(["-m", "data=digits,folder", "data.split.seed=3"]) is None  # a key both options have


def test_hydra_help_shell_completion_and_sweeper_settings_are_taken_or_one_line(tmp_path):
    """--hydra-help with overrides was Hydra's traceback (it composes no app config), `-sc install=bash` was refused
    as an unknown key, a bad -sc a traceback, and max_batch_size=0 Hydra's AssertionError after the sweep's folder;
    ~KEY on a key whose value is null said it did not exist."""
    import shutil

    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    done = stage_main("split", ["--hydra-help", "trainer.epochs=1", "hydra/launcher=joblib"], tmp_path)
    assert done.returncode == 0 and "Hydra (" in done.stdout and "--cfg hydra" in done.stdout, done.stderr[-500:]
    done = stage_main("split", ["-sc", "install=bash"], tmp_path)
    assert done.returncode == 0 and "complete -o nospace" in done.stdout, done.stderr[-500:]
    for args in (["-sc"], ["-sc", "install=cmd"], ["-sc", "install=bash", "seed=1"]):
        done = stage_main("split", args, tmp_path)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, (args, done.stderr[-500:])
        assert "-sc takes one of install|uninstall|query=bash|fish|zsh" in done.stderr
    done = stage_main("split", ["-m", "hydra.sweeper.max_batch_size=0", "seed=1,2"], tmp_path)
    assert done.returncode == 2 and done.stderr == (
        "error: hydra.sweeper.max_batch_size=0 is not valid: null (every job at once) or an integer >= 1\n"
    )
    done = stage_main("split", ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0", "seed=1,2"], tmp_path)
    assert done.returncode == 2 and done.stderr == (  # was joblib's ValueError, a traceback, after the folder
        "error: hydra.launcher.n_jobs=0 is not valid: an integer >= 1, or -1 for one job per core (-2: all but one)\n"
    )
    done = stage_main("split", ["tracking.run_name=a\\${seed}"], tmp_path)  # was a traceback, or 42 read twice
    assert done.returncode == 2 and done.stderr.startswith("error: tracking.run_name=a\\${seed}: a value cannot hold")
    done = stage_main("train", ["~trainer.grad_clip"], tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("error: ~trainer.grad_clip: the stages read every key")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf"]  # no run or sweep folder


def test_a_list_for_a_mapping_or_the_reverse_names_what_the_key_holds(tmp_path):
    """Hydra merges an override into the key's node: a list for a mapping said only "Error merging override"."""
    assert check_overrides(["label_issues.splits={a:1}"], root=ROOT) == (
        "label_issues.splits={a:1} is not valid: label_issues.splits is a list: give its values as [a,b]"
    )
    done = stage_main("train", ["--config-dir", str(ROOT / "conf"), "augment.ops=[]"], tmp_path)
    assert done.returncode == 2 and done.stderr == (
        "error: augment.ops=[] is not valid: augment.ops is a mapping (affine): set augment.ops.KEY=... or drop "
        "~augment.ops.KEY\n"
    )
    assert list(tmp_path.iterdir()) == []
