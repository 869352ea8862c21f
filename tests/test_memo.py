"""tests/memo.py, the test processes' memoised OmegaConf.load: what it gives is what OmegaConf gives, each time a
config of its own, and a file that fails to load fails as OmegaConf fails."""

import pytest
import yaml
from omegaconf import OmegaConf


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
