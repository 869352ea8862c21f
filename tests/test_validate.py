"""Bad config and bad credentials: one line naming the key and what is valid, before any work, nothing written."""

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from imgclf import validate
from imgclf.credentials import hide, strip_overrides
from imgclf.errors import BadInput

from .conftest import ROOT, TINY_OVERRIDES


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


def test_the_default_config_is_valid(default_config):
    validate.check(default_config)
    assert all(validate.select(default_config, k) is not validate.ABSENT for k in ("optim.lr", "trainer.epochs"))


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("optim.lr", "abc", "optim.lr='abc' is not valid: a number > 0"),
        ("optim.lr", 0, "optim.lr=0 is not valid: a number > 0"),
        ("trainer.epochs", -1, "trainer.epochs=-1 is not valid: an integer >= 1"),
        ("trainer.epochs", 2.5, "an integer >= 1"),
        ("trainer.batch_size", 0, "trainer.batch_size=0 is not valid: an integer >= 1"),
        ("data.split.val_fraction", 1.5, "data.split.val_fraction=1.5 is not valid: a number >= 0 and < 1"),
        ("data.split.test_fraction", 0.95, "val_fraction + data.split.test_fraction = 1.05: must be < 1"),
        ("model.image_size", 8, "model.image_size=8 is not valid: null or an integer >= 32"),
        ("model.image_size", 48, "model.image_size=48 is too small for alexnet: it needs at least 63 px"),
        ("trainer.amp", "yes", "trainer.amp='yes' is not valid: true or false"),
        ("optim.lr", float("nan"), "a number > 0"),
        ("tracking.uri", "https://bob:pw@mlflow.example.com", "holds credentials"),
        ("schedule.pct_start", 5, "schedule.pct_start=5 is not valid: a number > 0 and < 1"),
        ("schedule.pct_start", 0, "schedule.pct_start=0 is not valid: a number > 0 and < 1"),
    ],
)
def test_each_bad_value_gets_one_line_naming_key_and_what_is_valid(default_config, key, value, says):
    with pytest.raises(BadInput) as err:
        validate.check(with_value(default_config, key, value))
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_data_path_that_is_missing_or_a_file(default_config, tmp_path):
    (tmp_path / "file.txt").write_text("x")
    for path, says in ((tmp_path / "nope", "does not exist"), (tmp_path / "file.txt", "is a file")):
        with pytest.raises(BadInput, match=f"data.path=.* {says}: give a folder with one sub-folder per class"):
            validate.check(with_value(default_config, "data.path", str(path)))
    validate.check(with_value(default_config, "data.path", str(tmp_path)))


values = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=True), st.text(max_size=8)
)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted(validate.RULES)), value=values)
def test_any_value_of_any_key_is_accepted_or_refused_in_one_line_naming_it(default_config, key, value):
    try:
        validate.check(with_value(default_config, key, value))
    except BadInput as exc:
        assert "\n" not in str(exc) and key.split(".")[-1] in str(exc)
    else:  # accepted: then the rule holds (an image size also has the network's own minimum)
        assert validate.RULES[key][0](value)


def test_bad_override_exits_1_in_one_line_before_any_work(tiny_project, project_env):
    cmd = [sys.executable, "-m", "imgclf.stages.train", "--config-dir", str(ROOT / "conf"), *TINY_OVERRIDES]
    done = subprocess.run(
        [*cmd, "tracking.uri=sqlite:///mlflow.db", "trainer.batch_size=0"],
        cwd=tiny_project,
        env=project_env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "error: trainer.batch_size=0 is not valid: an integer >= 1"
    for written in ("models", "checkpoints", "mlflow.db", "reports"):
        assert not (tiny_project / written).exists(), written


def test_uri_credentials_move_into_mlflow_variables_before_anything_sees_them():
    env = {}
    argv = ["trainer.epochs=1", "tracking.uri=https://alice:p%40ss@mlflow.example.com/path", "+x=1"]
    assert strip_overrides(argv, env) == ["trainer.epochs=1", "tracking.uri=https://mlflow.example.com/path", "+x=1"]
    assert env == {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "p@ss"}
    assert strip_overrides(["tracking.uri=sqlite:///mlflow.db"], env) == ["tracking.uri=sqlite:///mlflow.db"]
    assert (
        hide("failed: API request to http://alice:pw@host:5000/api")
        == "failed: API request to http://***@host:5000/api"
    )
