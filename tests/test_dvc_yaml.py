"""dvc.yaml lists, for each stage, exactly the code it runs: its import closure plus what its config reaches
through `_target_` (data sources, schedules). A module added, removed or newly imported fails here."""

import pytest
import yaml

from imgclf.deps import code_deps, instantiated_targets, rewrite

from .conftest import ROOT

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_code_deps_are_the_stages_import_closure(stage):
    listed = [d for d in STAGES[stage]["deps"] if d.startswith("src/")]
    assert listed == code_deps(stage), "run `make dvc-deps`"


def test_make_dvc_deps_changes_nothing_on_a_dvc_yaml_that_is_current():
    text = (ROOT / "dvc.yaml").read_text()
    assert rewrite(text) == text


def test_config_targets_are_followed():
    assert {
        "imgclf.data.digits",
        "imgclf.data.mnist",
        "imgclf.data.cifar10",
        "imgclf.data.dogs_vs_cats",
        "imgclf.data.folder",
    } == instantiated_targets("fetch")
    assert instantiated_targets("train") == {
        "imgclf.training.optimizers"
    }  # the schedules; conf/optim names torch.optim


def test_dvc_reads_yaml_with_the_c_parser():
    """The environment's ruamel.yaml has its C parser (ruamel.yaml.clib, in pyproject.toml), which DVC's own reads of
    dvc.yaml, dvc.lock and params.yaml take."""
    from dvc.utils.serialize._yaml import parse_yaml
    from ruamel.yaml import YAML
    from ruamel.yaml.main import CParser

    assert CParser is not None and YAML(typ="safe").Parser is CParser
    assert parse_yaml("a: [1, 2]\n", "x.yaml") == {"a": [1, 2]}
