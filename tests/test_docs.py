"""The docs site: it builds with --strict, and its Reference pages are generated from what they describe, so a key,
an option, a stage or a metric added to the code is on the page without anyone writing it."""

import importlib.util

import pytest
import yaml

from imgclf import cli
from imgclf.metric_names import METRICS, metric_for

from .conftest import ROOT


@pytest.fixture(scope="module")
def reference():
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "docs" / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flat_keys(node, prefix=""):
    if isinstance(node, dict) and node:
        return [k for key, value in node.items() for k in flat_keys(value, f"{prefix}.{key}" if prefix else str(key))]
    return [prefix]


def test_every_group_option_and_key_of_conf_is_in_the_configuration_reference(reference):
    page = reference.configuration_page()
    files = sorted((ROOT / "conf").rglob("*.yaml"))
    assert len(files) > 30
    for path in files:
        rel = path.relative_to(ROOT / "conf")
        if rel.parent.name:
            assert f"### `{rel.parent.name}/{path.name}`" in page, rel
        elif rel.name != "config.yaml":  # a shared base (model_base.yaml): under the group whose options start from it
            assert f"### `{rel.name}` (what every" in page, rel
        node = yaml.safe_load(path.read_text()) or {}
        for key in flat_keys({k: v for k, v in node.items() if k != "defaults"}):
            assert f"| `{key}` |" in page, f"{rel}: {key}"
    assert "| `epochs` | `auto` | an integer: exactly that many" in page  # the default and the comment beside it


def test_a_key_added_to_conf_appears_with_its_comment(reference, tmp_path):
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    with (conf / "trainer" / "default.yaml").open("a") as file:
        file.write("warmup_epochs: 3         # epochs of linear warm-up <before> the schedule | its own\n")
    page = reference.configuration_page(conf)
    assert "| `warmup_epochs` | `3` | epochs of linear warm-up &lt;before&gt; the schedule \\| its own |" in page


def test_every_command_and_option_is_in_the_cli_reference(reference):
    page = reference.cli_page()
    parsers = cli.parsers()
    assert set(parsers) | set(cli.STAGES) | {"lr-find", "label-issues"} == set(cli.COMMANDS)  # Hydra apps
    for name, parser in parsers.items():
        assert f"## `imgclf {name}`" in page
        for action in parser._actions:
            for option in action.option_strings:
                assert option in page, f"imgclf {name} {option}"
    assert "## `python -m imgclf.tracking.server`" in page and "--pg-port" in page


def test_every_stage_and_output_is_in_the_stages_reference(reference):
    page = reference.stages_page()
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        assert f"## {name}\n" in page and stage["cmd"].strip() in page
        for out in stage.get("outs", []):
            assert f"`{out if isinstance(out, str) else next(iter(out))}`" in page


def test_the_metrics_reference_lists_the_catalogue(reference):
    page = reference.metrics_page()
    assert all(f"| `{m.pattern}` |" in page for m in METRICS)


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("test/recall/cat", "test/recall/<class>"),
        ("export/onnxruntime_b32_ms", "export/<format>_b<batch>_ms"),
        ("optimise/int8_onnx/fp32/test_acc", "optimise/<format>/fp32/test_acc"),
        ("best/val/acc", "best/<name>/<name>"),
        ("val/acc", "val/acc"),
    ],
)
def test_a_logged_name_finds_its_catalogue_entry(name, pattern):
    assert metric_for(name).pattern == pattern


def test_an_unknown_name_has_no_entry():
    assert metric_for("test/accuracy") is None and metric_for("export/onnx_b1_ms/x") is None


def test_the_site_builds_strict(tmp_path):
    """What `make docs` does (CI runs it too): a broken link, an anchor that is not there, a page missing from the
    nav or a Reference page that fails to generate stops the build."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    config = load_config(str(ROOT / "mkdocs.yml"), site_dir=str(tmp_path / "site"), strict=True)
    build(config)
    assert (tmp_path / "site" / "reference" / "configuration" / "index.html").is_file()
    html = (tmp_path / "site" / "reference" / "metrics" / "index.html").read_text()
    assert "optimise/&lt;format&gt;/drop_p_value" in html


def test_a_broken_link_fails_the_strict_build(tmp_path):
    import shutil

    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    from mkdocs.exceptions import Abort

    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    page = tmp_path / "docs" / "tutorials" / "cifar10.md"
    page.write_text(page.read_text() + "\nSee [the missing page](nowhere.md).\n")
    config = load_config(str(tmp_path / "mkdocs.yml"), site_dir=str(tmp_path / "site"), strict=True)
    with pytest.raises(Abort):
        build(config)
