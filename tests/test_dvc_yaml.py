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


def declared_outs(stage: str, cfg) -> set[str]:
    """A stage's outs as DVC resolves them for the composed config `cfg` (dvc.yaml's `${...}` are its keys)."""
    import re

    from omegaconf import OmegaConf

    def resolve(path: str) -> str:
        return re.sub(r"\$\{([^}]+)\}", lambda m: str(OmegaConf.select(cfg, m.group(1))), path)

    return {resolve(next(iter(out)) if isinstance(out, dict) else out) for out in STAGES[stage]["outs"]}


@pytest.mark.parametrize("data", ["digits", "dogs_vs_cats"])
def test_fetch_writes_exactly_the_outputs_dvc_yaml_declares(data, tmp_path, compose_cfg):
    """DVC fails a stage whose declared output is missing, and neither caches nor restores (nor brings back from a
    queued experiment) a folder it does not declare: dogs_vs_cats' predict/ (Kaggle's test1) was such a folder."""
    from .conftest import stage_main
    from .data.test_dogs_vs_cats import competition_zip

    overrides = [f"data={data}"]
    if data == "dogs_vs_cats":
        overrides.append(f"data.archive={competition_zip(tmp_path / 'dogs-vs-cats.zip')}")
    project = tmp_path / "project"
    project.mkdir()
    hydra = ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout"]
    done = stage_main("fetch", ["--config-dir", str(ROOT / "conf"), *overrides, *hydra], project)
    assert done.returncode == 0, done.stderr[-2000:]
    outs = declared_outs("fetch", compose_cfg(*overrides))
    assert all((project / out).is_dir() for out in outs), outs
    written = {p.relative_to(project).as_posix() for p in (project / "data" / data).iterdir()}
    assert written - {f"data/{data}/downloads"} == outs  # downloads/: a cache of what was fetched, not an output
    predict = sorted(p.name for p in (project / f"data/{data}/predict").iterdir())
    assert predict == ([".imgclf-fetch", *(f"{i}.jpg" for i in range(1, 6))] if data == "dogs_vs_cats" else [])
