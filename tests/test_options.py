"""Typed options and bad credentials: one line naming the key and what is valid, before any work, nothing written."""

import dataclasses

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from imgclf import options
from imgclf.credentials import hide, strip_overrides
from imgclf.errors import BadInput
from imgclf.options import Options

from .conftest import ROOT, TINY_OVERRIDES, console, stage_main


@pytest.fixture(scope="module")
def default_config():
    from imgclf.config import compose

    return OmegaConf.to_container(compose(root=ROOT), resolve=True)


def with_value(config, key, value):
    import copy

    config = copy.deepcopy(config)
    node = config
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return config


def rules(cls=Options, prefix=""):
    """Every checked key of the options and its rule: {"trainer.epochs": (test, text), ...}."""
    import typing

    out = {}
    for f in dataclasses.fields(cls):
        kind = typing.get_type_hints(cls)[f.name]
        kind = next((a for a in typing.get_args(kind) if isinstance(a, type)), kind)
        if isinstance(kind, type) and issubclass(kind, options.Group):
            out.update(rules(kind, f"{prefix}{f.name}."))
        elif "rule" in f.metadata and f.metadata["rule"] is not options.ANY:
            out[prefix + f.name] = f.metadata["rule"]
    return out


RULES = rules()


def test_the_default_config_is_typed_once_and_frozen(default_config):
    opts = Options.from_config(default_config)
    assert opts.optim.lr == default_config["optim"]["lr"] and opts.trainer.epochs == default_config["trainer"]["epochs"]
    assert opts.config == default_config
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.trainer.epochs = 3
    assert {"optim.lr", "trainer.epochs", "data.split.val_fraction", "model.crop_pct", "finetune.strategy"} <= set(
        RULES
    )


def test_a_key_a_group_lacks_is_refused_naming_the_keys_it_has(default_config):
    with pytest.raises(
        BadInput,
        match=r"unknown key 'trainer.epoch' \(did you mean trainer.epochs\?\); trainer has: epochs, min_epochs, "
        r"min_steps, batch_size",
    ):
        Options.from_config(with_value(default_config, "trainer.epoch", 3))
    with pytest.raises(BadInput, match="unknown key 'colour'; the config has: seed, paths"):
        Options.from_config(with_value(default_config, "colour", "red"))


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("optim.lr", "abc", "optim.lr='abc' is not valid: a number > 0"),
        ("optim.lr", 0, "optim.lr=0 is not valid: a number > 0"),
        ("trainer.epochs", -1, "trainer.epochs=-1 is not valid: auto or an integer >= 1"),
        ("trainer.epochs", 2.5, "auto or an integer >= 1"),
        ("trainer.epochs", "many", "trainer.epochs='many' is not valid: auto or an integer >= 1"),
        ("trainer.min_steps", -5, "trainer.min_steps=-5 is not valid: an integer >= 0"),
        # shown as typed: null, true, false (not Python's None, True, False)
        ("trainer.min_steps", None, "trainer.min_steps=null is not valid: an integer >= 0"),
        ("trainer.batch_size", True, "trainer.batch_size=true is not valid: an integer >= 1"),
        # YAML and Hydra read 2024 as a number: where text would do, the line says how to quote it
        (
            "tracking.experiment",
            2024,
            "tracking.experiment=2024 is not valid: a non-blank name of at most 500 characters, no '/', not only dots; "
            "quoted, it is text: tracking.experiment='2024'",
        ),
        # NumPy's generators take seeds below 2**32: a larger one was refused by split as a class too small
        ("data.split.seed", 2**32, "data.split.seed=4294967296 is not valid: an integer from 0 to 4294967295"),
        ("seed", -1, "seed=-1 is not valid: an integer from 0 to 4294967295"),
        ("trainer.batch_size", 0, "trainer.batch_size=0 is not valid: an integer >= 1"),
        ("data.split.val_fraction", 1.5, "data.split.val_fraction=1.5 is not valid: a number >= 0 and < 1"),
        ("data.split.test_fraction", 0.95, "val_fraction + data.split.test_fraction = 1.05: must be < 1"),
        ("model.image_size", 8, "model.image_size=8 is too small for alexnet: it needs at least 63 px"),
        ("finetune.strategy", "tail", "finetune.strategy='tail' is not valid: one of: full, gradual, head"),
        ("model.crop_pct", 0.05, "model.crop_pct=0.05 is not valid: null or a number >= 0.1 and <= 1"),
        ("data.subset", "some", "data.subset='some' is not valid: one of: full, sample"),
        ("model.interpolation", "cubic", "model.interpolation='cubic' is not valid: null or one of: nearest"),
        ("model.resize", "fit", "model.resize='fit' is not valid: one of: crop, squash"),
        ("export.opset", 17, "export.opset=17 is not valid: an integer >= 18"),
        ("export.opset", 99, "export.opset=99 is not valid: an integer from 18 to "),  # torch kept 18, silently
        ("tracking.uri", "mlruns", "tracking.uri='mlruns' is not a tracking store imgclf can use: give sqlite:///"),
        ("tracking.uri", "bogus://x", "tracking.uri='bogus://x' is not a tracking store imgclf can use"),
        # SQLAlchemy failed on these for half an hour of retries, or made the missing folders
        ("tracking.uri", "sqlite:///", "tracking.uri='sqlite:///' names no database file: give sqlite:///PATH"),
        ("tracking.uri", "sqlite://", "tracking.uri='sqlite://' names no database file"),
        (
            "tracking.uri",
            "sqlite:////dev/null/runs/m.db",
            "tracking.uri='sqlite:////dev/null/runs/m.db': its folder /dev/null/runs cannot be made: /dev/null is "
            "a file",
        ),
        ("export.registered_name", "a/b", "export.registered_name='a/b' is not valid: null, or a name for MLflow's"),
        ("export.registered_name", " ", "export.registered_name=' ' is not valid: null or a non-blank string"),
        ("export.registered_name", "x:1", "export.registered_name='x:1' is not valid"),
        ("export.registered_name", "odd name?#", "export.registered_name='odd name?#' is not valid"),  # no URI found it
        (
            "tracking.experiment",
            "..",
            "tracking.experiment='..' is not valid: a non-blank name of at most 500 characters, no '/'",
        ),
        ("tracking.experiment", "a/b", "tracking.experiment='a/b' is not valid"),
        ("model.image_size", 48, "model.image_size=48 is too small for alexnet: it needs at least 63 px"),
        ("trainer.amp", "yes", "trainer.amp='yes' is not valid: true or false"),
        ("optim.lr", float("nan"), "a number > 0"),
        ("tracking.uri", "https://bob:pw@mlflow.example.com", "holds credentials"),
        ("schedule.pct_start", 5, "schedule.pct_start=5 is not valid: null or a number > 0 and < 1"),
        ("schedule.pct_start", 0, "schedule.pct_start=0 is not valid: null or a number > 0 and < 1"),
        ("data.name", "..", "data.name='..' is not valid: a plain name: ASCII letters, digits, '_', '-' and '.'"),
        ("data.name", "/abs", "data.name='/abs' is not valid: a plain name"),
        ("data.name", "a/b", "data.name='a/b' is not valid: a plain name"),
        ("data.name", ".hidden", "data.name='.hidden' is not valid: a plain name"),
        ("data.name", "", "data.name='' is not valid: a plain name"),
        # what instantiate takes: checked against the target's signature, not in training (a FAILED run)
        ("optim.foo", 1, "unknown key 'optim.foo'; torch.optim.AdamW takes: lr, betas, eps, weight_decay, amsgrad"),
        ("optim.nesterov", True, "unknown key 'optim.nesterov'; torch.optim.AdamW takes: lr, betas,"),
        ("optim._target_", "torch.optim.Nope", "optim._target_=torch.optim.Nope is not valid: no class or function"),
        ("optim.fused", "maybe", "optim.fused='maybe' is not valid: true or false"),
        ("schedule.gamma", 0.5, "unknown key 'schedule.gamma'; imgclf.training.optimizers."),
        # a keyword it takes, a value it refuses: the optimizer made once, as training makes it (was a traceback)
        ("optim.eps", -1, "optim: torch.optim.AdamW refuses these values: Invalid epsilon value: -1"),
        # what train refused and `imgclf check` passed, or a wrong word, or a finder that never ends
        ("tracking.uri", "sqlite:////etc/passwd", "tracking.uri='sqlite:////etc/passwd': /etc/passwd is not an SQLite"),
        ("model.weights", "/dev/null", "model.weights=/dev/null is a device, not a file: give a .pth"),
        ("model.weights", "/proc/self/mem", "model.weights=/proc/self/mem is a file of the kernel's (/proc, /sys)"),
        ("lr_find.num_batches", 10**11, "lr_find.num_batches=100000000000 is not valid: an integer from 3 to 100000"),
        # an output inside fetch's: the next split read a models/ folder, or the store's mlruns/, as a class
        ("paths.models", "data/digits/images", "paths.models=data/digits/images is inside fetch's output"),
        ("tracking.uri", "sqlite:///data/digits/m.db", "tracking.uri=data/digits/m.db is inside fetch's output"),
        ("optim.betas", [1.5, 0.9], "optim: torch.optim.AdamW refuses these values: Invalid beta parameter at index 0"),
        # a folder a stage writes into: checked up front, not when training first saves into it
        ("paths.checkpoints", "/proc/x", "paths.checkpoints='/proc/x' cannot be written: /proc takes no files"),
        ("paths.models", "/dev/null", "paths.models='/dev/null' is a file, not a folder"),
        ("paths.reports", "/dev/null/x", "paths.reports='/dev/null/x' cannot be made: /dev/null is a file"),
        ("paths.reports", "r/" + "x" * 256, "cannot be made: a name in it is longer than 255 bytes; give a folder"),
        ("paths.data", " ", "paths.data=' ' is not valid: a non-blank string"),
        # the outbox was found bad only once the run was open: a run left RUNNING, an error naming no key
        ("tracking.outbox", "/proc/x", "tracking.outbox='/proc/x' cannot be written: /proc takes no files"),
        ("tracking.outbox", " ", "tracking.outbox=' ' is not valid: null or a non-blank string"),
        # blank text passed as non-empty: an experiment named ' '
        ("tracking.experiment", " ", "tracking.experiment=' ' is not valid: a non-blank name"),
        ("tracking.run_name", "\t", "tracking.run_name='\\t' is not valid: null or a non-blank string"),
        ("tracking.outbox", "/dev/null", "tracking.outbox='/dev/null' is a file, not a folder"),
    ],
)
def test_each_bad_value_gets_one_line_naming_key_and_what_is_valid(default_config, key, value, says):
    with pytest.raises(BadInput) as err:
        Options.from_config(with_value(default_config, key, value)).check_targets()  # what train and check ask
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_data_path_that_is_missing_or_a_file(default_config, tmp_path):
    (tmp_path / "file.txt").write_text("x")
    missing = [(tmp_path / "nope", "does not exist"), (tmp_path / "file.txt", "is a file")]
    missing.append(("~no-such-user-imgclf/images", "does not exist"))  # pathlib's expanduser raised RuntimeError
    for path, says in missing:
        with pytest.raises(BadInput, match=f"data.path=.* {says}: give a folder with one sub-folder per class"):
            Options.from_config(with_value(default_config, "data.path", str(path)))
    Options.from_config(with_value(default_config, "data.path", str(tmp_path)))


def test_a_weights_file_that_is_missing_or_a_folder_is_refused_before_the_network_is_built(default_config, tmp_path):
    (tmp_path / "start.pth").write_bytes(b"x")
    for path, says in ((tmp_path / "nope.pth", "does not exist"), (tmp_path, "is a folder")):
        with pytest.raises(BadInput, match=f"model.weights=.* {says}: give a .pth, .safetensors or model.pt file"):
            Options.from_config(with_value(default_config, "model.weights", str(path)))
    Options.from_config(with_value(default_config, "model.weights", str(tmp_path / "start.pth")))


values = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=True), st.text(max_size=8)
)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted(RULES)), value=values)
@example(key="paths.checkpoints", value="\x00")  # found by the search: ValueError, embedded null byte
@example(key="paths.models", value="a\x00b")
def test_any_value_of_any_key_is_accepted_or_refused_in_one_line_naming_it(default_config, key, value):
    try:
        Options.from_config(with_value(default_config, key, value))
    except BadInput as exc:
        assert "\n" not in str(exc) and key.split(".")[-1] in str(exc)
    else:  # accepted: then the rule holds (an image size also has the network's own minimum)
        assert RULES[key][0](value)


def test_bad_override_exits_1_in_one_line_before_any_work(tiny_project, project_env):
    args = ["--config-dir", str(ROOT / "conf"), *TINY_OVERRIDES]
    store = (tiny_project / "mlflow.db").read_bytes()
    done = stage_main("train", [*args, "tracking.uri=sqlite:///mlflow.db", "trainer.batch_size=0"], tiny_project)
    assert done.returncode == 1
    assert done.stderr.strip() == "error: trainer.batch_size=0 is not valid: an integer >= 1"
    for written in ("models", "checkpoints", "reports"):
        assert not (tiny_project / written).exists(), written
    assert (tiny_project / "mlflow.db").read_bytes() == store  # no run started


@pytest.mark.parametrize("name", ["..", "/abs"])
def test_a_data_name_that_is_a_path_is_refused_before_fetch_replaces_anything(name, tmp_path):
    """data/<name>/images is what fetch replaces: data.name=.. was ./images, the user's own folder."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "keep.txt").write_text("the user's")
    args = [
        "--config-dir",
        str(ROOT / "conf"),
        "data=digits",
        f"data.name={name}",
        "hydra.run.dir=.",
        "hydra.output_subdir=null",
    ]
    done = stage_main("fetch", args, tmp_path)
    assert done.returncode == 1
    assert (
        done.stderr.startswith(f"error: data.name='{name}' is not valid: a plain name") and done.stderr.count("\n") == 1
    )
    assert [p.name for p in (tmp_path / "images").iterdir()] == ["keep.txt"] and not (tmp_path / "data").exists()


def test_uri_credentials_move_into_mlflow_variables_before_anything_sees_them():
    env = {}
    argv = ["trainer.epochs=1", "tracking.uri=https://alice:p%40ss@mlflow.example.com/path", "+x=1"]
    assert strip_overrides(argv, env) == ["trainer.epochs=1", "tracking.uri=https://mlflow.example.com/path", "+x=1"]
    assert env == {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "p@ss"}
    assert strip_overrides(["tracking.uri=sqlite:///mlflow.db"], env) == ["tracking.uri=sqlite:///mlflow.db"]
    for quote in "'\"":  # Hydra's quoted value, as a shell passes tracking.uri='http://...' on
        quoted = [f"tracking.uri={quote}http://bob:s3cret@h:5000/{quote}"]
        assert strip_overrides(quoted, env) == [f"tracking.uri={quote}http://h:5000/{quote}"]
        assert env["MLFLOW_TRACKING_PASSWORD"] == "s3cret"
    assert (
        hide("failed: API request to http://alice:pw@host:5000/api")
        == "failed: API request to http://***@host:5000/api"
    )


def test_the_vocabularies_are_what_the_library_implements():
    """options/ imports only base modules (a stage's code deps stay its own); its lists must match the library's."""
    from imgclf import contract, devices
    from imgclf.deploy import quantize, runtimes
    from imgclf.models import catalog
    from imgclf.training import finetune

    assert options.DEVICES == devices.DEVICES
    assert options.RESIZE_MODES == contract.RESIZE_MODES and options.INTERPOLATIONS == contract.INTERPOLATIONS
    assert options.MAX_INPUT_SIZE == contract.MAX_INPUT_SIZE

    assert set(options.SOURCES) == set(catalog.SOURCES)
    assert set(options.STRATEGIES) == set(finetune.STRATEGIES)
    assert set(options.METHODS) == set(quantize.METHODS)
    for method in options.METHODS:
        assert quantize.optimised_file(method) in runtimes.MODEL_FILES


def test_int8_without_calibration_images_is_refused(default_config):
    config = with_value(default_config, "optimise.calibration_images", 0)
    with pytest.raises(BadInput, match="optimise.calibration_images=0 is not valid for optimise=int8_onnx"):
        Options.from_config(config)
    Options.from_config(with_value(with_value(config, "optimise.method", "fp16"), "optimise.calibration_images", 0))


@pytest.mark.parametrize(
    "override,said",
    [
        ("+data.exclude=[1]", "data.exclude=[1] is not valid: a list of class folder names, quoted where a name is "
         "a number: data.exclude=['1']"),  # an int never equals a folder's name: nothing was left out
        ("data.split.val_fraction=0", "data.split.val_fraction=0 leaves no validation images: give a fraction > 0 "
         "and < 1, or a folder of them (data.val_path)"),  # split refused it, after `imgclf check` said ok
        ("+data.mirrors=[ftp:x]", "data.mirrors=['ftp:x'] is not valid: a list of URLs (https://host/path)"),
        ("finetune.backbone_lr_divisor=1e-320", "finetune.backbone_lr_divisor=1e-320 is not valid: a number >= 1"),
        (f"+data.{'y' * 243}={{abc:1}}", f"data.{'y' * 55}...: a key of 252 characters; MLflow takes at most 250"),
        ("augment.ops.affine.p=5", "augment.ops.affine.p=5 is not valid: a probability, a number from 0 to 1"),
        ("augment.ops.affine.translate=[2,2]", "augment.ops.affine is not valid: ValueError('translate out of "
         "bounds. Expected inside (0, 1), got tensor([2., 2.]).')"),
        ("augment.ops.affine._target_=kornia.augmentation.ColorJitter", "augment.ops.affine is not valid: "
         "TypeError(\"ColorJitter.__init__() got an unexpected keyword argument 'degrees'\")"),
        # a checkpoint that is no file: torch.load's traceback (/proc/self/mem) once the network was built
        ("trainer.resume=/proc/self/mem", "trainer.resume=/proc/self/mem is a file of the kernel's (/proc, /sys), "
         "not one on disk: give auto, never or the path of a checkpoint file (a last.pt training wrote)"),
        ("trainer.resume=/dev/zero", "trainer.resume=/dev/zero is a device, not a file: give auto, never or the "
         "path of a checkpoint file"),
        # a finder's range past any rate that trains: its batches spread over 315 powers of ten
        ("lr_find.end_lr=1e308", "lr_find.end_lr=1e+308 is not valid: a number from 1e-10 to 100 (below, a step "
         "moves no float32 weight; past 100 the loss has long diverged)"),
        ("lr_find.start_lr=1e-320", "lr_find.start_lr=1e-320 is not valid: a number from 1e-10 to 100"),
        ("lr_find.start_lr=20", "lr_find.start_lr=20 is not below lr_find.end_lr=10: give lr_find.start_lr < "
         "lr_find.end_lr, both from 1e-10 to 100"),
        ("augment.ops=null", "augment.ops=null is not valid: a mapping of name: kornia.augmentation op, as "
         "conf/augment/ writes them (add one with +augment.ops.flip={_target_:kornia.augmentation."
         "RandomHorizontalFlip}); no augmentation is augment=none"),
    ],
)  # fmt: skip
def test_a_value_a_later_step_refused_is_one_line_in_check_and_before_training(override, said, tmp_path):
    """Each was `ok` in `imgclf check` (what `dvc exp run -S` would run), then silently wrong or refused by a later
    stage: a traceback after the network was built (augment), or a backbone learning at an infinite rate."""
    import shutil

    from imgclf import cli

    done = console(cli.check, ["-S", override], ROOT)
    assert done.returncode == 1 and done.stderr.startswith(f"error: {said}") and done.stderr.count("\n") == 1, done
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    done = stage_main("train", [override], tmp_path)
    assert done.returncode == 1 and done.stderr.startswith(f"error: {said}"), done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["conf"]  # no run folder, no data, no store


@pytest.mark.parametrize("kind", ["pipe", "folder", "empty"])
def test_a_resume_path_that_is_no_checkpoint_file_is_one_line_before_training(kind, tmp_path):
    """A pipe was read without end; a folder and an empty file were 'no such checkpoint', after the network was
    built. One not there is train's own line (tests/stages/test_faults.py): evaluate outlives the file."""
    import os
    import shutil

    from imgclf import cli

    given = tmp_path / "given" / "last.pt"
    given.parent.mkdir()
    {"pipe": lambda: os.mkfifo(given), "folder": given.mkdir, "empty": given.touch}[kind]()
    what = {"pipe": "is a pipe, not a file", "folder": "is a folder", "empty": "is empty (0 bytes)"}[kind]
    said = f"error: trainer.resume={given} {what}: give auto, never or the path of a checkpoint file"
    done = console(cli.check, ["-S", f"trainer.resume={given}"], ROOT)
    assert done.returncode == 1 and done.stderr.startswith(said) and done.stderr.count("\n") == 1, done
    project = tmp_path / "project"
    shutil.copytree(ROOT / "conf", project / "conf")
    done = stage_main("train", [f"trainer.resume={given}"], project)
    assert done.returncode == 1 and done.stderr.startswith(said), done.stderr
    assert [p.name for p in project.iterdir()] == ["conf"]  # no run folder, no store


def test_a_seed_a_resolver_gives_as_text_is_refused_saying_how_to_write_the_integer(tmp_path):
    """seed=${now:%s} gives text: refused as any text where a number is valid (docs/explanation/decisions.md), with
    the number it spelled and the shell's way to a seed from the clock."""
    import re
    import shutil

    from imgclf import cli

    said = re.compile(
        r"error: seed='(\d+)' is not valid: an integer from 0 to 4294967295; '\1' is text \(as a quoted number or a "
        r"resolver such as \$\{now:%s\} gives it\): write the number, seed=\1, or let the shell pick one: "
        r"seed=\$\(date \+%s\)\n"
    )
    done = console(cli.check, ["-S", "seed=${now:%s}"], ROOT)
    assert done.returncode == 1 and said.fullmatch(done.stderr), done
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    done = stage_main("train", ["seed=${now:%s}"], tmp_path)
    assert done.returncode == 1 and said.fullmatch(done.stderr), done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["conf"]
