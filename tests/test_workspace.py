"""Ad-hoc commands follow the workspace: the experiment `dvc exp run -S` applied (params.yaml) is re-created from
conf/ as overrides, under the user's own, through the stages' real entry point."""

import shutil
import sys

import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from imgclf.config import compose, params_yaml
from imgclf.errors import BadInput
from imgclf.workspace import value, with_workspace, workspace_overrides

from .conftest import ROOT, make_class_folders, stage_main


@pytest.fixture
def project(tmp_path):
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    return tmp_path


def applied(project, *overrides):
    """What `dvc exp run -S ...` leaves in params.yaml."""
    (project / "params.yaml").write_text(params_yaml(list(overrides), project))


def test_the_applied_experiment_comes_back_as_overrides_of_conf(project):
    assert workspace_overrides(project) == []  # no params.yaml: conf/ alone
    applied(project)
    assert workspace_overrides(project) == []  # conf/'s default
    folder = "/data/my digits/it's here"
    applied(project, "data=folder", f"data.path={value(folder)}", "optim.lr=0.002", "trainer.epochs=3", "augment=none")
    found = workspace_overrides(project)
    assert found == ["data=folder", "augment=none", f"data.path={value(folder)}", "optim.lr=0.002", "trainer.epochs=3"]
    want = OmegaConf.load(project / "params.yaml")
    assert OmegaConf.to_container(compose(found, project)) == OmegaConf.to_container(want)
    # the user's keys win; a group the user picks drops the workspace's keys inside it; a recipe starts from conf/
    argv, kept = with_workspace(["optim.lr=0.1,0.2", "-m", "data=digits", "--cfg", "job"], project)
    assert kept == ["augment=none", "trainer.epochs=3"]  # flags first: argparse takes the overrides as one run
    assert argv == ["-m", "--cfg", "job", *kept, "optim.lr=0.1,0.2", "data=digits"]
    assert with_workspace(["+experiment=mnist_alexnet"], project) == (["+experiment=mnist_alexnet"], [])
    # so do the keys a sweep file varies (optim.lr, optim.weight_decay), in a multirun, where it varies them
    assert "optim.lr=0.002" not in with_workspace(["-m", "+sweep=lr_wd"], project)[1]
    assert "optim.lr=0.002" in with_workspace(["+sweep=lr_wd"], project)[1]
    assert with_workspace(["--config-dir", ".", "--config-name", "params"], project)[1] == []  # DVC's stages


def test_off_keys_conf_lacks_and_plain_edits(project, monkeypatch):
    applied(project, "optim.lr=0.002")
    text = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(text.replace("  name: alexnet\n", "  name: alexnet\n  hidden: 3\n", 1))
    assert "+model.hidden=3" in workspace_overrides(project)  # a key conf/ lacks: added back
    (project / "params.yaml").write_text(text.replace("sample_per_class: 5", "sample_per_class: 7", 1))
    assert workspace_overrides(project) == ["data.split.sample_per_class=7", "optim.lr=0.002"]  # params.yaml edited
    monkeypatch.setenv("IMGCLF_WORKSPACE", "0")
    assert with_workspace(["trainer.epochs=1"], project) == (["trainer.epochs=1"], [])


def test_a_params_yaml_that_contradicts_its_own_interpolations_is_one_line(project):
    folder = "/data/a"
    applied(project, "data=folder", f"data.path={folder}")
    text = (project / "params.yaml").read_text()
    assert text.count(f"path: {folder}\n") == 2  # data.path, and data.fetch.path interpolating it
    (project / "params.yaml").write_text(text.replace(f"    path: {folder}\n", "    path: /data/b\n", 1))
    with pytest.raises(BadInput, match=r"params.yaml cannot be re-created from conf/ \(edited since it was written"):
        workspace_overrides(project)


def test_a_stage_started_by_hand_runs_the_workspace_experiment(project, monkeypatch, capsys):
    """`imgclf fetch` after `dvc exp run -S data=folder -S data.path=...`: the folder, not conf/'s digits."""
    folder = make_class_folders(project / "photos", {"cat": 3, "dog": 3})
    applied(project, "data=folder", f"data.path={folder}")
    monkeypatch.chdir(project)
    from imgclf.stages import fetch

    monkeypatch.setattr(sys, "argv", ["imgclf.stages.fetch"])
    GlobalHydra.instance().clear()
    try:
        fetch.main()
    finally:
        GlobalHydra.instance().clear()
    assert sorted(p.name for p in (project / "data/folder/images").iterdir()) == ["cat", "dog"]
    assert not (project / "data/digits").exists()
    said = capsys.readouterr().err
    assert f"workspace: params.yaml is conf/ plus data=folder data.path='{folder}' (IMGCLF_WORKSPACE=0" in said


def test_hydra_flags_anywhere_take_the_workspace_too(project):
    """`imgclf train -m optim.lr=...` in a folder workspace: argparse takes the overrides as one run, so the
    workspace's go after Hydra's flags, wherever the user typed them."""
    folder = make_class_folders(project / "photos", {"cat": 3, "dog": 3})
    applied(project, "data=folder", f"data.path={folder}")
    for argv in (["--cfg", "job", "data.split.seed=3"], ["data.split.seed=3", "--cfg", "job"]):
        shown = stage_main("fetch", argv, project)
        assert shown.returncode == 0, shown.stderr
        assert "workspace: params.yaml is conf/ plus data=folder" in shown.stderr
        job = OmegaConf.create(shown.stdout)
        assert job.data.name == "folder" and job.data.path == str(folder) and job.data.split.seed == 3


def test_a_params_yaml_that_is_not_yaml_is_named_in_one_line(tmp_path):
    """Every stage said `error: while parsing a flow sequence`, naming no file."""
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text() + "seed: [1\n")
    done = stage_main("fetch", [], tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: {tmp_path / 'params.yaml'} line ") and "is not valid YAML" in done.stderr
    assert done.stderr.endswith("fix it, or write it again from conf/ (make params)\n")


@pytest.mark.parametrize(
    "text,said",
    [("- a\n- b\n", "holds a list"), ("just some text\n", "holds a plain string"), ("3.5\n", "holds a number")],
)
def test_a_params_yaml_that_is_no_mapping_is_named_in_one_line(text, said, tmp_path):
    """Every stage failed with `AttributeError: 'list' object has no attribute 'get'`."""
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    (tmp_path / "params.yaml").write_text(text)
    done = stage_main("fetch", [], tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert done.stderr.startswith(f"error: params.yaml {said}, not the mapping of config sections `make params`")
    assert not (tmp_path / "data").exists()


def test_a_params_yaml_with_a_broken_interpolation_is_named_in_one_line(tmp_path):
    """An InterpolationKeyError traceback from deep in OmegaConf, before the stage started."""
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    text = (ROOT / "params.yaml").read_text()
    assert "  run_name: null\n" in text
    (tmp_path / "params.yaml").write_text(text.replace("  run_name: null\n", "  run_name: ${model.nam}\n", 1))
    done = stage_main("fetch", [], tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    said = "error: params.yaml: tracking.run_name: Interpolation key 'model.nam' not found; fix it, or write it again"
    assert done.stderr.startswith(said), done.stderr
    assert not (tmp_path / "data").exists()


def test_a_params_yaml_missing_a_section_is_one_line(tmp_path):
    """A section deleted by hand (augment, which evaluate.tta interpolates): an InterpolationKeyError traceback."""
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    del params["augment"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = stage_main("fetch", [], tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert done.stderr.startswith("error: params.yaml cannot be re-created from conf/ (edited since it was written?)")
    assert not (tmp_path / "data").exists()


def test_the_workspace_line_shows_control_characters_escaped(tmp_path):
    """A value of params.yaml holding ESC or NUL was written to the terminal as it was (ESC[2J clears it)."""
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    text = (ROOT / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text.replace("  run_name: null\n", '  run_name: "\\e[2Jx"\n', 1))
    done = stage_main("fetch", ["--cfg", "job"], tmp_path)
    line = next(line for line in done.stderr.splitlines() if line.startswith("workspace: "))
    assert "\x1b" not in line and "tracking.run_name='\\x1b[2Jx'" in line, line


@pytest.mark.parametrize("text", ["C:\\Users\\me\\", "a\\b", "a\\\\b", "it's", "a\\'b", "end\\", "\\'", "plain"])
def test_a_params_yaml_string_with_backslashes_comes_back_as_it_was(tmp_path, text):
    """A params.yaml value holding a backslash (a Windows path, a regex) came back doubled when a stage started by
    hand carried the workspace: Hydra's quotes keep a backslash literal unless a quote or the end follows it."""
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    (tmp_path / "params.yaml").write_text(params_yaml([f"tracking.run_name={value(text)}"], tmp_path))
    carried = workspace_overrides(tmp_path)
    assert compose(carried, tmp_path).tracking.run_name == text


DVC_ROUTE = ["--config-dir", ".", "--config-name", "params", "hydra.run.dir=.", "hydra.output_subdir=null"]


@pytest.mark.parametrize("route", [[], DVC_ROUTE], ids=["by-hand", "dvc"])
def test_a_params_yaml_holding_a_nul_byte_is_named_in_one_line(route, tmp_path):
    """By hand and as dvc.yaml runs a stage (`--config-name params`, where Hydra's loader raised a traceback)."""
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    text = (ROOT / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text.replace("  run_name: null\n", "  run_name: a\0b\n", 1))
    done = stage_main("fetch", route, tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    said = f"error: {tmp_path / 'params.yaml'} is not valid YAML: unacceptable character #x0000"
    assert done.stderr.startswith(said) and done.stderr.endswith("write it again from conf/ (make params)\n")
    assert not (tmp_path / "data").exists()


def billion_laughs() -> str:
    """Nine levels of ten aliases each: a billion strings once expanded, a few hundred bytes as written."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * 10) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("route", [[], DVC_ROUTE], ids=["by-hand", "dvc"])
def test_a_params_yaml_of_nested_aliases_is_one_line_not_a_command_that_never_ends(route, tmp_path, project_env):
    """`imgclf train` in a folder whose params.yaml nests aliases: OmegaConf expanded them one copy at a time."""
    import subprocess

    from .conftest import BIN

    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    (tmp_path / "params.yaml").write_text(billion_laughs())
    done = subprocess.run(
        [str(BIN / "imgclf"), "train", *route], cwd=tmp_path, env=project_env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    said = f"error: {tmp_path / 'params.yaml'} line 2, column 10: an alias (*a0); params.yaml holds each value"
    assert done.stderr.startswith(said), done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf", "params.yaml"]
