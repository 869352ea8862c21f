"""tests/memo.py, the test processes' memos: what OmegaConf.load and Hydra's composition give is what they give
unmemoised, each time a config of its own; a changed file, folder or working folder is composed anew, and what fails
fails as OmegaConf and Hydra fail, each time."""

import contextlib

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobRuntime
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.types import RunMode
from omegaconf import OmegaConf

from . import memo


def test_a_text_loaded_again_is_an_equal_config_of_its_own(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("defaults:\n  - x\na: 1\n")
    with open(path, encoding="utf-8") as f:
        first = OmegaConf.load(f)
    del first["defaults"]  # as Hydra pops it from what it loaded
    with open(path, encoding="utf-8") as f:
        again = OmegaConf.load(f)
    assert OmegaConf.to_container(again) == {"defaults": ["x"], "a": 1}
    assert OmegaConf.load(path) == again  # a path: OmegaConf's own reading


def test_a_file_that_is_not_yaml_fails_as_omegaconf_fails(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: b: c\n")
    with open(path, encoding="utf-8") as f, pytest.raises(yaml.YAMLError, match="bad.yaml"):
        OmegaConf.load(f)


def composed(conf, *overrides):
    with initialize_config_dir(str(conf), version_base=None):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def unmemoised(conf, *overrides):
    """The same composition with the memo's loader and folders' questions put back to Hydra's own."""
    mp = pytest.MonkeyPatch()
    with mp.context() as patch:
        patch.setattr(ConfigLoaderImpl, "load_configuration", memo._COMPOSING)
        patch.setattr(OmegaConf, "load", staticmethod(memo._LOAD))
        return composed(conf, *overrides)


@pytest.fixture
def conf(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "small.yaml").write_text("width: 8\n")
    (tmp_path / "config.yaml").write_text("defaults:\n  - model: small\n  - _self_\nepochs: 1\n")
    return tmp_path


def test_a_composition_served_again_is_hydras_own_and_a_config_of_its_own(conf, monkeypatch):
    first = composed(conf, "epochs=3")
    assert memo._same_answers(next(reversed(memo._COMPOSED.values()))[0])  # kept, with the folders' answers
    first.epochs = 99
    anew = memo.ANEW[0]
    again = composed(conf, "epochs=3")
    assert memo.ANEW[0] == anew  # served
    assert OmegaConf.to_yaml(again) == OmegaConf.to_yaml(unmemoised(conf, "epochs=3"))
    assert again.epochs == 3 and OmegaConf.is_struct(again) and not OmegaConf.is_readonly(again.hydra)
    monkeypatch.chdir(conf / "model")
    assert composed(conf, "epochs=3").hydra.runtime.cwd == str(conf / "model")  # the process's, each time


def test_a_changed_file_or_option_is_composed_anew(conf):
    assert composed(conf).model.width == 8
    (conf / "model" / "small.yaml").write_text("width: 9\n")  # the same size, at once
    assert composed(conf).model.width == 9
    with pytest.raises(MissingConfigException):
        composed(conf, "model=large")
    (conf / "model" / "large.yaml").write_text("width: 64\n")
    assert composed(conf, "model=large").model.width == 64
    (conf / "model" / "small.yaml").unlink()
    with pytest.raises(MissingConfigException):
        composed(conf)


def test_what_fails_fails_as_hydra_fails_each_time(conf):
    for _ in range(2):
        with pytest.raises(ConfigCompositionException, match="Could not override 'nope'"):
            composed(conf, "nope=1")
    with loader(conf) as load:  # a sweep on a run: refused after the same composition without the check was kept
        load("config", ["epochs=1,2"], RunMode.RUN, validate_sweep_overrides=False)
        with pytest.raises(ConfigCompositionException, match="Ambiguous value for argument 'epochs=1,2'"):
            load("config", ["epochs=1,2"], RunMode.RUN)


@contextlib.contextmanager
def loader(conf):
    with initialize_config_dir(str(conf), version_base=None):
        yield GlobalHydra.instance().config_loader().load_configuration


def test_a_composition_that_skipped_an_option_to_give_serves_its_own_mode_only(conf):
    (conf / "config.yaml").write_text("defaults:\n  - model: ???\n  - _self_\nepochs: 1\n")
    with loader(conf) as load:
        assert "model" not in load("config", [], RunMode.MULTIRUN)  # -m skips it
        with pytest.raises(ConfigCompositionException, match="You must specify 'model'"):
            load("config", [], RunMode.RUN)
        load("config", ["model=small"], RunMode.MULTIRUN)
        anew = memo.ANEW[0]
        assert load("config", ["model=small"], RunMode.RUN).model.width == 8
        assert memo.ANEW[0] == anew  # skipping none, it served the other mode


def test_the_jobs_name_is_the_running_scripts_unless_the_config_names_it(conf):
    runtime = JobRuntime.instance()
    before = runtime.get("name")
    try:
        with loader(conf) as load:
            for name in ("train", "evaluate"):
                runtime.set("name", name)
                assert load("config", [], RunMode.RUN).hydra.job.name == name
            named = "defaults:\n  - model: small\n  - _self_\nhydra:\n  job:\n    name: mine\n"
            (conf / "config.yaml").write_text(named)
            for name in ("train", "evaluate"):
                runtime.set("name", name)
                assert load("config", [], RunMode.RUN).hydra.job.name == "mine"
    finally:
        runtime.set("name", before)


def test_a_search_path_that_differs_only_in_names_or_a_package_without_configs_is_served(conf):
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.config_search_path import SearchPathQuery

    with loader(conf) as load:
        load("config", ["epochs=2"], RunMode.RUN)
    anew = memo.ANEW[0]
    path = create_automatic_config_search_path(None, "imgclf.stages.train", None)  # a stage run outside its project
    path.prepend("command-line", f"file://{conf}", anchor=SearchPathQuery(provider="schema"))  # as --config-dir
    other = ConfigLoaderImpl(path)
    served = other.load_configuration("config", ["epochs=2"], RunMode.MULTIRUN, validate_sweep_overrides=False)
    assert memo.ANEW[0] == anew
    own = memo._COMPOSING(other, "config", ["epochs=2"], RunMode.MULTIRUN, True, False)
    assert OmegaConf.to_yaml(served) == OmegaConf.to_yaml(own)  # its own search path listed, the rest the same
    assert [s.provider for s in served.hydra.runtime.config_sources] == ["hydra", "main", "command-line", "schema"]
    path.prepend("test", "pkg://hydra.test_utils.configs", anchor=SearchPathQuery(provider="schema"))  # configs
    ConfigLoaderImpl(path).load_configuration("config", ["epochs=2"], RunMode.RUN)
    assert memo.ANEW[0] == anew + 1


def test_a_search_path_the_config_adds_to_is_listed_each_time(conf, tmp_path_factory):
    more = tmp_path_factory.mktemp("more")
    (conf / "config.yaml").write_text(f"defaults:\n  - _self_\nhydra:\n  searchpath:\n    - file://{more}\n")
    with loader(conf) as load:
        first, again = (load("config", [], RunMode.RUN) for _ in range(2))
    listed = [s.path for s in again.hydra.runtime.config_sources]
    assert str(more) in listed and listed == [s.path for s in first.hydra.runtime.config_sources]


def test_a_structured_config_stored_again_is_composed_anew(conf):
    from hydra.core.config_store import ConfigStore

    (conf / "config.yaml").write_text("defaults:\n  - memo_test\n  - _self_\n")
    store = ConfigStore.instance()
    try:
        for a in (1, 2):
            store.store(name="memo_test", node={"a": a})
            with loader(conf) as load:
                assert load("config", [], RunMode.RUN).a == a
    finally:
        store.repo.pop("memo_test.yaml", None)
